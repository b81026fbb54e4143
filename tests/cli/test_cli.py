"""The `hubtrain` command: help, the main job end to end, LightningCLI with YAML, and bad input."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hubtrain.cli import main

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hubtrain", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"},
    )


def test_help_lists_commands_and_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("quickstart", "fit", "export", "push", "generate"):
        assert command in out
    assert "examples:" in out and "hubtrain quickstart" in out


@pytest.mark.parametrize("command", [["quickstart"], ["quickstart", "lm"], ["export"], ["push"], ["generate"]])
def test_every_subcommand_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: hubtrain " + " ".join(command) in out
    assert "example" in out.lower()


def test_quickstart_reaches_95_percent_and_writes_a_loadable_hub_folder(tmp_path):
    """The main job: >= 95% on the digits validation split; the Hub folder reproduces the trained predictions."""
    from hubtrain import ImageClassifier, ImageDataModule
    from hubtrain.cli.quickstart import run_quickstart

    result = run_quickstart(root_dir=str(tmp_path / "runs"), output_dir=str(tmp_path / "hub"), enable_progress_bar=False)
    assert result["val_accuracy"] >= 0.95

    run_dir = Path(result["run_dir"])
    assert run_dir.parent.name == "quickstart" and run_dir.name.startswith("version_")
    assert (run_dir / "metrics.csv").stat().st_size > 0
    assert (run_dir / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(result["best_checkpoint"]).is_file()

    hub = Path(result["output_dir"])
    for name in ("model.safetensors", "config.json", "README.md"):
        assert (hub / name).is_file(), name

    data = ImageDataModule(dataset_name="digits", image_size=32, batch_size=64, seed=0)
    data.setup("fit")
    images, _ = next(iter(data.val_dataloader()))
    trained = result["model"].eval()
    loaded = ImageClassifier.from_pretrained(hub).eval()
    with torch.no_grad():
        assert torch.equal(trained(images), loaded(images))


def test_lightning_cli_fit_with_yaml(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"""
seed_everything: 0
trainer:
  max_epochs: 1
  limit_train_batches: 3
  limit_val_batches: 2
  default_root_dir: {tmp_path / "runs"}
  run_name: tiny
  enable_progress_bar: false
model:
  class_path: hubtrain.ImageClassifier
  init_args:
    backbone: resnet18
    pretrained: false
    num_classes: 10
data:
  class_path: hubtrain.ImageDataModule
  init_args:
    dataset_name: digits
    image_size: 16
    batch_size: 16
"""
    )
    proc = run_cli("fit", "--config", str(config), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    checkpoints = list((tmp_path / "runs" / "tiny").rglob("*.ckpt"))
    assert checkpoints, f"no checkpoint under {tmp_path / 'runs'}"


def test_example_config_parses():
    proc = run_cli("fit", "--config", str(REPO / "examples" / "configs" / "digits.yaml"), "--print_config")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ImageClassifier" in proc.stdout and "digits" in proc.stdout


def test_bad_backbone_is_a_one_line_error_and_nonzero_exit(tmp_path):
    proc = run_cli("quickstart", "--backbone", "no_such_model_xyz", "--max-epochs", "1",
                   "--root-dir", str(tmp_path / "r"), "--output-dir", str(tmp_path / "o"), cwd=tmp_path)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "no_such_model_xyz" in last and last.startswith("hubtrain quickstart: error:")
    assert not (tmp_path / "o").exists()
