"""``TextDataModule``: documents -> tokenizer -> one token stream per split -> fixed-length blocks.

Language models train on packed blocks (the GPT-2 / nanoGPT recipe): documents are tokenized, joined with the
tokenizer's end-of-text token between them, and the stream is cut into ``block_size`` tokens. Every block is full,
so no compute goes to padding, and the model learns where documents end. Labels equal the inputs; the
``transformers`` causal LMs shift them inside their loss.

Documents are split into train / validation / test *before* tokenizing, by whole documents (files of the built-in
corpus) with a fixed seed, so validation text is never seen in training, not even by the tokenizer, which is
trained on the training split only.

Sources (``data_files``: a path, a glob, or a list of them):

- text files (``.txt .py .md .rst ...``) and folders of them: one document per file;
- ``.jsonl`` / ``.json`` lines and ``.parquet`` files: one document per record, its ``text_field``;
- a folder written by ``datasets.Dataset.save_to_disk`` (or a ``DatasetDict``: its splits are used as given);
- nothing: the built-in corpus ``dataset_name="python_stdlib"``, the ``.py`` sources of the running interpreter's
  standard library (real text, present on every machine, no download). ``max_files`` / ``max_bytes`` cap it for
  demos and tests.
"""
from __future__ import annotations

import glob as globlib
import json
import os
import random
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase

from hubtrain.data.loading import resumable_loader
from hubtrain.data.tokenizer import get_bpe_tokenizer, load_tokenizer

TEXT_SUFFIXES = (".txt", ".py", ".md", ".rst", ".text", ".c", ".h", ".js", ".ts", ".java", ".go", ".rs", ".tex")
RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")
BUILTIN_DATASETS = ("python_stdlib",)
# Test suites of the standard library are large, repetitive and partly generated; skip them.
_STDLIB_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


@dataclass(frozen=True)
class Document:
    name: str  # where it came from (a path, or "path:row"), for error messages and split bookkeeping
    text: str


def stdlib_files(max_files: int | None = None) -> list[Path]:
    """The standard library's ``.py`` files, sorted, test folders skipped."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _STDLIB_SKIP_DIRS]  # prune: site-packages alone is huge
        files.extend(Path(folder) / n for n in names if n.endswith(".py"))
    files.sort()
    return files[:max_files] if max_files is not None else files


def _read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not valid UTF-8 ({err.reason} at byte {err.start}); re-encode it as UTF-8 or leave it out "
            "of data_files."
        ) from None


def _expand(data_files: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Paths, globs and folders -> a sorted list of files (folders saved by ``datasets`` are kept whole)."""
    entries = [data_files] if isinstance(data_files, (str, os.PathLike)) else list(data_files)
    if not entries:
        raise ValueError("data_files is an empty list; give a file, a folder or a glob such as 'corpus/**/*.txt'.")
    out: list[Path] = []
    for entry in entries:
        entry = os.fspath(entry)
        if any(ch in entry for ch in "*?["):
            matches = sorted(Path(m) for m in globlib.glob(entry, recursive=True) if Path(m).is_file())
            if not matches:
                raise FileNotFoundError(f"data_files glob {entry!r} matches no file; check the pattern and folder.")
            out.extend(matches)
            continue
        path = Path(entry).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"data_files entry {entry!r} does not exist; give an existing file or folder.")
        if path.is_dir() and not _is_saved_dataset(path):
            out.extend(
                p for p in sorted(path.rglob("*"))
                if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES + RECORD_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        else:
            out.append(path)
    return out


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file() or (
        path / "state.json"
    ).is_file()


def _records_to_docs(rows, text_field: str, source: str) -> list[Document]:
    docs = []
    for i, row in enumerate(rows):
        if text_field not in row:
            raise ValueError(
                f"{source} row {i} has no field {text_field!r} (fields: {sorted(row)}); set text_field= to the "
                "column that holds the text."
            )
        text = row[text_field]
        if not isinstance(text, str):
            raise ValueError(f"{source} row {i}: field {text_field!r} is {type(text).__name__}, not text.")
        docs.append(Document(f"{source}:{i}", text))
    return docs


def _load_file(path: Path, text_field: str) -> list[Document]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl" or suffix == ".json":
        text = _read_text_file(path)
        stripped = text.lstrip()
        if suffix == ".json" and stripped.startswith("["):
            rows = json.loads(text)
        else:
            rows = []
            for lineno, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{lineno} is not valid JSON ({err.msg}); one JSON object per line.") from None
        return _records_to_docs(rows, text_field, str(path))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return _records_to_docs(pq.read_table(path).to_pylist(), text_field, str(path))
    return [Document(str(path), _read_text_file(path))]


def _load_saved_dataset(path: Path, text_field: str) -> dict[str, list[Document]] | list[Document]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        return {split: _records_to_docs(d, text_field, f"{path}[{split}]") for split, d in ds.items()}
    return _records_to_docs(ds, text_field, str(path))


class PackedBlocks(Dataset):
    """A token stream cut into ``(num_blocks, block_size)``; the remainder shorter than a block is dropped."""

    def __init__(self, tokens: torch.Tensor, block_size: int):
        n = tokens.numel() // block_size
        self.blocks = tokens[: n * block_size].view(n, block_size)

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        block = self.blocks[i]
        return {"input_ids": block, "labels": block}


class TextDataModule(pl.LightningDataModule):
    """Packed causal-LM blocks from local text, records or the built-in Python-stdlib corpus.

    Args:
        data_files: a file, folder, glob or list of them; ``None`` uses ``dataset_name``.
        dataset_name: built-in corpus used when ``data_files`` is None (``"python_stdlib"``).
        text_field: the text column of JSONL / parquet / ``datasets`` records.
        tokenizer: a ``PreTrainedTokenizerBase``, a folder / cached repo id for ``AutoTokenizer``, or ``None`` to
            train a byte-level BPE of ``vocab_size`` on the training split (cached under ``tokenizer_cache_dir``).
        block_size: tokens per training example.
        val_fraction, test_fraction: share of documents held out, chosen with ``seed``.
        max_files, max_bytes: keep only the first files / bytes of the corpus (in sorted order) for quick runs.
    """

    def __init__(
        self,
        data_files: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        dataset_name: str = "python_stdlib",
        text_field: str = "text",
        tokenizer: str | os.PathLike | PreTrainedTokenizerBase | None = None,
        vocab_size: int = 4096,
        block_size: int = 256,
        batch_size: int = 16,
        num_workers: int = 0,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        seed: int = 0,
        max_files: int | None = None,
        max_bytes: int | None = None,
        tokenizer_cache_dir: str | os.PathLike | None = None,
    ):
        super().__init__()
        if data_files is None and dataset_name not in BUILTIN_DATASETS:
            raise ValueError(
                f"dataset_name={dataset_name!r} is not a built-in corpus ({', '.join(BUILTIN_DATASETS)}); "
                "pass data_files= for your own text."
            )
        for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= frac < 1.0:
                raise ValueError(f"{name}={frac} must be in [0, 1).")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves no training data.")
        if block_size < 2:
            raise ValueError(f"block_size={block_size} must be at least 2 tokens.")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1.")
        self.data_files = data_files
        self.dataset_name = dataset_name
        self.text_field = text_field
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.tokenizer_cache_dir = tokenizer_cache_dir
        self._tokenizer_arg = tokenizer
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.documents: dict[str, list[Document]] | None = None
        self.datasets: dict[str, PackedBlocks] = {}
        self.num_tokens: dict[str, int] = {}
        self.num_bytes: dict[str, int] = {}
        # JSON-friendly (paths as strings) so checkpoints load with weights_only=True. The task records the
        # tokenizer it uses; a second "tokenizer" hparam here would clash with it when Lightning merges them.
        self.save_hyperparameters(
            {
                "data_files": _jsonable_paths(data_files),
                "dataset_name": dataset_name,
                "text_field": text_field,
                "vocab_size": vocab_size,
                "block_size": block_size,
                "batch_size": batch_size,
                "num_workers": num_workers,
                "val_fraction": val_fraction,
                "test_fraction": test_fraction,
                "seed": seed,
                "max_files": max_files,
                "max_bytes": max_bytes,
                "tokenizer_cache_dir": _jsonable_paths(tokenizer_cache_dir),
            }
        )

    # -- documents -------------------------------------------------------------------------------------------
    def load_documents(self) -> list[Document] | dict[str, list[Document]]:
        """All documents of the corpus, in a fixed order (or already split, for a saved ``DatasetDict``)."""
        if self.data_files is None:
            docs = [Document(str(p), _read_text_file(p)) for p in stdlib_files(self.max_files)]
        else:
            docs = []
            for path in _expand(self.data_files):
                if path.is_dir():
                    loaded = _load_saved_dataset(path, self.text_field)
                    if isinstance(loaded, dict):
                        if len(_expand(self.data_files)) > 1:
                            raise ValueError(f"{path} is a DatasetDict with its own splits; pass it alone as data_files.")
                        return {k: self._cap(v) for k, v in loaded.items()}
                    docs.extend(loaded)
                else:
                    docs.extend(_load_file(path, self.text_field))
            if self.max_files is not None:
                docs = docs[: self.max_files]
        docs = self._cap(docs)
        if not any(d.text for d in docs):
            where = self.data_files if self.data_files is not None else self.dataset_name
            raise ValueError(f"the corpus {where!r} is empty (no non-empty documents); point data_files at text.")
        return docs

    def _cap(self, docs: list[Document]) -> list[Document]:
        if self.max_bytes is None:
            return docs
        kept, total = [], 0
        for doc in docs:
            if total >= self.max_bytes:
                break
            kept.append(doc)
            total += len(doc.text.encode("utf-8"))
        return kept

    def split_documents(self, docs: list[Document] | dict[str, list[Document]]) -> dict[str, list[Document]]:
        """Whole documents to train / val / test with ``seed``; a saved ``DatasetDict`` keeps its own splits."""
        if isinstance(docs, dict):
            aliases = {"train": "train", "validation": "val", "valid": "val", "val": "val", "test": "test"}
            out = {aliases[k]: v for k, v in docs.items() if k in aliases}
            if "train" not in out:
                raise ValueError(f"the DatasetDict has splits {sorted(docs)}; it needs a 'train' split.")
            return {"train": out["train"], "val": out.get("val", []), "test": out.get("test", [])}
        order = list(range(len(docs)))
        random.Random(self.seed).shuffle(order)
        n_val = _count(self.val_fraction, len(docs))
        n_test = _count(self.test_fraction, len(docs))
        if n_val + n_test >= len(docs):
            raise ValueError(
                f"{len(docs)} document(s) cannot be split into train/val/test by document "
                f"(val_fraction={self.val_fraction}, test_fraction={self.test_fraction}); add more files or "
                "set val_fraction=0 and test_fraction=0."
            )
        pick = lambda idx: [docs[i] for i in sorted(idx)]  # noqa: E731  (keep corpus order inside a split)
        return {
            "val": pick(order[:n_val]),
            "test": pick(order[n_val : n_val + n_test]),
            "train": pick(order[n_val + n_test :]),
        }

    # -- tokenizer and packing -------------------------------------------------------------------------------
    def _get_tokenizer(self, train_docs: list[Document]) -> PreTrainedTokenizerBase:
        if self._tokenizer_arg is not None:
            return load_tokenizer(self._tokenizer_arg)
        return get_bpe_tokenizer([d.text for d in train_docs], self.vocab_size, self.tokenizer_cache_dir)

    def tokenize(self, docs: list[Document]) -> torch.Tensor:
        """The documents' tokens joined by eos: ``doc_1 <eos> doc_2 <eos> ...`` as one int64 tensor."""
        eos = self.tokenizer.eos_token_id
        ids = self.tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"] if docs else []
        stream: list[int] = []
        for seq in ids:
            stream.extend(seq)
            stream.append(eos)
        return torch.tensor(stream, dtype=torch.long)

    def prepare_data(self) -> None:
        # Runs on one process first, so a tokenizer is trained (and cached) once, not by every DDP rank.
        if self._tokenizer_arg is None:
            self._get_tokenizer(self.split_documents(self.load_documents())["train"])

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        splits = self.split_documents(self.load_documents())
        self.documents = splits
        self.tokenizer = self._get_tokenizer(splits["train"])
        for split, docs in splits.items():
            tokens = self.tokenize(docs)
            self.num_tokens[split] = tokens.numel()
            self.num_bytes[split] = sum(len(d.text.encode("utf-8")) for d in docs)
            if not docs:
                continue
            if tokens.numel() < self.block_size:
                raise ValueError(
                    f"the {split} split has {tokens.numel()} tokens, fewer than block_size={self.block_size}; "
                    f"use block_size <= {tokens.numel()}, more data, or a larger "
                    f"{'val_fraction' if split == 'val' else 'test_fraction' if split == 'test' else 'corpus'}."
                )
            self.datasets[split] = PackedBlocks(tokens, self.block_size)

    @property
    def bytes_per_token(self) -> dict[str, float]:
        """UTF-8 bytes per token of each split: turns a loss in nats/token into bits/byte."""
        return {k: self.num_bytes[k] / self.num_tokens[k] for k in self.num_tokens if self.num_tokens[k]}

    # -- loaders -----------------------------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup()
        if split not in self.datasets:
            raise ValueError(f"there is no {split} split; set {split}_fraction > 0 or give a DatasetDict with it.")
        common = dict(batch_size=self.batch_size, num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
        if shuffle:  # the order of every epoch depends on (seed, epoch) only: a resumed run is bit-identical
            return resumable_loader(self.datasets[split], shuffle=True, seed=self.seed, **common)
        return DataLoader(self.datasets[split], shuffle=False, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if not self.datasets:
            self.setup()
        if "val" not in self.datasets and self.val_fraction == 0:
            return []  # validation switched off on purpose: Lightning skips the loop when given no loaders
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def _jsonable_paths(value):
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return [os.fspath(v) for v in value]


def _count(fraction: float, n: int) -> int:
    """Documents for a held-out split: at least one whenever the fraction is positive."""
    return 0 if fraction <= 0 else max(1, round(fraction * n))
