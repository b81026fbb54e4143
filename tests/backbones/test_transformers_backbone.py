"""transformers models as backbones: direct instances, configs, ``hf:`` names from a test-built cache, folders.

Every check compares against the transformers model itself, computed independently of the wrapper.
"""
from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    ConvNextConfig,
    ConvNextModel,
    SwinConfig,
    SwinModel,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    ViTModel,
)

from hubtrain.backbones import create_backbone
from hubtrain.backbones.transformers_backbone import create_transformers_backbone
from hubtrain.errors import OfflineModelError


def tiny_vit_config(**kw) -> ViTConfig:
    return ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8, **kw
    )


def tiny_convnext_config() -> ConvNextConfig:
    return ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], image_size=32)


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, 3, 32, 32)


def test_direct_vit_pools_like_the_model_itself(images):
    torch.manual_seed(0)
    vit = ViTModel(tiny_vit_config()).eval()
    backbone = create_backbone(vit).eval()
    assert backbone.num_features == 32
    with torch.no_grad():
        expected = vit(pixel_values=images).pooler_output
        torch.testing.assert_close(backbone(images), expected, rtol=0, atol=0)
    # The seed's own route: the same ViTModel instance, its weights untouched.
    assert backbone.model is vit
    assert backbone.data_config["input_size"] == [3, 32, 32]
    assert backbone.data_config["mean"] == [0.5, 0.5, 0.5]  # ViTImageProcessor's defaults


def test_direct_convnext_feature_maps_are_its_normed_stages(images):
    torch.manual_seed(0)
    convnext = ConvNextModel(tiny_convnext_config()).eval()
    backbone = create_backbone(convnext, features_only=True).eval()
    assert backbone.feature_channels == [8, 16, 32, 64]
    assert backbone.feature_strides == [4, 8, 16, 32]
    with torch.no_grad():
        maps = backbone(images)
        stages = convnext(pixel_values=images, output_hidden_states=True).hidden_states[1:]
    # ConvNextBackbone adds a fresh channel LayerNorm per stage (identity affine): recompute it by hand.
    for got, stage in zip(maps, stages):
        want = F.layer_norm(stage.permute(0, 2, 3, 1), stage.shape[1:2], eps=1e-6).permute(0, 3, 1, 2)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_swin_feature_maps_strides(images):
    swin = SwinModel(SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], image_size=32, patch_size=4, window_size=1))
    backbone = create_backbone(swin, features_only=True, out_indices=[2, 3, 4])
    maps = backbone(images)
    assert backbone.feature_strides == [8, 16, 32]
    assert [m.shape[1] for m in maps] == backbone.feature_channels == [16, 32, 64]
    assert [m.shape[-1] for m in maps] == [4, 2, 1]


def test_plain_vit_simple_pyramid(images):
    torch.manual_seed(0)
    vit = ViTModel(tiny_vit_config()).eval()
    backbone = create_backbone(vit, features_only=True).eval()
    # patch 8: levels 1..4 are strides 2, 4, 8, 16, finest first
    assert backbone.feature_strides == [2, 4, 8, 16]
    assert backbone.feature_channels == [8, 16, 32, 32]
    with torch.no_grad():
        maps = backbone(images)
        tokens = vit(pixel_values=images).last_hidden_state[:, 1:]  # drop CLS
    assert [tuple(m.shape[-2:]) for m in maps] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    # Level 3 is the token grid itself (row-major patches).
    grid = tokens.transpose(1, 2).reshape(2, 32, 4, 4)
    torch.testing.assert_close(maps[2], grid, rtol=0, atol=0)
    torch.testing.assert_close(maps[3], F.max_pool2d(grid, 2), rtol=0, atol=0)
    # Gradients reach the ViT through every level.
    sum(m.sum() for m in backbone(images)).backward()
    assert vit.embeddings.patch_embeddings.projection.weight.grad is not None

    with pytest.raises(ValueError, match="out_indices contains 7"):
        create_backbone(vit, features_only=True, out_indices=[7])


def test_config_builds_and_spec_rebuilds_identically(images):
    torch.manual_seed(0)
    backbone = create_backbone(tiny_vit_config(), drop_path_rate=0.0).eval()
    spec = json.loads(json.dumps(backbone.backbone_spec))  # what a saved task stores
    assert spec["model_name"] == "hf:vit" and spec["pretrained"] is False
    rebuilt = create_backbone(spec).eval()
    rebuilt.load_state_dict(backbone.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images), backbone(images), rtol=0, atol=0)
    assert rebuilt.data_config == backbone.data_config


def test_bad_overrides_and_specs_are_one_line_errors():
    with pytest.raises(ValueError, match="hidden_sise"):
        create_backbone(tiny_vit_config(), hidden_sise=8)
    with pytest.raises(ValueError, match="cannot apply to an already built"):
        create_transformers_backbone(ViTModel(tiny_vit_config()), hidden_size=8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_backbone("hf:/no/such/folder")


@pytest.fixture
def vit_classifier_folder(tmp_path):
    """A ViTForImageClassification checkpoint (no pooler weights) with its own, non-default preprocessing."""
    torch.manual_seed(1)
    model = ViTForImageClassification(tiny_vit_config(num_labels=3)).eval()
    folder = tmp_path / "tiny-vit"
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.45, 0.5], image_std=[0.2, 0.25, 0.3], resample=3).save_pretrained(folder)
    return model, folder


def test_hf_name_from_cache_offline(hf_cache, vit_classifier_folder, images):
    model, folder = vit_classifier_folder
    hf_cache.add_folder("acme/tiny-vit", folder)
    backbone = create_backbone("hf:acme/tiny-vit").eval()
    # Pooler weights are not in a classification checkpoint: the CLS token is used, as ViT's own head does.
    assert backbone.pooling == "cls"
    with torch.no_grad():
        want = model.vit(pixel_values=images).last_hidden_state[:, 0]
        torch.testing.assert_close(backbone(images), want, rtol=0, atol=0)
    assert backbone.data_config["mean"] == pytest.approx([0.4, 0.45, 0.5])
    assert backbone.data_config["std"] == pytest.approx([0.2, 0.25, 0.3])
    assert backbone.data_config["interpolation"] == "bicubic"
    assert backbone.backbone_spec["source"] == "hf:acme/tiny-vit"


def test_folder_with_auto_backbone_loads_weights(tmp_path, images):
    torch.manual_seed(2)
    convnext = ConvNextModel(tiny_convnext_config()).eval()
    convnext.save_pretrained(tmp_path / "cnx")
    backbone = create_backbone(str(tmp_path / "cnx"), features_only=True, out_indices=[3, 4]).eval()
    assert type(backbone.model).__name__ == "ConvNextBackbone"
    assert backbone.feature_strides == [16, 32]
    with torch.no_grad():
        stage4 = convnext(pixel_values=images, output_hidden_states=True).hidden_states[4]
        want = F.layer_norm(stage4.permute(0, 2, 3, 1), (64,), eps=1e-6).permute(0, 3, 1, 2)
        torch.testing.assert_close(backbone(images)[1], want, rtol=1e-5, atol=1e-5)
    pooled = create_backbone(str(tmp_path / "cnx")).eval()
    with torch.no_grad():
        torch.testing.assert_close(pooled(images), convnext(pixel_values=images).pooler_output, rtol=0, atol=0)


def test_missing_model_fails_fast_offline_and_unreachable(hf_cache, monkeypatch):
    start = time.monotonic()
    with pytest.raises(OfflineModelError, match=r"'hf:acme/nothing-here'.*pretrained=False.*HF_HUB_OFFLINE"):
        create_backbone("hf:acme/nothing-here")
    # Online, but the endpoint refuses connections: still an OfflineModelError within seconds, not a retry loop.
    from huggingface_hub import constants

    hf_cache.set_offline(False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}")
    with pytest.raises(OfflineModelError, match=r"hf:acme/nothing-here.*127\.0\.0\.1:9"):
        create_backbone("hf:acme/nothing-here")
    assert time.monotonic() - start < 20
