"""Files from users are data, never instructions: hostile folders and checkpoints plant code that would write a marker
file, and no hubtrain path that reads them (export, push, generate, from_pretrained, load_from_checkpoint, load)
ever runs it. Each path must also fail (or refuse) with a one-line message."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "hub"))
from hub_server import LocalHubServer  # noqa: E402

PLANT = "open({marker!r}, 'a').write('{what} ran\\n')\n"


def _plant_module(folder: Path, name: str, marker: Path, body: str = "") -> None:
    (folder / f"{name}.py").write_text(PLANT.format(marker=str(marker), what=name) + body)


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "PWNED"


@pytest.fixture
def evil_module(tmp_path, marker) -> Path:
    """A module on the path that writes the marker when imported (a package an attacker could name)."""
    where = tmp_path / "site"
    where.mkdir()
    _plant_module(where, "evilpkg", marker, "import torchmetrics\nclass EvilMetric(torchmetrics.MeanMetric):\n    pass\n")
    return where


@pytest.fixture
def remote_code_lm(tmp_path, marker) -> Path:
    """A transformers causal-LM folder of an unknown model type whose config, model and tokenizer are remote code."""
    folder = tmp_path / "remote-lm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil_lm", "architectures": ["EvilForCausalLM"], "vocab_size": 16,
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
                     "AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]},
    }))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "EvilTokenizer",
                                                               "auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}}))
    for name in ("configuration_evil", "modeling_evil", "tokenization_evil"):
        _plant_module(folder, name, marker)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, folder / "model.safetensors")
    return folder


@pytest.fixture
def resnet_bk_with_planted_code(tmp_path, marker, resnet_bk) -> Path:
    """A genuine ResNet-BK folder whose saved copies of the modeling files have been replaced by planted code."""
    folder = tmp_path / "rbk"
    resnet_bk.save_pretrained(folder)
    for name in ("modeling_resnet_bk", "configuration_resnet_bk", "green_scan"):
        _plant_module(folder, name, marker)
    return folder


@pytest.fixture
def hostile_task_folder(tmp_path, classifier, evil_module) -> Path:
    """A classifier folder whose stored init arguments name a metric class in a planted module."""
    folder = tmp_path / "task"
    classifier.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["init_args"]["metrics"] = [{"name": "evil", "backend": "custom", "metric_class": "evilpkg.EvilMetric",
                                       "params": {}, "stages": ["val"]}]
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _hostile_checkpoints(tmp_path: Path, remote_code_lm: Path, classifier) -> dict[str, Path]:
    """Lightning-style checkpoints whose hyper-parameters point at remote code, a repo id, or a planted class."""
    out = {}
    base = {"epoch": 0, "global_step": 1, "pytorch-lightning_version": "2.6.6"}
    out["lm-folder-remote-code"] = tmp_path / "lm.ckpt"
    torch.save({**base, "hubtrain_task": "CausalLMTask", "state_dict": {"model.w": torch.zeros(2)},
                "hyper_parameters": {"model": str(remote_code_lm), "model_kwargs": {"trust_remote_code": True}}},
               out["lm-folder-remote-code"])
    out["lm-repo-id"] = tmp_path / "repo.ckpt"
    torch.save({**base, "hubtrain_task": "CausalLMTask", "state_dict": {"model.w": torch.zeros(2)},
                "hyper_parameters": {"model": "evil-org/evil-lm", "tokenizer": "evil-org/evil-lm"}}, out["lm-repo-id"])
    hp = {"backbone": "test_resnet", "num_classes": 3, "pretrained": False,
          "metrics": [{"name": "evil", "backend": "custom", "metric_class": "evilpkg.EvilMetric", "params": {}, "stages": ["val"]}]}
    out["classifier-planted-metric"] = tmp_path / "cls.ckpt"
    torch.save({**base, "hubtrain_task": "ImageClassifier", "state_dict": classifier.state_dict(), "hyper_parameters": hp},
               out["classifier-planted-metric"])
    out["classifier-remote-backbone"] = tmp_path / "cls2.ckpt"
    torch.save({**base, "hubtrain_task": "ImageClassifier", "state_dict": classifier.state_dict(),
                "hyper_parameters": {"backbone": {"model_name": "hf:evil-org/evil-vit", "pretrained": False,
                                                  "extra_kwargs": {"trust_remote_code": True}}, "num_classes": 3}},
               out["classifier-remote-backbone"])
    return out


def _cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).parent / "hubtrain")
    return subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _assert_refused(result: subprocess.CompletedProcess, marker: Path, what: str) -> None:
    assert not marker.exists(), f"{what}: planted code ran: {marker.read_text()!r}"
    assert result.returncode != 0, f"{what} succeeded on a hostile input"
    assert "Traceback" not in result.stderr, f"{what}: {result.stderr[-1500:]}"
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, f"{what}: expected one error line, got {result.stderr[-1500:]}"


def test_cli_paths_never_run_code_from_folders_or_checkpoints(tmp_path, marker, evil_module, remote_code_lm,
                                                          resnet_bk_with_planted_code, hostile_task_folder, classifier):
    env = {**os.environ, "PYTHONPATH": str(evil_module), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    checkpoints = _hostile_checkpoints(tmp_path, remote_code_lm, classifier)
    with LocalHubServer(tokens={"hf_HostileTestToken0123456789abcd": "alice"}, max_lifetime_s=300) as hub:
        push_env = {**env, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_HostileTestToken0123456789abcd",
                    "HF_HUB_DISABLE_XET": "1"}
        cases = [(["export", str(remote_code_lm), "-o", str(tmp_path / "e1")], env),
                 (["generate", str(remote_code_lm), "--prompt", "x"], env),
                 (["export", str(hostile_task_folder), "-o", str(tmp_path / "e2")], env)]
        for name, ckpt in checkpoints.items():
            cases.append((["export", str(ckpt), "-o", str(tmp_path / f"e-{name}")], env))
            cases.append((["push", str(ckpt), "--repo-id", f"alice/{name}"], push_env))
        for args, case_env in cases:
            result = _cli(args, tmp_path, case_env)
            _assert_refused(result, marker, " ".join(args[:2]))
        # pushing a folder uploads its files as they are (data): it may succeed, but nothing in it runs
        for folder in (hostile_task_folder, remote_code_lm):
            _cli(["push", str(folder), "--repo-id", f"alice/{folder.name}"], tmp_path, push_env)
            assert not marker.exists(), f"push {folder.name}: planted code ran"
        # the genuine ResNet-BK folder loads and generates with hubtrain's own code, not the planted copies
        ok = _cli(["export", str(resnet_bk_with_planted_code), "-o", str(tmp_path / "rbk-export"), "--optimize", "none"], tmp_path, env)
        assert ok.returncode == 0, ok.stderr[-2000:]
    assert not marker.exists(), marker.read_text()
    assert not any((tmp_path / f"e-{name}").exists() for name in checkpoints)  # nothing half-written


def test_python_paths_never_run_code_from_folders_or_checkpoints(tmp_path, marker, evil_module, remote_code_lm,
                                                             resnet_bk_with_planted_code, hostile_task_folder,
                                                             classifier, monkeypatch):
    import hubtrain
    from hubtrain import CausalLMTask, ImageClassifier

    monkeypatch.syspath_prepend(str(evil_module))
    with pytest.raises(ValueError, match="evilpkg.EvilMetric.*may only name classes from"):
        ImageClassifier.from_pretrained(hostile_task_folder)
    with pytest.raises(ValueError, match="trust_remote_code|remote code"):
        hubtrain.load(remote_code_lm)
    checkpoints = _hostile_checkpoints(tmp_path, remote_code_lm, classifier)
    with pytest.raises(ValueError, match="may not turn on remote code"):
        CausalLMTask.load_from_checkpoint(checkpoints["lm-folder-remote-code"])
    with pytest.raises(ValueError, match="must carry the model's config dict"):
        CausalLMTask.load_from_checkpoint(checkpoints["lm-repo-id"])
    with pytest.raises(ValueError, match="evilpkg.EvilMetric"):
        ImageClassifier.load_from_checkpoint(checkpoints["classifier-planted-metric"])
    with pytest.raises(ValueError, match="trust_remote_code=True; a saved folder or checkpoint may not turn on remote code"):
        ImageClassifier.load_from_checkpoint(checkpoints["classifier-remote-backbone"])
    with pytest.raises(ValueError, match=r"weights_only=False\) would unpickle code"):
        ImageClassifier.load_from_checkpoint(checkpoints["classifier-planted-metric"], weights_only=False)
    model = hubtrain.load(resnet_bk_with_planted_code)  # native code, never the folder's copy
    assert type(model.model).__module__.startswith("hubtrain.models.resnet_bk")
    assert not marker.exists(), marker.read_text()


def test_a_checkpoint_naming_a_backbone_never_makes_hubtrain_download_it(tmp_path, classifier, monkeypatch):
    """A checkpoint whose backbone is a Hub repo that is not cached fails offline at once, even with the network
    allowed: only the user names what is downloaded."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    ckpt = tmp_path / "hub-backbone.ckpt"
    torch.save({"hubtrain_task": "ImageClassifier", "state_dict": classifier.state_dict(),
                "hyper_parameters": {"backbone": "hf-hub:someone/not-cached-anywhere", "num_classes": 3, "pretrained": False}}, ckpt)
    from hubtrain import ImageClassifier
    from hubtrain.errors import OfflineModelError

    with pytest.raises(OfflineModelError, match="never makes hubtrain download anything"):
        ImageClassifier.load_from_checkpoint(ckpt)
