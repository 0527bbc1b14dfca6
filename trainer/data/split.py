"""Seeded, deterministic train/validation splits and weighted mixing of sources.

Identical rows are kept together, so a row never lands in both train and validation.
"""

from __future__ import annotations

import math
import random

import numpy as np

from trainer.config.errors import UserError
from trainer.data.validate import canonical_key, row_key


def validation_count(size: float, n: int) -> int:
    """validation_size as a row count: a fraction (< 1) of the n rows, or a count (>= 1)."""
    if size < 0:
        raise UserError(f"dataset.validation_size={size} is negative; use a fraction (0.1) or a row count (50).")
    if size == 0:
        return 0
    count = max(1, round(size * n)) if size < 1 else int(size)
    if size >= 1 and size != int(size):
        raise UserError(f"dataset.validation_size={size}: a value >= 1 is a row count and must be whole.")
    if count >= n:
        raise UserError(
            f"dataset.validation_size={size} asks for {count} validation rows but the data has only {n} "
            "usable rows, leaving nothing to train on. Lower validation_size or add data."
        )
    return count


def split_indices(rows: list[dict], size: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, validation indices), both in file order; identical rows fall on the same side."""
    keys = np.asarray([row_key(r) for r in rows], dtype=np.uint64)
    train, validation = split_keys(keys, size, seed)
    return train.tolist(), validation.tolist()


def split_keys(keys: np.ndarray, size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`split_indices` over the rows' key hashes (:func:`trainer.data.validate.row_key`): whole groups of
    equal rows are drawn, in a seeded random order, until the validation share is reached."""
    n = len(keys)
    target = validation_count(size, n)
    if target == 0:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    _, first, group = np.unique(keys, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)  # groups numbered in file order of their first row
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    group = rank[group.reshape(-1)]
    sizes = np.bincount(group, minlength=len(first))
    order = np.random.default_rng(seed).permutation(len(first))
    taken = int(np.searchsorted(np.cumsum(sizes[order]), target)) + 1  # groups until the target is reached
    chosen = np.zeros(len(first), dtype=bool)
    chosen[order[:taken]] = True
    in_validation = chosen[group]
    if in_validation.all():
        raise UserError(
            f"dataset.validation_size={size}: every usable row is a copy of a validation row, "
            "leaving nothing to train on. Add data or lower validation_size."
        )
    return np.flatnonzero(~in_validation), np.flatnonzero(in_validation)


def drop_overlap(train: list[dict], validation: list[dict]) -> tuple[list[dict], int]:
    """Training rows that also appear in the validation data are removed; returns (kept rows, removed count)."""
    seen = {canonical_key(r) for r in validation}
    kept = [r for r in train if canonical_key(r) not in seen]
    return kept, len(train) - len(kept)


def weighted_indices(n: int, weight: float, seed: int) -> np.ndarray:
    """:func:`weighted` as indices into the n rows."""
    if weight < 0:
        raise UserError(
            f"a dataset weight of {weight} is negative; use 1.0 for every row once, 2.0 for twice, 0.5 for half."
        )
    whole, frac = int(math.floor(weight)), weight - math.floor(weight)
    out = np.tile(np.arange(n, dtype=np.int64), whole)
    extra = round(frac * n)
    if extra:
        picked = np.asarray(sorted(random.Random(seed).sample(range(n), extra)), dtype=np.int64)
        out = np.concatenate([out, picked])
    return out


def weighted(rows: list[dict], weight: float, seed: int) -> list[dict]:
    """Every row floor(weight) times, plus a seeded sample for the fractional part (1.0 = every row once)."""
    return [rows[i] for i in weighted_indices(len(rows), weight, seed).tolist()]
