"""PyTorch Hub entry points (hubconf.py at the repository root), loaded the way users load them: torch.hub.load.

No network: pretrained weights come from a Hugging Face cache that each test lays out itself
(``models--org--name/snapshots/<hash>`` + ``refs/main``) with offline mode on, or fail.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from hubtrain.errors import OfflineModelError
from hubtrain.models.resnet_bk import (
    RESNET_BK_PRESETS,
    ResNetBKConfig,
    ResNetBKForCausalLM,
    create_resnet_bk_for_hf,
)

REPO = Path(__file__).resolve().parents[1]
TINY = dict(vocab_size=97, d_model=16, n_layers=2, num_experts=2, top_k=1, n_seq=32)


def hub_load(entry: str, *args, **kwargs):
    return torch.hub.load(str(REPO), entry, *args, source="local", verbose=False, **kwargs)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp_path, with offline mode on (as HF_HUB_OFFLINE=1 would set it)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def put_in_cache(cache: Path, repo_id: str, model) -> Path:
    """Lay out ``repo_id`` in the cache exactly as huggingface_hub's downloads do (refs/main -> snapshot)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    model.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_hubconf_declares_its_dependencies_and_entry_points():
    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert hubconf.dependencies == ["torch", "transformers"]
    for entry in ("resnet_bk_1m", "resnet_bk_10m", "resnet_bk_100m", "resnet_bk_1b", "resnet_bk_10b",
                  "resnet_bk_custom"):
        assert callable(getattr(hubconf, entry)) and getattr(hubconf, entry).__doc__, entry
    assert set(hubconf.DEFAULT_REPO_IDS) == set(RESNET_BK_PRESETS)


def test_custom_entry_is_the_model_its_config_describes():
    torch.manual_seed(0)
    model = hub_load("resnet_bk_custom", **TINY)
    torch.manual_seed(0)
    direct = ResNetBKForCausalLM(ResNetBKConfig(**TINY))
    assert isinstance(model, ResNetBKForCausalLM)
    assert model.config.d_model == 16 and model.config.n_layers == 2
    state, expected = model.state_dict(), direct.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in state)
    ids = torch.randint(0, TINY["vocab_size"], (2, 12))
    logits = model(ids).logits
    assert logits.shape == (2, 12, TINY["vocab_size"]) and torch.isfinite(logits).all()


def test_preset_entry_with_overrides_runs():
    model = hub_load("resnet_bk_1m", vocab_size=64)
    reference = create_resnet_bk_for_hf("1M", vocab_size=64)
    assert model.config.to_dict() == reference.config.to_dict()
    assert model.config.vocab_size == 64
    assert model(torch.randint(0, 64, (1, 8))).logits.shape == (1, 8, 64)


@pytest.mark.parametrize("entry,size", [("resnet_bk_10m", "10M"), ("resnet_bk_100m", "100M"),
                                        ("resnet_bk_1b", "1B"), ("resnet_bk_10b", "10B")])
def test_big_presets_are_built_on_the_meta_device(entry, size):
    """The big presets are never allocated here: their architecture and parameter count come from the meta device."""
    with torch.device("meta"):
        model = hub_load(entry)
        reference = create_resnet_bk_for_hf(size)
    assert model.config.to_dict() == reference.config.to_dict()
    for key, value in RESNET_BK_PRESETS[size].items():
        assert getattr(model.config, key) == value, key
    assert next(model.parameters()).is_meta
    assert model.num_parameters() == reference.num_parameters()


def test_repo_id_without_pretrained_is_an_error():
    with pytest.raises(ValueError, match="pretrained=True"):
        hub_load("resnet_bk_1m", repo_id="someone/resnet-bk")


def test_pretrained_with_an_empty_offline_cache_fails_fast(hf_cache):
    start = time.perf_counter()
    with pytest.raises(OfflineModelError) as info:
        hub_load("resnet_bk_10m", pretrained=True)
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "hubtrain/resnet-bk-10m" in message and "pretrained=False" in message
    assert "\n" not in message


def test_pretrained_with_an_unreachable_hub_fails_fast(hf_cache, monkeypatch):
    """Online mode but nothing listening at the endpoint: a connection error becomes OfflineModelError, quickly."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    start = time.perf_counter()
    with pytest.raises(OfflineModelError, match="someone/resnet-bk-tiny"):
        hub_load("resnet_bk_1m", pretrained=True, repo_id="someone/resnet-bk-tiny")
    assert time.perf_counter() - start < 30


def test_pretrained_loads_exactly_the_cached_weights(hf_cache):
    torch.manual_seed(1)
    trained = ResNetBKForCausalLM(ResNetBKConfig(**TINY)).eval()
    put_in_cache(hf_cache, "someone/resnet-bk-tiny", trained)

    loaded = hub_load("resnet_bk_10m", pretrained=True, repo_id="someone/resnet-bk-tiny").eval()
    assert loaded.config.d_model == TINY["d_model"]  # the repo's config wins over the preset's architecture
    state, expected = loaded.state_dict(), trained.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in state)
    ids = torch.randint(0, TINY["vocab_size"], (1, 20))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, trained(ids).logits)


def test_pretrained_cache_without_weights_is_an_error(hf_cache):
    snapshot = put_in_cache(hf_cache, "hubtrain/resnet-bk-1m", ResNetBKForCausalLM(ResNetBKConfig(**TINY)))
    for weights in snapshot.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(OfflineModelError, match="no safetensors weights"):
        hub_load("resnet_bk_1m", pretrained=True)


def test_hubconf_works_from_a_plain_clone_without_install(tmp_path):
    """torch.hub puts only the repository root on sys.path; hubconf must find src/ by itself."""
    src = str(REPO / "src")
    script = textwrap.dedent(f"""
        import sys
        sys.path[:] = [p for p in sys.path if p.rstrip("/") != {src!r}]
        import importlib.util
        assert importlib.util.find_spec("hubtrain") is None, "hubtrain should not be importable yet"
        import torch
        model = torch.hub.load({str(REPO)!r}, "resnet_bk_custom", source="local", verbose=False,
                               vocab_size=50, d_model=8, n_layers=1, num_experts=1, top_k=1)
        import hubtrain
        print(type(model).__name__, hubtrain.__file__)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    name, location = proc.stdout.split()
    assert name == "ResNetBKForCausalLM"
    assert Path(location).resolve().is_relative_to(REPO / "src")
