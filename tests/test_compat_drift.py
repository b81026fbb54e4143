"""Dependency drift guard: the APIs of transformers, timm and Lightning that hubtrain depends on and that have moved
(or are private and may move) are exercised here against whatever versions are installed, so the next rename fails
this file instead of a user. CI runs it on the newest versions the declared ranges allow and on the declared minimums.
"""
from __future__ import annotations

import inspect
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _declared() -> dict[str, Requirement]:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return {Requirement(d).name.lower().replace("_", "-"): Requirement(d) for d in deps}


@pytest.mark.parametrize("package", ["transformers", "timm", "pytorch-lightning", "huggingface-hub", "torchmetrics",
                                     "safetensors", "tokenizers", "torch"])
def test_installed_version_is_inside_the_declared_range(package):
    req = _declared()[package]
    installed = version(package)
    assert req.specifier.contains(installed, prereleases=True), f"{package} {installed} is outside {req}"


# ---------------------------------------------------------------------------------------------- transformers


def test_cache_name_matches_what_generate_passes_and_reads(tiny_resnet_bk_ctx):
    """transformers 5.24 renamed `past_key_values` to `cache`: hubtrain.compat and the model must agree with the
    installed `generate` about the name, in both directions (the state goes in, and comes back out)."""
    from transformers.generation.utils import GenerationMixin

    from hubtrain.compat import cache_kwarg, output_cache
    from hubtrain.models.resnet_bk.modeling_resnet_bk import CACHE_OUTPUT_FIELD, ResNetBKCache

    passed = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    assert cache_kwarg() in passed, f"generate passes the cache under another name than {cache_kwarg()!r}"
    assert CACHE_OUTPUT_FIELD == cache_kwarg()

    model = tiny_resnet_bk_ctx
    seen = []
    original = type(model).forward

    def spy(self, *args, **kwargs):
        seen.append({k: type(v).__name__ for k, v in kwargs.items() if k in ("cache", "past_key_values")})
        return original(self, *args, **kwargs)

    ids = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(0))
    try:
        type(model).forward = spy
        model.generate(ids, max_new_tokens=4, do_sample=False)
    finally:
        type(model).forward = original
    # the first call builds the state; every later one must get it back under the installed name
    assert seen[0] == {} and all(s == {cache_kwarg(): "ResNetBKCache"} for s in seen[1:]), seen
    with torch.no_grad():
        out = model(ids, use_cache=True)
    assert isinstance(output_cache(out), ResNetBKCache) and out.cache is output_cache(out)


def test_gpt2_cache_round_trip_through_the_compat_helpers():
    from transformers import GPT2Config, GPT2LMHeadModel

    from hubtrain.compat import cache_kwarg, output_cache

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2, n_positions=32)).eval()
    ids = torch.randint(0, 32, (1, 6))
    with torch.no_grad():
        cache = output_cache(model(ids[:, :5], use_cache=True))
        step = model(ids[:, 5:], use_cache=True, **{cache_kwarg(): cache}).logits[:, -1]
        whole = model(ids).logits[:, -1]
    assert cache is not None and torch.allclose(step, whole, atol=1e-5)


def test_gradient_checkpointing_layer_and_loss_function_are_where_the_model_expects():
    from transformers.loss.loss_utils import ForCausalLMLoss
    from transformers.modeling_layers import GradientCheckpointingLayer

    from hubtrain.models.resnet_bk.modeling_resnet_bk import ResNetBKBlock

    assert issubclass(ResNetBKBlock, GradientCheckpointingLayer)
    params = inspect.signature(ForCausalLMLoss).parameters
    assert {"shift_labels", "num_items_in_batch"} <= set(params)


def test_transformers_backbone_tables_still_exist():
    """hubtrain reads transformers' Auto tables to tell backbones and image processors apart."""
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING, MODEL_FOR_BACKBONE_MAPPING_NAMES

    assert "resnet" in MODEL_FOR_BACKBONE_MAPPING_NAMES and len(MODEL_FOR_BACKBONE_MAPPING_NAMES) > 5
    assert "vit" in IMAGE_PROCESSOR_MAPPING_NAMES
    from transformers import ResNetConfig

    assert MODEL_FOR_BACKBONE_MAPPING[ResNetConfig].__name__ == "ResNetBackbone"


# ---------------------------------------------------------------------------------------------- timm


def test_timm_local_dir_and_its_config_reader(tmp_path):
    """`local-dir:` (timm >= 1.0.16) and the private config reader hubtrain uses to inspect such folders."""
    import timm
    from timm.models import save_for_hf
    from timm.models._hub import load_model_config_from_path

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    save_for_hf(model, str(tmp_path), safe_serialization=True)
    pretrained_cfg, architecture, _ = load_model_config_from_path(tmp_path)
    assert architecture == "test_resnet" and pretrained_cfg["num_classes"] == 3
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# ---------------------------------------------------------------------------------------------- Lightning


def test_lightning_private_loops_and_lr_finder_keep_their_shape():
    """AutoTrainer rebuilds the fit loop for a second fit, and the tuner reads the LR finder's results."""
    from pytorch_lightning.loops.fit_loop import _FitLoop
    from pytorch_lightning.loops.training_epoch_loop import _TrainingEpochLoop
    from pytorch_lightning.tuner.lr_finder import _LRFinder

    assert {"trainer", "min_epochs", "max_epochs"} <= set(inspect.signature(_FitLoop.__init__).parameters)
    assert {"trainer", "min_steps", "max_steps"} <= set(inspect.signature(_TrainingEpochLoop.__init__).parameters)
    finder = _LRFinder(mode="exponential", lr_min=1e-5, lr_max=1.0, num_training=10)
    assert finder.results == {} and hasattr(finder, "suggestion")


def test_lightning_keeps_stateful_loader_states_where_autotrainer_hands_them_over():
    """AutoTrainer hands a resumed run's loader states to the train loaders itself (see _RunHooks.on_train_start),
    through the fit loop's pending states; and Lightning must still treat a loader with state_dict as stateful."""
    from lightning_fabric.utilities.types import _Stateful
    from pytorch_lightning.loops.fit_loop import _FitLoop

    from hubtrain.data.loading import resumable_loader

    assert callable(getattr(_FitLoop, "_load_combined_loader_states", None))
    assert "_combined_loader_states_to_load" in _FitLoop.__init__.__code__.co_names
    loader = resumable_loader(list(range(10)), batch_size=2, shuffle=True, seed=0)
    assert isinstance(loader, _Stateful)


@pytest.fixture(scope="module")
def tiny_resnet_bk_ctx():
    from checks import assert_context_dependent
    from hubtrain.models.resnet_bk import ResNetBKConfig, ResNetBKForCausalLM

    torch.manual_seed(0)
    config = ResNetBKConfig(vocab_size=64, d_model=32, n_layers=2, num_channels=4, channel_dim=4, num_experts=2,
                            top_k=1, initializer_range=0.2)
    model = ResNetBKForCausalLM(config).eval()
    assert_context_dependent(model, 64)
    return model
