"""Validation: every row read, normalised and checked; every bad row reported as ``file:line: what is wrong``.

Nothing is dropped silently: a row is either used, or listed (``on_error: skip``), or the run stops with the full
list (``on_error: fail``, the default).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.config.errors import UserError
from trainer.config.schema import SourceSchema
from trainer.data.formats import Invalid, make_normaliser
from trainer.data.read import Bad, read_records

ON_ERROR = ("fail", "skip")
SHOWN = 20


@dataclass
class Loaded:
    """The usable rows of one source (canonical form, kept in a spool on disk: :mod:`trainer.data.rows`), small
    per-row numbers about them, and what was wrong with the rest."""

    #: Each usable row's index in the spool.
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: Each usable row's position among all the source's records (0-based, bad records counted), for row ranges.
    positions: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: A 64-bit hash of each row's canonical key (equal rows, equal hashes): splits and duplicate counts.
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    #: Per row: CHAT (a chat row), NO_SYSTEM, NO_USER bits, for the warnings.
    flags: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))
    bad: list[str] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)
    store: Any = None  # the spool's Store once it is closed

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, mask_or_index: np.ndarray) -> Loaded:
        """The rows selected by a boolean mask or an index array (same bad rows and counters)."""
        return Loaded(
            self.ids[mask_or_index],
            self.positions[mask_or_index],
            self.keys[mask_or_index],
            self.flags[mask_or_index],
            self.bad,
            self.ignored,
            self.store,
        )

    @property
    def rows(self):
        from trainer.data.rows import Rows

        return Rows(self.store, self.ids)


CHAT, NO_SYSTEM, NO_USER = 1, 2, 4


def row_key(row: dict) -> int:
    """A 64-bit hash of the row's canonical key (the same for equal rows in every process)."""
    return int.from_bytes(hashlib.blake2b(canonical_key(row).encode(), digest_size=8).digest(), "little")


def row_flags(row: dict) -> int:
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        return 0
    flags = CHAT
    if messages[0]["role"] != "system":
        flags |= NO_SYSTEM
    if not any(m["role"] == "user" for m in messages):
        flags |= NO_USER
    return flags


def load_source(source: SourceSchema, path: str | None = None, split: str | None = None, spool=None) -> Loaded:
    """Read and normalise every row of one source into ``spool`` (a temporary one when not given: the rows are then
    in ``Loaded.store``); ``path``/``split`` override the source's own."""
    from trainer.data.rows import Spool

    own = spool is None
    if own:
        folder = tempfile.mkdtemp(prefix="hydratune-rows-")
        spool = Spool(Path(folder) / "rows.arrow")
    out = Loaded()
    normalise = make_normaliser(source, out.ignored)
    ids, positions, keys, flags = array("q"), array("q"), array("Q"), array("B")
    bad = out.bad
    encode = _ROW_ENCODER.encode
    records = read_records(path or source.path, split if path or split else source.split)
    for position, (where, raw) in enumerate(records):
        if isinstance(raw, Bad):
            bad.append(f"{where}: {raw.why}")
            continue
        try:
            row = normalise(raw)
        except Invalid as exc:
            bad.append(f"{where}: {exc}")
            continue
        except UserError as exc:  # a config problem found on the first row (a template naming an unknown column)
            raise UserError(f"{where}: {exc}") from None
        ids.append(spool.add_text(encode(row)))
        positions.append(position)
        keys.append(row_key(row))
        flags.append(row_flags(row))
    out.ids = np.frombuffer(ids, dtype=np.int64).copy() if ids else out.ids
    out.positions = np.frombuffer(positions, dtype=np.int64).copy() if positions else out.positions
    out.keys = np.frombuffer(keys, dtype=np.uint64).copy() if keys else out.keys
    out.flags = np.frombuffer(flags, dtype=np.uint8).copy() if flags else out.flags
    if own:
        out.store = spool.close(unlink=True)
        os.rmdir(folder)
    return out


def check_on_error(value: str) -> None:
    if value not in ON_ERROR:
        raise UserError(
            f"dataset.on_error={value} is not valid. Allowed: fail (stop and list every bad row) or "
            "skip (train on the good rows; the bad ones are listed in the run dir)."
        )


def bad_rows_error(bad: list[str], report_dir: Path | None) -> UserError:
    """The one-paragraph error for on_error=fail: the first rows, a count of the rest, and where the full list is."""
    shown = "\n  ".join(bad[:SHOWN])
    more = f"\n  ... and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
    listing = ""
    if len(bad) > SHOWN:
        target = write_list(bad, report_dir)
        listing = f" The full list is in {target}."
    return UserError(
        f"{len(bad)} invalid row{'s' if len(bad) != 1 else ''} in the dataset (nothing was trained):\n  {shown}{more}\n"
        f"Fix these rows, or set dataset.on_error=skip to train on the valid rows only (the skipped rows are then "
        f"listed in the run dir).{listing}"
    )


def write_list(lines: list[str], report_dir: Path | None, name: str = "invalid_rows.txt") -> Path:
    if report_dir is None:
        fd, tmp = tempfile.mkstemp(prefix="hydratune-invalid-rows-", suffix=".txt")
        target = Path(tmp)
        with open(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        return target
    from trainer.run import atomic

    target = report_dir / name
    atomic.write_text(target, "\n".join(lines) + "\n")
    return target


def row_warnings(rows, ignored: Counter) -> list[str]:
    """Warnings with counts: rows without a system or user message, duplicates, ignored keys. ``rows`` is a list of
    canonical rows or a :class:`Loaded` (its flags and keys)."""
    if isinstance(rows, Loaded):
        flags, keys = rows.flags, rows.keys
    else:
        flags = np.asarray([row_flags(r) for r in rows], dtype=np.uint8)
        keys = np.asarray([row_key(r) for r in rows], dtype=np.uint64)
    out = []
    chats = int(np.count_nonzero(flags & CHAT))
    if chats:
        no_system = int(np.count_nonzero(flags & NO_SYSTEM))
        no_user = int(np.count_nonzero(flags & NO_USER))
        if no_system:
            out.append(f"{no_system} of {chats} examples have no system message")
        if no_user:
            out.append(f"{no_user} of {chats} examples have no user message")
    dupes = len(keys) - len(np.unique(keys))
    if dupes:
        out.append(f"{dupes} examples are duplicates of an earlier example (kept; remove them if unintended)")
    for key, n in sorted(ignored.items(), key=lambda kv: str(kv[0])):
        out.append(f"{n} rows have a key '{key}' that the format does not use (ignored)")
    return out


#: One encoder for every key (``json.dumps`` with these options would build a new one per row).
_KEY_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False)
_ROW_ENCODER = json.JSONEncoder(ensure_ascii=False)


def canonical_key(row: dict) -> str:
    """The row as sorted-key JSON: equal rows, equal keys (same text as ``json.dumps(row, sort_keys=True, ...)``)."""
    return _KEY_ENCODER.encode(row)
