"""Byte-level BPE: exact round trips on source code, save/load, and the content-hash cache."""
from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from hubtrain.data import tokenizer as tokmod
from hubtrain.data.tokenizer import EOS_TOKEN, PAD_TOKEN, get_bpe_tokenizer, load_tokenizer, train_bpe_tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])
# Real source with what breaks lossy tokenizers: tabs, trailing spaces, blank runs, non-ASCII, emoji, CRLF.
TRICKY = "def f(x):\n\tif x  :\n        return 'é€ — 😀'   \n\n\n\r\n    pass  # ü  ,  .\n"


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return [(STDLIB / name).read_text(encoding="utf-8") for name in ("textwrap.py", "fnmatch.py", "bisect.py")]


def test_round_trip_is_exact_on_python_source(corpus, tmp_path):
    tok = get_bpe_tokenizer(corpus, vocab_size=400, cache_dir=tmp_path)
    assert len(tok) == 400
    unseen = (STDLIB / "keyword.py").read_text(encoding="utf-8")  # not in the training texts
    for text in (unseen, TRICKY, corpus[0]):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    # BPE actually merged something: fewer tokens than UTF-8 bytes on code it was trained on.
    assert len(tok(corpus[0])["input_ids"]) < 0.6 * len(corpus[0].encode())


def test_special_tokens_and_save_load(corpus, tmp_path):
    tok = get_bpe_tokenizer(corpus, vocab_size=300, cache_dir=tmp_path / "cache")
    assert tok.eos_token == tok.bos_token == tok.unk_token == EOS_TOKEN
    assert tok.pad_token == PAD_TOKEN and tok.pad_token_id != tok.eos_token_id
    tok.save_pretrained(tmp_path / "saved")
    again = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert again(TRICKY)["input_ids"] == tok(TRICKY)["input_ids"]
    assert again.decode(again(TRICKY)["input_ids"]) == TRICKY
    assert (again.eos_token_id, again.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)


def test_cache_is_keyed_by_content_and_vocab(corpus, tmp_path, monkeypatch):
    first = get_bpe_tokenizer(corpus, vocab_size=300, cache_dir=tmp_path)
    folder = Path(first.name_or_path)
    assert folder.parent == tmp_path and (folder / "tokenizer.json").is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("the cached tokenizer should have been reused")

    monkeypatch.setattr(tokmod, "train_bpe_tokenizer", no_training)
    assert Path(get_bpe_tokenizer(corpus, vocab_size=300, cache_dir=tmp_path).name_or_path) == folder
    monkeypatch.undo()
    # A changed corpus or vocabulary size trains a new tokenizer in a new folder.
    changed = get_bpe_tokenizer(corpus[:2] + [corpus[2] + "\n# edited\n"], vocab_size=300, cache_dir=tmp_path)
    bigger = get_bpe_tokenizer(corpus, vocab_size=320, cache_dir=tmp_path)
    assert len({folder, Path(changed.name_or_path), Path(bigger.name_or_path)}) == 3


def test_bad_inputs(corpus, tmp_path):
    with pytest.raises(ValueError, match="vocab_size=100 .* use vocab_size >= 258"):
        train_bpe_tokenizer(corpus, vocab_size=100)
    with pytest.raises(ValueError, match="empty corpus"):
        train_bpe_tokenizer(["", ""], vocab_size=300)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="is a file"):
        load_tokenizer(tmp_path / "tokenizer.json")
