"""The artefact room: checkpoints read as data, and cards built without a push."""
from __future__ import annotations

import pytest
import torch

from checks import front_matter
from hubtrain.artifacts import create_model_card, load_checkpoint
from hubtrain.hub import upload_model_to_hub


class NotATensor:
    """Pickling this would run code on load; weights_only=True must refuse it."""


def test_checkpoints_are_read_safely(tmp_path, resnet_bk):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*missing.pt"):
        load_checkpoint(tmp_path / "missing.pt", model_size="1M")
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*cut.pt"):
        load_checkpoint(tmp_path / "cut.pt", model_size="1M")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "evil": NotATensor()}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="not a weights-only PyTorch checkpoint"):
        load_checkpoint(tmp_path / "pickled.pt", model_size="1M")
    (tmp_path / "weights.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match="corrupt safetensors"):
        load_checkpoint(tmp_path / "weights.safetensors", model_size="1M")
    torch.save(resnet_bk.state_dict(), tmp_path / "anonymous.pt")
    with pytest.raises(ValueError, match="cannot tell which model"):
        load_checkpoint(tmp_path / "anonymous.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        upload_model_to_hub(tmp_path / "nothing.ckpt", "alice/x", token="hf_x")


def test_model_card_without_push(classifier, tmp_path):
    card = create_model_card(classifier, "alice/card-only", output_dir=tmp_path)
    meta = front_matter(str(card))
    assert meta["pipeline_tag"] == "image-classification" and "model-index" not in meta  # no metrics, no results
    assert (tmp_path / "README.md").read_text() == str(card)
    with pytest.raises(ValueError, match="repo_id must look like 'namespace/name'"):
        create_model_card(classifier, "no-namespace")


def test_saved_folders_have_the_permissions_of_a_plain_write(classifier, tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        folder = classifier.save_pretrained(tmp_path / "model")
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    for name in ("model.safetensors", "config.json", "README.md"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o644, name  # mkstemp's 0600 would hide it from others


def test_a_save_that_fails_midway_leaves_the_old_folder_whole(classifier, tmp_path, monkeypatch):
    import hubtrain.artifacts as artifacts

    folder = classifier.save_pretrained(tmp_path / "model")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with torch.no_grad():
        changed = type(classifier).from_pretrained(folder)
        changed.head[1].bias.add_(1.0)

    def crash(*args, **kwargs):
        raise OSError("disk full while writing the card")

    monkeypatch.setattr(artifacts, "write_card", crash)
    with pytest.raises(OSError, match="disk full"):
        changed.save_pretrained(folder)
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert after == before  # the new weights never sat beside the old config
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
