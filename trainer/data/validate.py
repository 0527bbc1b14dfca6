"""Validation: every row read, normalised and checked; every bad row reported as ``file:line: what is wrong``.

Nothing is dropped silently: a row is either used, or listed (``on_error: skip``), or the run stops with the full
list (``on_error: fail``, the default).
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from trainer.data.formats import Invalid, make_normaliser
from trainer.data.read import Bad, read_records
from trainer.errors import UserError
from trainer.schema import SourceSchema

ON_ERROR = ("fail", "skip")
SHOWN = 20


@dataclass
class Loaded:
    """The usable rows of one source (canonical form), where each came from, and what was wrong with the rest."""

    rows: list[dict] = field(default_factory=list)
    wheres: list[str] = field(default_factory=list)
    #: Each usable row's position among all the source's records (0-based, bad records counted), for row ranges.
    positions: list[int] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)


def load_source(source: SourceSchema, path: str | None = None, split: str | None = None) -> Loaded:
    """Read and normalise every row of one source; ``path``/``split`` override the source's own."""
    out = Loaded()
    normalise = make_normaliser(source, out.ignored)
    rows, wheres, bad = out.rows, out.wheres, out.bad
    records = read_records(path or source.path, split if path or split else source.split)
    for position, (where, raw) in enumerate(records):
        if isinstance(raw, Bad):
            bad.append(f"{where}: {raw.why}")
            continue
        try:
            rows.append(normalise(raw))
            wheres.append(where)
            out.positions.append(position)
        except Invalid as exc:
            bad.append(f"{where}: {exc}")
        except UserError as exc:  # a config problem found on the first row (a template naming an unknown column)
            raise UserError(f"{where}: {exc}") from None
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
    from trainer import atomic

    target = report_dir / name
    atomic.write_text(target, "\n".join(lines) + "\n")
    return target


def row_warnings(rows: list[dict], ignored: Counter) -> list[str]:
    """Warnings with counts: rows without a system or user message, duplicates, ignored keys."""
    out = []
    chats = [r["messages"] for r in rows if "messages" in r]
    if chats:
        no_system = sum(1 for m in chats if m[0]["role"] != "system")
        no_user = sum(1 for m in chats if "user" not in [x["role"] for x in m])
        if no_system:
            out.append(f"{no_system} of {len(chats)} examples have no system message")
        if no_user:
            out.append(f"{no_user} of {len(chats)} examples have no user message")
    dupes = len(rows) - len({_duplicate_key(r) for r in rows})
    if dupes:
        out.append(f"{dupes} examples are duplicates of an earlier example (kept; remove them if unintended)")
    for key, n in sorted(ignored.items(), key=lambda kv: str(kv[0])):
        out.append(f"{n} rows have a key '{key}' that the format does not use (ignored)")
    return out


#: One encoder for every key (``json.dumps`` with these options would build a new one per row).
_KEY_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False)


def canonical_key(row: dict) -> str:
    """The row as sorted-key JSON: equal rows, equal keys (same text as ``json.dumps(row, sort_keys=True, ...)``)."""
    return _KEY_ENCODER.encode(row)


def _duplicate_key(row: dict) -> str | tuple:
    """Equal for equal canonical rows, like :func:`canonical_key`, without JSON for the common chat row.

    A chat row whose messages all have exactly a role and a (string) content is keyed by its (role, content) pairs;
    every other row by its canonical JSON, which never equals a tuple.
    """
    messages = row["messages"] if len(row) == 1 and "messages" in row else None
    if type(messages) is list:
        try:
            key = tuple([(m["role"], m["content"]) for m in messages])
        except (KeyError, TypeError):
            return canonical_key(row)
        if sum(map(len, messages)) == 2 * len(messages):  # each has role and content, so each has only those
            return key
    return canonical_key(row)
