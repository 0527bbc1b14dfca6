"""Reading a data source into raw records, each tagged with where it came from (``file:line``).

Local files (.jsonl, .json, .csv, .tsv, .parquet), a folder written by ``datasets``' ``save_to_disk``, or a Hugging
Face dataset id. A row that cannot even be read (bad encoding, truncated JSON) comes back as a :class:`Bad` record
so that validation lists it with every other bad row; a file that cannot be read at all raises :class:`UserError`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.config.errors import UserError

JSONL_SUFFIXES = {".jsonl", ".ndjson"}
FILE_SUFFIXES = JSONL_SUFFIXES | {".json", ".csv", ".tsv", ".parquet", ".arrow"}


@dataclass
class Bad:
    """A row that could not be read; ``why`` says what is wrong."""

    why: str


Record = tuple[str, Any]  # (where, row) where row is a dict, some other JSON value, or Bad


def is_local(path: str) -> bool:
    return Path(path).exists() or Path(path).suffix.lower() in FILE_SUFFIXES or path.startswith((".", "/", "~"))


def read_records(path: str, split: str | None = None) -> Iterator[Record]:
    """Every row of a local file, a save_to_disk folder or a hub dataset, in order."""
    p = Path(path).expanduser()
    if p.is_dir():
        yield from _read_arrow_folder(p, split)
        return
    if not p.exists():
        if is_local(path):
            raise UserError(
                f"dataset file {path} does not exist. Check dataset.path (relative paths are taken "
                f"from the directory you run hydratune in: {Path.cwd()})."
            )
        yield from _read_hub(path, split)
        return
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        yield from _read_parquet(p)
    elif suffix in (".csv", ".tsv"):
        yield from _read_csv(p, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".json":
        yield from _read_json(p)
    elif suffix in JSONL_SUFFIXES:
        yield from _read_jsonl(p)
    else:
        raise UserError(
            f"{path}: unknown file type '{suffix}'. Use .jsonl, .json, .csv, .tsv or .parquet, "
            "a folder written by datasets' save_to_disk, or a Hugging Face dataset id."
        )


def file_bytes(path: Path) -> bytes:
    from trainer.run.atomic import reading

    with reading(path):
        data = path.read_bytes()
    _check_head(path, data[: BINARY_SNIFF_BYTES + 3])
    data = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    return data


def printable(text: str) -> str:
    """``text`` with control characters escaped (a terminal never receives raw bytes from a data file)."""
    return "".join(ch if ch.isprintable() or ch == " " else ascii(ch)[1:-1] for ch in text)


#: How much of a file's start :func:`is_binary` looks at.
BINARY_SNIFF_BYTES = 1024


def is_binary(head: bytes) -> bool:
    """Binary content, not text in some encoding: a NUL byte, or more than a tenth of the characters invalid UTF-8 or
    control characters other than whitespace (a Latin-1 file with a few accented letters is still text, whose bad
    rows validation lists one by one)."""
    if b"\x00" in head:
        return True
    text = head.decode("utf-8", "replace")
    if text.endswith("\ufffd"):  # a character cut at the sniff's end
        text = text.rstrip("\ufffd")
    odd = sum(ch == "\ufffd" or (ch < " " and ch not in "\t\n\r\x0b\x0c") for ch in text)
    return odd > len(text) / 10


def _empty(path: Path) -> UserError:
    return UserError(f"{path}:1: the file is empty. Point dataset.path at a file with at least one example.")


# ---------------------------------------------------------------- JSON lines


def _read_jsonl(path: Path) -> Iterator[Record]:
    """Stream the file line by line (memory stays bounded however large it is)."""
    from trainer.run.atomic import reading

    blank = b" \t\n\r\x0b\x0c"  # what bytes.strip() strips
    with reading(path), open(path, "rb") as f:
        head = f.read(BINARY_SNIFF_BYTES + 3)
        _check_head(path, head)
        f.seek(3 if head.startswith(b"\xef\xbb\xbf") else 0)
        lines = iter(f)
        number, line = 0, b""
        for number, line in enumerate(lines, 1):  # the first line with content: whole-file mistakes are caught once
            if line.strip(blank):
                _sniff_first_line(path, line, number, b"")
                break
        else:
            raise _empty(path)
        raw: bytes | None = line
        loads = json.loads
        prefix = f"{path}:"
        following = next(lines, None)
        while raw is not None:
            if raw.strip(blank):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    why = f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); save the file as UTF-8"
                    yield f"{prefix}{number}", Bad(why)
                else:
                    try:
                        yield f"{prefix}{number}", loads(text)
                    except json.JSONDecodeError as exc:
                        last = following is None and not raw.endswith(b"\n")
                        text = text.rstrip("\n")
                        cut = last or exc.msg.startswith(("Unterminated", "Expecting")) and exc.pos >= len(text) - 2
                        hint = " - the line looks cut off (truncated)" if cut else ""
                        yield f"{prefix}{number}", Bad(f"not valid JSON: {exc.msg} at column {exc.colno}{hint}")
            raw, number = following, number + 1
            following = next(lines, None) if raw is not None else None


def _check_head(path: Path, head: bytes) -> None:
    """A UTF-16 or binary file is one error for the whole file."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"{path}:1: the file is UTF-16 encoded. Save it as UTF-8 (most editors: 'Save with encoding').")
    head = head[3:] if head.startswith(b"\xef\xbb\xbf") else head
    if is_binary(head[:BINARY_SNIFF_BYTES]):
        raise UserError(
            f"{path}:1: binary file, not text/JSONL/CSV (its first {BINARY_SNIFF_BYTES} bytes hold NUL bytes or are "
            "mostly not UTF-8 text). Point dataset.path at the data as a .jsonl, .json or .csv text file (a Parquet "
            "file must be named .parquet; a compressed file must be unpacked first)."
        )


def _sniff_first_line(path: Path, line: str | bytes, number: int, data: bytes) -> None:
    """Catch whole-file mistakes (a CSV or a JSON array saved as .jsonl) once instead of on every line."""
    text = (line if isinstance(line, str) else line.decode("utf-8", "replace")).strip(" \t\n\r\x0b\x0c")
    try:
        json.loads(text)
        return
    except json.JSONDecodeError:
        pass
    if text.startswith("["):
        raise UserError(
            f"{path}:{number}: this looks like a JSON array, not JSON lines (one object per line). "
            "Rename the file to .json, or write one JSON object per line."
        )
    if not text.startswith("{") and ("," in text or "\t" in text):
        raise UserError(
            f"{path}:{number}: not valid JSON; this looks like a CSV file named {path.suffix} "
            f"(header: {printable(text[:80])}). Rename it to .csv, or convert it to one JSON object per line."
        )


# ---------------------------------------------------------------- JSON


def _utf8_text(path: Path) -> str:
    """The whole file as text; an empty file or bytes that are not UTF-8 are one-paragraph errors with the line."""
    data = file_bytes(path)
    if not data.strip():
        raise _empty(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8."
        ) from None


def _read_json(path: Path) -> Iterator[Record]:
    whole = _utf8_text(path)
    text: str | None = whole  # None once the rows are items of a nested array (no line numbers)
    try:
        value = json.loads(whole)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # JSON lines in a .json file: read it as such
            yield from _read_jsonl(path)
            return
        raise UserError(
            f"{path}:{exc.lineno}: not valid JSON: {exc.msg} at column {exc.colno}. "
            "Fix the file (a .json file holds one array of objects)."
        ) from None
    if isinstance(value, dict):
        lists = [k for k, v in value.items() if isinstance(v, list)]
        if len(lists) == 1 and not _looks_like_row(value):
            value = value[lists[0]]
            text = None  # line numbers of a nested array: count items instead
        else:
            yield f"{path}:1", value
            return
    if not isinstance(value, list):
        raise UserError(f"{path}:1: expected a JSON array of objects, got a {type(value).__name__}.")
    if not value:
        raise UserError(f"{path}:1: the JSON array is empty. Add at least one example.")
    lines = _item_lines(text, len(value)) if text is not None else None
    for i, item in enumerate(value):
        yield (f"{path}:{lines[i]}" if lines else f"{path}:item {i + 1}"), item


def _looks_like_row(value: dict) -> bool:
    return any(k in value for k in ("messages", "conversations", "prompt", "text", "instruction", "chosen"))


def _item_lines(text: str, count: int) -> list[int] | None:
    """The line on which each item of a top-level JSON array starts."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    lines, line, last = [], 1 + text.count("\n", 0, pos), pos
    n = len(text)
    try:
        for _ in range(count):
            while pos < n and text[pos] in " \t\r\n,":
                pos += 1
            line += text.count("\n", last, pos)
            lines.append(line)
            _, end = decoder.raw_decode(text, pos)
            line += text.count("\n", pos, end)
            last = pos = end
    except (json.JSONDecodeError, ValueError):
        return None
    return lines


# ---------------------------------------------------------------- CSV


def _read_csv(path: Path, delimiter: str) -> Iterator[Record]:
    text = _utf8_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except csv.Error as exc:
        raise UserError(f"{path}:1: cannot read the CSV header: {exc}.") from None
    header = [h.strip() for h in header]
    if not any(header):
        raise UserError(f"{path}:1: the CSV header is empty; the first line must name the columns.")
    start = reader.line_num + 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            yield f"{path}:{start}", Bad(f"not valid CSV: {exc} (an unclosed quote?); the rest of the file is not read")
            break
        where = f"{path}:{start}"
        start = reader.line_num + 1
        if not fields or not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            yield where, Bad(f"has {len(fields)} fields, the header has {len(header)} ({', '.join(header)})")
            continue
        yield where, dict(zip(header, fields, strict=True))


# ---------------------------------------------------------------- Arrow: parquet, save_to_disk, hub


def _read_parquet(path: Path) -> Iterator[Record]:
    """Stream the file a row group batch at a time."""
    import pyarrow.parquet as pq

    def damaged(exc: Exception) -> UserError:
        return UserError(f"{path}: cannot read this Parquet file ({exc}). Is it really Parquet?")

    try:
        parquet = pq.ParquetFile(path)
        if parquet.metadata.num_rows == 0:
            raise _empty(path)
        batches = parquet.iter_batches(batch_size=4096)
    except UserError:
        raise
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise damaged(exc) from None
    i = 0
    while True:
        try:
            batch = next(batches, None)
        except Exception as exc:  # noqa: BLE001
            raise damaged(exc) from None
        if batch is None:
            return
        for row in batch.to_pylist():
            i += 1
            yield f"{path}:row {i}", row


def _read_arrow_folder(path: Path, split: str | None) -> Iterator[Record]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise UserError(
            f"{path} is a folder but not one written by datasets' save_to_disk ({exc}). "
            "Point dataset.path at a data file or a save_to_disk folder."
        ) from None
    ds = _pick_split(loaded, split, str(path))
    for i, row in enumerate(ds):
        yield f"{path}[{split or 'train'}]:row {i + 1}", row


def _read_hub(name: str, split: str | None) -> Iterator[Record]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # offline, unknown id, private repo, bad split: all reach the user the same way
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"dataset.path={name} is neither a local file nor a loadable Hugging Face dataset "
            f"({type(exc).__name__}: {first}). Check the path or id (and dataset.split); "
            "for a hub dataset you need network access or a local copy."
        ) from None
    for i, row in enumerate(ds):
        yield f"{name}[{split or 'train'}]:row {i + 1}", row


def _pick_split(loaded, split: str | None, where: str):
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        name = split or "train"
        if name not in loaded:
            raise UserError(f"{where} has no split '{name}'. Splits: {', '.join(loaded)}. Set dataset.split.")
        return loaded[name]
    if split not in (None, "train"):
        raise UserError(f"{where} holds a single dataset, not named splits; remove split={split}.")
    return loaded
