"""A resumed run sees the same data order as an uninterrupted one, for TRL's generating trainers.

GRPO and distillation draw their batches through TRL's ``RepeatSampler``, which shuffles with one seeded generator that
advances once per epoch and has no ``set_epoch``: a run resumed in epoch ``e`` starts the generator afresh and shuffles
epoch ``e`` the way epoch 0 was shuffled, so it trains on other batches than the run it resumes (a distillation run
killed after epoch 0 ended at another loss). :func:`resumable` gives the trainer class a sampler whose ``set_epoch``
(the Trainer calls it before each epoch) replays the generator to where an uninterrupted run has it: every epoch's
order is the uninterrupted run's, so seeded losses stay what they were.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochReplay(Sampler):
    """Wraps a shuffling RepeatSampler: ``set_epoch(e)`` reseeds its generator and draws the e permutations that
    the epochs before ``e`` used."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def set_epoch(self, epoch: int) -> None:
        generator = self.inner.generator
        generator.manual_seed(self.inner.seed)
        for _ in range(epoch):
            torch.randperm(self.inner.num_samples, generator=generator)

    def __iter__(self) -> Iterator[int]:
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)


class _ReplayEpochs:
    def _get_train_sampler(self, dataset=None):
        sampler = super()._get_train_sampler(dataset)  # type: ignore[misc]
        if getattr(sampler, "shuffle", False) and getattr(sampler, "seed", None) is not None:
            return EpochReplay(sampler)
        return sampler


def resumable(trainer_class: type) -> type:
    """``trainer_class`` (same name) whose shuffling RepeatSampler replays its epochs (see the module docstring)."""
    return type(trainer_class.__name__, (_ReplayEpochs, trainer_class), {"__module__": trainer_class.__module__})
