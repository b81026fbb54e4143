"""Interrupt anywhere, resume from the checkpoint, and get the uninterrupted run's weights bit for bit; the same seed
gives the same weights. For an image task (augmentations, dropout, shuffling) and for CausalLMTask."""
from __future__ import annotations

import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file

from hubtrain import AutoTrainer, CausalLMTask, ImageClassifier, ImageDataModule, TextDataModule

EPOCHS, BATCHES = 2, 6  # 12 optimizer steps


class StopAt(pl.Callback):
    """Saves a checkpoint after ``step`` optimizer steps and stops the run there, as a kill after a save would."""

    def __init__(self, step: int, path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def _image_run():
    pl.seed_everything(0)
    data = ImageDataModule(dataset_name="digits", image_size=16, batch_size=32, seed=5)
    model = ImageClassifier("test_resnet", num_classes=10, pretrained=False, head_dropout=0.3, lr=2e-3)
    return model, data


def _lm_run(tokenizer_dir):
    from transformers import GPT2Config

    pl.seed_everything(0)
    data = TextDataModule(max_files=12, vocab_size=300, block_size=32, batch_size=8, val_fraction=0.2,
                          test_fraction=0.0, tokenizer_cache_dir=tokenizer_dir, seed=5)
    config = GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=32, resid_pdrop=0.2, embd_pdrop=0.2, attn_pdrop=0.2)
    return CausalLMTask(config), data


def _trainer(tmp_path, **kwargs) -> AutoTrainer:
    return AutoTrainer(max_epochs=EPOCHS, limit_train_batches=BATCHES, limit_val_batches=2, default_root_dir=tmp_path,
                       enable_progress_bar=False, enable_model_summary=False, logger=False, enable_checkpointing=False,
                       plot_curves=False, **kwargs)


def _states_equal(a: dict, b: dict) -> list[str]:
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.parametrize("family", ["image", "causal_lm"])
def test_interrupted_and_resumed_runs_are_bit_identical(family, tmp_path, one_thread):
    make = _image_run if family == "image" else lambda: _lm_run(tmp_path / "tok")
    model, data = make()
    _trainer(tmp_path).fit(model, datamodule=data)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    moved = {k for k, v in reference.items() if v.is_floating_point()}
    assert moved, "nothing to compare"

    for stop in (BATCHES // 2, BATCHES):  # mid-epoch, and at the epoch boundary
        ckpt = tmp_path / f"step{stop}.ckpt"
        model, data = make()
        _trainer(tmp_path, callbacks=[StopAt(stop, ckpt)]).fit(model, datamodule=data)
        interrupted = {k: v.clone() for k, v in model.state_dict().items()}
        assert _states_equal(interrupted, reference), "the interrupted run must not have finished training"
        model, data = make()
        _trainer(tmp_path).fit(model, datamodule=data, ckpt_path=ckpt, weights_only=True)
        differ = _states_equal(model.state_dict(), reference)
        assert not differ, f"resumed after {stop} steps, {len(differ)} tensors differ from the uninterrupted run: {differ[:3]}"


def test_resume_before_the_fix_would_replay_the_first_epoch(tmp_path, one_thread):
    """The guard above can fail: a loader that forgets its position (every pass restarts epoch 0's order) resumes
    to different weights."""
    from hubtrain.data.loading import ResumableLoader

    model, data = _image_run()
    _trainer(tmp_path).fit(model, datamodule=data)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = tmp_path / "mid.ckpt"
    model, data = _image_run()
    _trainer(tmp_path, callbacks=[StopAt(BATCHES // 2, ckpt)]).fit(model, datamodule=data)
    original = ResumableLoader.load_state_dict
    try:
        ResumableLoader.load_state_dict = lambda self, state: None  # the position in the epoch is dropped
        model, data = _image_run()
        _trainer(tmp_path).fit(model, datamodule=data, ckpt_path=ckpt, weights_only=True)
    finally:
        ResumableLoader.load_state_dict = original
    assert _states_equal(model.state_dict(), reference)


def _weights_after(command: list[str], cwd) -> dict[str, torch.Tensor]:
    exe = str(__import__("pathlib").Path(sys.executable).parent / "hubtrain")
    result = subprocess.run([exe, *command], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    return load_file(cwd / command[command.index("--output-dir") + 1] / "model.safetensors")


@pytest.mark.parametrize("command", [
    ["quickstart", "--max-epochs", "1", "--seed", "3", "--output-dir", "out"],
    ["quickstart", "lm", "--fast", "--max-steps", "6", "--seed", "3", "--output-dir", "out"],
], ids=["quickstart", "quickstart-lm"])
def test_the_same_seed_gives_bit_identical_weights(command, tmp_path, monkeypatch):
    monkeypatch.setenv("HUBTRAIN_CACHE", str(tmp_path / "cache"))
    runs = []
    for i in range(2):
        (tmp_path / str(i)).mkdir()
        runs.append(_weights_after(command, tmp_path / str(i)))
    assert runs[0].keys() == runs[1].keys()
    assert not _states_equal(runs[0], runs[1])


def test_fit_with_seed_everything_is_reproducible(tmp_path):
    from pathlib import Path

    config = Path(__file__).resolve().parents[2] / "examples" / "configs" / "digits.yaml"
    checksums = []
    for i in range(2):
        root = tmp_path / str(i)
        root.mkdir()
        exe = str(Path(sys.executable).parent / "hubtrain")
        args = [exe, "fit", "--config", str(config), "--seed_everything", "7", "--trainer.max_epochs", "1",
                "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
                "--trainer.default_root_dir", str(root)]
        result = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-2000:]
        (ckpt,) = list(root.rglob("*.ckpt"))[:1]
        state = torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"]
        checksums.append({k: v for k, v in state.items()})
    assert not _states_equal(checksums[0], checksums[1])
