"""The README's "Command line" section, run as a user types it: every command a subprocess, chained in the README's
order, in a fresh temporary working folder, with nothing imported in this process to help it.

The commands are read from README.md at test time. The only changes are the small settings listed in ``SMALL``
(fewer epochs and steps, so CI stays within its budget) and, for ``push``, a local Hub-compatible server on
127.0.0.1 instead of huggingface.co. What was pushed is then downloaded and loaded in a Python that cannot import
hubtrain.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
sys.path.insert(0, str(ROOT / "tests" / "hub"))
from hub_server import LocalHubServer  # noqa: E402

TOKEN = "hf_ReadmeJourneyToken0123456789abcdef"
# command prefix -> extra arguments (small settings for CI); every README command must match one prefix
SMALL = {
    "hubtrain quickstart lm": ["--fast", "--max-steps", "30"],
    "hubtrain quickstart": ["--max-epochs", "1"],
    "hubtrain export": [],
    "hubtrain push": [],
    "hubtrain generate": ["--max-new-tokens", "12"],
    "hubtrain fit": ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "2"],
}


def readme_commands() -> list[list[str]]:
    """The ``hubtrain ...`` lines of the README's Command line section, comments stripped, in order."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Command line", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip().startswith("hubtrain")]


def small(argv: list[str]) -> list[str]:
    line = " ".join(argv)
    prefix = max((p for p in SMALL if line == p or line.startswith(p + " ")), key=len, default=None)
    assert prefix is not None, f"README command {line!r} has no entry in SMALL: add one so it is tested"
    return argv + SMALL[prefix]


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    """``argv`` as typed: ``hubtrain`` is the console script pip installed next to this Python, ``python`` this Python."""
    exe = {"hubtrain": str(Path(sys.executable).parent / "hubtrain"), "python": sys.executable}[argv[0]]
    result = subprocess.run([exe, *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{shlex.join(argv)} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


@pytest.fixture
def user_env(tmp_path):
    """A fresh working folder and a user's environment: no hubtrain state, a private HF home, offline by default."""
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUBTRAIN_", "PYTEST_"))}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1", HUBTRAIN_CACHE=str(tmp_path / "hubtrain-cache"),
               HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg")
    return work, env


def test_every_readme_command_is_covered():
    commands = readme_commands()
    assert len(commands) >= 7
    for argv in commands:
        small(argv)  # raises if a command has no small settings, i.e. would not be exercised below


NO_HUBTRAIN = """
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "hubtrain" or name.startswith("hubtrain."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
sys.meta_path.insert(0, Block())
from huggingface_hub import ModelCard, snapshot_download
from safetensors.torch import load_file
folder = snapshot_download(sys.argv[1], endpoint=sys.argv[2])
card = ModelCard.load(folder + "/README.md")
weights = load_file(folder + "/model.safetensors")
json.dump({"files": sorted(__import__("os").listdir(folder)), "tensors": len(weights),
           "numel": sum(t.numel() for t in weights.values()), "tags": card.data.tags,
           "config": json.load(open(folder + "/config.json"))}, sys.stdout)
"""


def test_vision_journey_quickstart_export_push_and_load_without_hubtrain(user_env):
    work, env = user_env
    commands = [c for c in readme_commands() if c[:2] != ["hubtrain", "fit"] and "lm" not in c[:3]]
    commands = [c for c in commands if not any("quickstart-lm" in a for a in c)]
    assert [c[1] for c in commands] == ["quickstart", "export", "push"]
    quickstart, export, push = commands

    run(small(quickstart), work, env)
    folder = work / "hubtrain-quickstart"
    config = json.loads((folder / "config.json").read_text())
    assert config["hubtrain_task"] == "ImageClassifier" and config["preprocessing"]["input_size"] == [3, 32, 32]

    assert export[2] == "hubtrain-quickstart"
    run(small(export), work, env)
    report = json.loads((work / "hubtrain-quickstart-export" / "report.json").read_text())
    check = report["artifacts"]["onnx"]["verification"]
    assert check["ok"] and check["argmax_match"] is True
    # verified at the folder's own 32 px and at a second size
    assert {tuple(s[0][2:]) for s in check["shapes"]} == {(32, 32), (64, 64)}

    user, repo = push[push.index("--repo-id") + 1].split("/")
    with LocalHubServer(tokens={TOKEN: user}, max_lifetime_s=600) as hub:
        push_env = {**env, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
        pushed = run(small(push), work, push_env)
        assert TOKEN not in pushed.stdout + pushed.stderr
        load_env = {**push_env, "HF_HOME": str(work.parent / "other-home")}
        loaded = run(["python", "-c", NO_HUBTRAIN, f"{user}/{repo}", hub.endpoint], work, load_env)
    got = json.loads(loaded.stdout)
    from safetensors.torch import load_file

    local = load_file(folder / "model.safetensors")
    assert got["tensors"] == len(local) and got["numel"] == sum(t.numel() for t in local.values())
    assert {"config.json", "model.safetensors", "README.md"} <= set(got["files"])
    assert got["config"]["hubtrain_task"] == "ImageClassifier" and "hubtrain" in got["tags"]


def test_language_journey_quickstart_lm_generate_export(user_env):
    work, env = user_env
    commands = [c for c in readme_commands() if c[:3] == ["hubtrain", "quickstart", "lm"] or
                any("quickstart-lm" in a for a in c)]
    assert [c[1] for c in commands] == ["quickstart", "generate", "export", "generate"]
    quickstart, generate, export, generate_onnx = commands

    run(small(quickstart), work, env)
    folder = work / "hubtrain-quickstart-lm"
    assert json.loads((folder / "config.json").read_text())["model_type"] == "resnet_bk"

    prompt = generate[generate.index("--prompt") + 1]
    out = run(small(generate), work, env).stdout
    assert out.startswith(prompt) and len(out.rstrip("\n")) > len(prompt)  # the prompt, then what the model wrote

    run(small(export), work, env)
    exported = work / "hubtrain-quickstart-lm-export"
    report = json.loads((exported / "report.json").read_text())
    assert report["artifacts"]["onnx"]["verification"]["ok"] and report["artifacts"]["decode_step"]["verification"]["ok"]
    assert (exported / "model.onnx").is_file() and (exported / "decode_step.onnx").is_file()

    assert generate_onnx[generate_onnx.index("--backend") + 1] == "onnx"
    assert run(small(generate_onnx), work, env).stdout == out  # onnxruntime's greedy text is PyTorch's


def test_fit_journey_with_the_example_config(user_env):
    work, env = user_env
    (fit,) = [c for c in readme_commands() if c[:2] == ["hubtrain", "fit"]]
    config = fit[fit.index("--config") + 1]
    argv = small(fit)
    argv[argv.index(config)] = str(ROOT / config)  # the example ships with the repository, not the work folder
    run(argv, work, env)
    checkpoints = list(work.rglob("*.ckpt"))
    assert checkpoints and (work / "runs" / "digits-cli").is_dir(), sorted(p.name for p in work.rglob("*"))[:20]
