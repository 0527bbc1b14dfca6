"""Seeded, deterministic train/validation splits and weighted mixing of sources.

Identical rows are kept together, so a row never lands in both train and validation.
"""

from __future__ import annotations

import math
import random

from trainer.data.validate import canonical_key
from trainer.errors import UserError


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
    target = validation_count(size, len(rows))
    if target == 0:
        return list(range(len(rows))), []
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(canonical_key(row), []).append(i)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    validation: list[int] = []
    for group in order:
        if len(validation) >= target:
            break
        validation.extend(group)
    chosen = set(validation)
    if len(chosen) >= len(rows):
        raise UserError(
            f"dataset.validation_size={size}: every usable row is a copy of a validation row, "
            "leaving nothing to train on. Add data or lower validation_size."
        )
    return [i for i in range(len(rows)) if i not in chosen], sorted(validation)


def drop_overlap(train: list[dict], validation: list[dict]) -> tuple[list[dict], int]:
    """Training rows that also appear in the validation data are removed; returns (kept rows, removed count)."""
    seen = {canonical_key(r) for r in validation}
    kept = [r for r in train if canonical_key(r) not in seen]
    return kept, len(train) - len(kept)


def weighted(rows: list[dict], weight: float, seed: int) -> list[dict]:
    """Every row floor(weight) times, plus a seeded sample for the fractional part (1.0 = every row once)."""
    if weight < 0:
        raise UserError(
            f"a dataset weight of {weight} is negative; use 1.0 for every row once, 2.0 for twice, 0.5 for half."
        )
    whole, frac = int(math.floor(weight)), weight - math.floor(weight)
    out = rows * whole
    extra = round(frac * len(rows))
    if extra:
        picked = sorted(random.Random(seed).sample(range(len(rows)), extra))
        out += [rows[i] for i in picked]
    return out
