"""Tokenizers for language modelling: load any ``AutoTokenizer`` folder, or train a byte-level BPE.

A byte-level BPE (the GPT-2 recipe) has no unknown characters: every string round-trips exactly, which matters
for source code, where a lost space or tab changes the program. Training it is cheap with the ``tokenizers``
library, so we train one on the training split and cache it on disk, keyed by a hash of exactly what it was
trained on plus its vocabulary size: the same corpus never trains twice, a changed corpus never reuses a stale one.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from hubtrain.utils import atomic_dir

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)
# 256 byte symbols are the alphabet of a byte-level BPE; the special tokens come on top.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
_CACHE_FORMAT = "hubtrain-bytelevel-bpe-v1"


def default_cache_dir() -> Path:
    """``$HUBTRAIN_CACHE/tokenizers``, else ``~/.cache/hubtrain/tokenizers``."""
    root = os.environ.get("HUBTRAIN_CACHE") or Path.home() / ".cache" / "hubtrain"
    return Path(root) / "tokenizers"


def corpus_hash(texts: Iterable[str], vocab_size: int) -> str:
    """Content hash of the training texts (order included) and the vocabulary size."""
    h = hashlib.sha256(f"{_CACHE_FORMAT}\0{vocab_size}\0".encode())
    for text in texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:24]


def _wrap(tokenizer_object, model_max_length: int | None = None) -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        # Source code must round-trip: never "clean up" spaces before punctuation when decoding.
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length or int(1e30),
    )
    return tok


def train_bpe_tokenizer(texts: Sequence[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``.

    bos, eos and unk are ``<|endoftext|>`` (as in GPT-2; byte-level BPE never needs unk), pad is ``<|pad|>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for a byte-level BPE: it needs the 256 byte symbols plus "
            f"{len(SPECIAL_TOKENS)} special tokens; use vocab_size >= {MIN_VOCAB_SIZE}."
        )
    if not any(texts):
        raise ValueError("cannot train a tokenizer on an empty corpus: give at least one non-empty document.")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return _wrap(bpe)


def get_bpe_tokenizer(
    texts: Sequence[str], vocab_size: int = 4096, cache_dir: str | os.PathLike | None = None
) -> PreTrainedTokenizerFast:
    """The byte-level BPE for ``texts``: loaded from the cache when this exact corpus was seen, else trained and cached."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = folder / f"bpe-{vocab_size}-{corpus_hash(texts, vocab_size)}"
    if (folder / "tokenizer.json").is_file():
        return load_tokenizer(folder)
    tok = train_bpe_tokenizer(texts, vocab_size)
    with atomic_dir(folder) as tmp:
        tok.save_pretrained(tmp)
    # Reload from the final folder so ``name_or_path`` points at a folder that exists (checkpoints store it).
    return load_tokenizer(folder)


def load_tokenizer(name_or_path: str | os.PathLike | PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Any tokenizer ``AutoTokenizer`` can load (a local folder, or a cached Hub repo id), ready for packing.

    Packing needs an end-of-text token to separate documents, and batching a pad token: a tokenizer without
    eos is refused; a missing pad token falls back to eos (the usual choice for causal LMs).
    """
    if isinstance(name_or_path, PreTrainedTokenizerBase):
        tok = name_or_path
    else:
        from hubtrain.artifacts import resolve_folder
        from hubtrain.models import register_all

        folder = resolve_folder(name_or_path)  # a folder, or a Hub repo's snapshot: the cache first, offline-safe
        if not folder.is_dir():
            raise ValueError(f"tokenizer={str(name_or_path)!r} is a file; pass the folder that holds tokenizer.json.")
        register_all()  # a folder of one of hubtrain's models names its model_type; AutoTokenizer must know it
        # data, not code: a tokenizer folder that ships its own tokenizer class is refused, never run
        tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    if tok.eos_token_id is None:
        raise ValueError(
            f"tokenizer {tok.name_or_path!r} has no eos token, which separates packed documents; "
            "set one (tokenizer.eos_token = ...) or let hubtrain train a BPE (tokenizer=None)."
        )
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
