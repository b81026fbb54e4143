"""Data loaders whose batches depend only on (seed, epoch, position): what makes a resumed run bit-identical.

A plain ``DataLoader(shuffle=True, generator=...)`` draws each epoch's order from a generator that advances with
every epoch, and augmentations draw from the global random state; a run resumed from a checkpoint starts both
afresh, so it replays epoch 0's order and other crops. :func:`resumable_loader` fixes both:

- the order of epoch ``e`` is a permutation (or, with ``weights``, a weighted draw) from a generator seeded with
  ``(seed, e)``; Lightning tells the sampler the epoch (``set_epoch``);
- each sample is read under Python, NumPy and torch random states seeded with ``(seed, e, index)`` and restored
  afterwards, so augmentations are the same whatever ran before, and reading data leaves the global random
  state (which dropout uses) untouched;
- the loader has ``state_dict`` / ``load_state_dict``, which Lightning saves in every checkpoint and restores before
  iterating: a run resumed mid-epoch starts at the batch after the last one the checkpoint saw.
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, WeightedRandomSampler

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant (golden ratio): spreads consecutive seeds apart


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers, different for every tuple in practice (splitmix-style mixing)."""
    h = 0
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * _MIX & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block under Python, NumPy and torch (CPU) random states seeded with ``seed``; restore them after."""
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.random.default_generator.manual_seed(seed)  # the CPU generator only: a GPU's (dropout there) is left alone
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)


class _EpochOrder:
    """An epoch's indices, in an order that is a function of ``(seed, epoch)`` alone.

    Yields ``epoch * n + index`` (so the dataset wrapper knows the epoch, in worker processes too); ``start``
    skips that many positions of the next pass (set when resuming mid-epoch).
    """

    n: int
    seed: int
    epoch: int = 0
    start: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self) -> list[int]:
        raise NotImplementedError

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        base = self.epoch * self.n
        return iter([base + i for i in self.order()[start:]])


class EpochSampler(_EpochOrder, Sampler[int]):
    """A permutation per epoch (or the dataset's own order with ``shuffle=False``)."""

    def __init__(self, n: int, seed: int, *, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle = n, int(seed), shuffle

    def order(self) -> list[int]:
        return torch.randperm(self.n, generator=self.generator()).tolist() if self.shuffle else list(range(self.n))

    def __len__(self) -> int:
        return self.n


class EpochWeightedSampler(_EpochOrder, WeightedRandomSampler):
    """``WeightedRandomSampler`` (with replacement: class-balanced sampling) whose draws are seeded by (seed, epoch)."""

    def __init__(self, weights: Sequence[float], seed: int) -> None:
        WeightedRandomSampler.__init__(self, weights, num_samples=len(weights), replacement=True)
        self.n, self.seed = len(weights), int(seed)

    def order(self) -> list[int]:
        return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=self.generator()).tolist()


class EpochSeeded(Dataset):
    """``dataset[i]`` read under random states seeded with ``(seed, epoch, i)``, from the sampler's encoded index."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.n = dataset, int(seed), len(dataset)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: int) -> Any:
        epoch, index = divmod(int(key), self.n)
        with seeded(mix_seed(self.seed, epoch, index)):
            return self.dataset[index]

    def __getitems__(self, keys: Sequence[int]) -> list[Any]:  # the batched fetch DataLoader prefers
        return [self[k] for k in keys]

    def __getattr__(self, name: str) -> Any:  # labels, classes, ...: whatever the wrapped dataset offers
        if name.startswith("__") or name in ("dataset", "seed", "n"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over an :class:`EpochSampler` that Lightning checkpoints and resumes mid-epoch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches = 0  # batches handed out in the current pass
        self._resume: tuple[int, int] | None = None  # (epoch, batches) a checkpoint recorded

    @property
    def epoch_sampler(self) -> _EpochOrder | None:
        sampler = self.sampler
        return sampler if isinstance(sampler, _EpochOrder) else getattr(sampler, "sampler", None)

    def __iter__(self) -> Iterator[Any]:
        sampler = self.epoch_sampler
        resume, self._resume = self._resume, None
        # Lightning sets the sampler's epoch after restoring the state: the recorded one when the run stopped
        # mid-epoch (continue after its batches), the next one when it stopped at an epoch's end (start afresh)
        skip = resume[1] if resume is not None and sampler is not None and sampler.epoch == resume[0] else 0
        if skip:
            sampler.start = skip * (self.batch_size or 1)
        self._batches = skip
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        sampler = self.epoch_sampler
        return {"epoch": sampler.epoch if sampler is not None else 0, "batches": self._batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (int(state.get("epoch", 0)), int(state.get("batches", 0)))
        if self.epoch_sampler is not None:
            self.epoch_sampler.set_epoch(self._resume[0])


def resumable_loader(dataset: Dataset, *, batch_size: int, shuffle: bool, seed: int,
                     weights: Sequence[float] | None = None, **kwargs: Any) -> DataLoader:
    """A loader whose batches depend only on (seed, epoch, position): a :class:`ResumableLoader` over an
    :class:`EpochSampler`, samples read by :class:`EpochSeeded`. ``kwargs`` go to ``DataLoader``."""
    sampler = EpochSampler(len(dataset), seed, shuffle=shuffle) if weights is None else EpochWeightedSampler(weights, seed)
    # its own generator: DataLoader draws a base seed from it at every pass, which would otherwise advance the
    # global random state between a checkpoint and the batch after it
    generator = torch.Generator().manual_seed(mix_seed(seed, 1))
    return ResumableLoader(EpochSeeded(dataset, seed), batch_size=batch_size, sampler=sampler, generator=generator, **kwargs)


__all__ = ["EpochSampler", "EpochSeeded", "EpochWeightedSampler", "ResumableLoader", "mix_seed", "resumable_loader", "seeded"]
