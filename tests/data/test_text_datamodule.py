"""TextDataModule: packing, splits by document, determinism, every source format, and the bad-input errors."""
from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest
import torch

from hubtrain.data.text import TextDataModule, stdlib_files

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def _write_corpus(folder: Path, n: int = 12) -> list[Path]:
    """n small real source files (distinct stdlib modules), so every split has several documents."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = [p for p in sorted(STDLIB.glob("*.py")) if 2_000 < p.stat().st_size < 12_000][:n]
    assert len(sources) == n
    out = []
    for i, src in enumerate(sources):
        dst = folder / f"{i:02d}_{src.name}"
        dst.write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
        out.append(dst)
    return out


@pytest.fixture
def corpus_dir(tmp_path) -> Path:
    _write_corpus(tmp_path / "corpus")
    return tmp_path / "corpus"


def _dm(data_files, tmp_path, **kwargs) -> TextDataModule:
    kwargs = {"vocab_size": 300, "block_size": 32, "batch_size": 4, "val_fraction": 0.2, "test_fraction": 0.2, **kwargs}
    return TextDataModule(data_files, tokenizer_cache_dir=tmp_path / "tok", **kwargs)


def test_blocks_are_the_documents_joined_by_eos(corpus_dir, tmp_path):
    dm = _dm(corpus_dir, tmp_path)
    dm.setup()
    tok = dm.tokenizer
    for split in ("train", "val", "test"):
        docs = dm.documents[split]
        blocks = dm.datasets[split].blocks
        assert blocks.shape[1] == 32
        # Independent reference: the text that the packed stream must decode to, eos between documents.
        expected = "".join(d.text + tok.eos_token for d in docs)
        stream = dm.tokenize(docs)
        assert tok.decode(stream.tolist()) == expected
        n = blocks.numel()
        assert torch.equal(blocks.flatten(), stream[:n]) and 0 <= stream.numel() - n < 32
        item = dm.datasets[split][0]
        assert torch.equal(item["input_ids"], item["labels"]) and torch.equal(item["input_ids"], blocks[0])


def test_split_by_document_is_seeded(corpus_dir, tmp_path):
    names = lambda dm: {k: [d.name for d in v] for k, v in dm.documents.items()}  # noqa: E731
    a, b, c = _dm(corpus_dir, tmp_path), _dm(corpus_dir, tmp_path), _dm(corpus_dir, tmp_path, seed=1)
    for dm in (a, b, c):
        dm.setup()
    sa = names(a)
    assert sa == names(b)
    assert sa != names(c)
    every = sa["train"] + sa["val"] + sa["test"]
    assert sorted(every) == sorted(str(p) for p in corpus_dir.iterdir()) and len(set(every)) == 12
    assert len(sa["val"]) == len(sa["test"]) == round(0.2 * 12)
    # The tokenizer is trained on training documents only: the same train split reuses the same cached tokenizer.
    assert a.tokenizer.name_or_path == b.tokenizer.name_or_path


def test_loaders_shuffle_train_with_seed_and_keep_eval_order(corpus_dir, tmp_path):
    a, b = _dm(corpus_dir, tmp_path), _dm(corpus_dir, tmp_path)
    for dm in (a, b):
        dm.setup()
    first = lambda loader: [batch["input_ids"] for batch in loader]  # noqa: E731
    ta, tb = first(a.train_dataloader()), first(b.train_dataloader())
    assert all(torch.equal(x, y) for x, y in zip(ta, tb))
    # Shuffled: the first batch is not simply the first blocks in stream order.
    assert not torch.equal(ta[0], a.datasets["train"].blocks[: len(ta[0])])
    val = torch.cat(first(a.val_dataloader()))
    assert torch.equal(val, a.datasets["val"].blocks)
    assert torch.equal(val, torch.cat(first(a.val_dataloader())))


def test_builtin_stdlib_corpus(tmp_path):
    files = stdlib_files()
    assert len(files) > 300 and not any("test" in p.relative_to(STDLIB).parts[:-1] for p in files)
    dm = TextDataModule(max_files=20, vocab_size=300, block_size=64, tokenizer_cache_dir=tmp_path, val_fraction=0.1, test_fraction=0.1)
    dm.setup()
    assert sum(len(v) for v in dm.documents.values()) == 20
    assert {d.name for d in dm.documents["train"]} <= {str(p) for p in files[:20]}
    assert len(dm.train_dataloader()) > 0 and 1.1 < dm.bytes_per_token["val"] < 6.0  # merges happened


def test_jsonl_parquet_and_saved_dataset(tmp_path):
    import datasets

    texts = [p.read_text(encoding="utf-8") for p in _write_corpus(tmp_path / "src", 10)]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"body": t, "id": i}) for i, t in enumerate(texts)))
    datasets.Dataset.from_dict({"body": texts}).to_parquet(str(tmp_path / "c.parquet"))
    datasets.Dataset.from_dict({"body": texts}).save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"body": texts[:8]}), "validation": datasets.Dataset.from_dict({"body": texts[8:]})}
    ).save_to_disk(str(tmp_path / "saved_dict"))
    streams = {}
    for source in ("c.jsonl", "c.parquet", "saved"):
        dm = _dm(tmp_path / source, tmp_path, text_field="body")
        dm.setup()
        assert sorted(d.text for v in dm.documents.values() for d in v) == sorted(texts)
        streams[source] = dm.datasets["train"].blocks
    # Same records and seed -> the same split and the same blocks, whatever the file format.
    assert torch.equal(streams["c.jsonl"], streams["c.parquet"]) and torch.equal(streams["c.jsonl"], streams["saved"])
    dm = _dm(tmp_path / "saved_dict", tmp_path, text_field="body")
    dm.setup()
    assert [d.text for d in dm.documents["val"]] == texts[8:] and "test" not in dm.datasets


def test_glob_and_list_of_files(corpus_dir, tmp_path):
    (corpus_dir / "notes.md").write_text("# notes\n" * 50)
    dm = _dm(str(corpus_dir / "*.py"), tmp_path)
    dm.setup()
    assert all(d.name.endswith(".py") for v in dm.documents.values() for d in v)
    files = sorted(corpus_dir.glob("*.py"))[:6]
    dm = _dm(files, tmp_path, val_fraction=0.2, test_fraction=0.0)
    dm.setup()
    assert sum(len(v) for v in dm.documents.values()) == 6


def test_bad_inputs(tmp_path, corpus_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    (empty / "b.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        _dm(empty, tmp_path).setup()

    bad = tmp_path / "bad"
    _write_corpus(bad, 4)
    (bad / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt is not valid UTF-8"):
        _dm(bad, tmp_path).setup()

    with pytest.raises(ValueError, match=r"fewer than block_size=100000; use block_size <= \d+"):
        _dm(corpus_dir, tmp_path, block_size=100_000).setup()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _dm(tmp_path / "nowhere", tmp_path).setup()
    with pytest.raises(FileNotFoundError, match="matches no file"):
        _dm(str(tmp_path / "nowhere" / "*.txt"), tmp_path).setup()
    (tmp_path / "x.jsonl").write_text(json.dumps({"content": "hi"}) + "\n")
    with pytest.raises(ValueError, match="has no field 'text'.*text_field="):
        _dm(tmp_path / "x.jsonl", tmp_path).setup()
    with pytest.raises(ValueError, match="cannot be split"):
        _dm(sorted(corpus_dir.iterdir())[:1], tmp_path).setup()
    with pytest.raises(ValueError, match="not a built-in corpus"):
        TextDataModule(dataset_name="wikitext")
    with pytest.raises(ValueError, match="leaves no training data"):
        TextDataModule(val_fraction=0.5, test_fraction=0.5)
