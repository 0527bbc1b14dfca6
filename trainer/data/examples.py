"""The canonical rows of a dataset after reading and validation, split into train and validation."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Examples:
    #: Canonical rows: a list, or (from load_examples and the cache) trainer.data.rows.Rows: rows read back from disk
    #: on demand, which index, slice, iterate, add and compare like a read-only list (typed as one for its readers).
    train: list[dict]
    validation: list[dict]
    skipped: list[str] = field(default_factory=list)  # "file:line: what is wrong" (on_error=skip)
    warnings: list[str] = field(default_factory=list)  # "N examples have no system message", ...
