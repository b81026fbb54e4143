"""Backbones: timm names, hf-hub: from a cache the test lays out, local-dir:, and fail-fast offline errors."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from hubtrain.backbones import BackboneConfig, create_backbone, list_backbones
from hubtrain.errors import OfflineModelError


def _assert_backbone_weights_equal(backbone, saved: dict) -> None:
    own = backbone.model.state_dict()
    assert own, "backbone has no weights"
    for key, value in own.items():
        assert torch.equal(value, saved[key]), f"{key} differs from the saved weights"


def test_timm_name_pooled_and_feature_maps():
    pooled = create_backbone("test_resnet", pretrained=False)
    x = torch.randn(2, 3, 32, 32)
    assert pooled(x).shape == (2, pooled.num_features) == (2, 96)
    for key in ("input_size", "mean", "std", "interpolation", "crop_pct"):
        assert key in pooled.data_config

    maps = create_backbone("test_resnet", pretrained=False, features_only=True, out_indices=(1, 2, 3))
    feats = maps(x)
    assert [f.shape[1] for f in feats] == maps.feature_channels
    assert maps.feature_strides == sorted(maps.feature_strides), "feature maps must come finest first"
    assert [32 // s for s in maps.feature_strides] == [f.shape[-1] for f in feats]


def test_backbone_config_round_trip_and_bad_fields():
    cfg = BackboneConfig("test_resnet", pretrained=False, drop_rate=0.1, extra_kwargs={"in_chans": 1})
    assert BackboneConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        BackboneConfig.from_dict({"model_name": "resnet18", "dropout": 0.1})
    with pytest.raises(ValueError, match="drop_path_rate"):
        BackboneConfig("resnet18", drop_path_rate=1.5)
    b = create_backbone(cfg)
    assert b(torch.randn(2, 1, 32, 32)).shape == (2, 96)
    assert b.data_config["input_size"][0] == 1


def test_unknown_name_and_bad_type_are_one_line_errors():
    with pytest.raises(ValueError, match="'resnet_18'.*did you mean"):
        create_backbone("resnet_18", pretrained=False)
    with pytest.raises(TypeError, match="backbone=42"):
        create_backbone(42)


def test_list_backbones():
    assert "test_resnet" in list_backbones("test_*")
    assert "test_resnet.r160_in1k" in list_backbones("test_res*", pretrained=True)


def test_hf_hub_loads_offline_from_cache(hf_cache):
    repo = hf_cache("acme/tiny-resnet", "test_resnet", seed=3)
    backbone = create_backbone(repo.hub_name, pretrained=True)
    _assert_backbone_weights_equal(backbone, repo.state_dict)
    # The spec pins the architecture, so a rebuild needs neither the Hub nor the cache.
    spec = backbone.backbone_spec
    assert spec["model_name"] == "test_resnet" and spec["source"] == "hf-hub:acme/tiny-resnet"
    json.dumps(spec)
    rebuilt = create_backbone(BackboneConfig.from_dict(spec), pretrained=False)
    assert rebuilt.data_config == backbone.data_config
    assert rebuilt.model.state_dict().keys() == backbone.model.state_dict().keys()


def test_hf_hub_pickle_weights_and_revision(hf_cache):
    repo = hf_cache("acme/tiny-bin", "test_resnet", seed=4, safetensors=False)
    backbone = create_backbone(f"{repo.hub_name}@{repo.commit}", pretrained=True)
    _assert_backbone_weights_equal(backbone, repo.state_dict)


def test_registry_name_pretrained_comes_from_cache(hf_cache):
    # test_resnet's default pretrained tag lives at timm/test_resnet.r160_in1k on the Hub.
    repo = hf_cache("timm/test_resnet.r160_in1k", "test_resnet", seed=5)
    backbone = create_backbone("test_resnet", pretrained=True)
    _assert_backbone_weights_equal(backbone, repo.state_dict)


def test_missing_weights_offline_fail_at_once(hf_cache):
    with pytest.raises(OfflineModelError) as err:
        create_backbone("hf-hub:acme/not-cached", pretrained=True)
    message = str(err.value)
    assert "hf-hub:acme/not-cached" in message and "pretrained=False" in message and "HF_HUB_OFFLINE" in message
    assert "\n" not in message
    with pytest.raises(OfflineModelError, match="'test_resnet'"):
        create_backbone("test_resnet", pretrained=True)


def test_local_dir(timm_folder):
    folder, saved = timm_folder("test_resnet", seed=7)
    backbone = create_backbone(f"local-dir:{folder}", pretrained=True)
    _assert_backbone_weights_equal(backbone, saved)
    assert backbone.backbone_spec["source"] == f"local-dir:{folder}"
    # A bare folder holding a timm config.json means the same thing.
    _assert_backbone_weights_equal(create_backbone(str(folder)), saved)
    with pytest.raises(FileNotFoundError, match="config.json"):
        create_backbone(f"local-dir:{folder}-missing")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub_fails_within_seconds(tmp_path):
    """A fresh interpreter (huggingface_hub reads HF_ENDPOINT at import) with no cache: first a closed port
    (connection refused), then a port that accepts connections but never answers (the timeout path)."""
    script = textwrap.dedent(
        """
        import sys, time
        import huggingface_hub, timm
        import hubtrain.backbones.timm_backbone
        from huggingface_hub import constants
        from hubtrain.backbones import create_backbone
        from hubtrain.errors import OfflineModelError
        for endpoint in sys.argv[1:]:
            constants.ENDPOINT = endpoint
            start = time.perf_counter()
            try:
                create_backbone("hf-hub:timm/x", pretrained=True)
            except OfflineModelError as err:
                print(f"{time.perf_counter() - start:.3f}\t{err}")
        """
    )
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes handshakes; nobody ever reads or answers
        closed = f"http://127.0.0.1:{_closed_port()}"
        env = {**os.environ, "HF_ENDPOINT": closed, "HF_HOME": str(tmp_path / "home"), "HUBTRAIN_HUB_TIMEOUT": "2"}
        env.pop("HF_HUB_OFFLINE", None)
        env.pop("HF_HUB_CACHE", None)
        args = [closed, f"http://127.0.0.1:{silent.getsockname()[1]}"]
        out = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stdout + out.stderr
    for line in lines:
        seconds, message = line.split("\t")
        assert float(seconds) < 10.0, line
        assert "hf-hub:timm/x" in message and "pretrained=False" in message and "could not be reached" in message


def test_a_built_backbone_is_accepted_as_is():
    backbone = create_backbone("test_resnet", pretrained=False)
    assert create_backbone(backbone) is backbone
    with pytest.raises(ValueError, match="features_only"):
        create_backbone(backbone, features_only=True)
