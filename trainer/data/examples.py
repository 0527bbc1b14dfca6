"""The canonical rows of a dataset after reading and validation, split into train and validation."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Examples:
    train: list[dict]  # canonical rows
    validation: list[dict]
    skipped: list[str] = field(default_factory=list)  # "file:line: what is wrong" (on_error=skip)
    warnings: list[str] = field(default_factory=list)  # "N examples have no system message", ...
