"""The preprocessing cache: tokenized datasets stored under a key of everything that shapes them.

The key is a sha256 over the contents of every data file (a hub dataset contributes its id, split and the
fingerprint ``datasets`` gives it), the tokenizer (its full definition, chat template and special tokens), the
dataset config (format, columns, roles, templates, weights, split settings, train_on_all_tokens), max_length and
the packing settings. Entries are written to a temporary folder and renamed into place, so a crash or a
concurrent writer never leaves a half-written entry; each carries a manifest (its own key, and the size and sha256
of every file), checked on every load: a truncated, garbled, edited or incomplete entry, or one that is another
key's entry (a copy, or a symlink, under this key's name), is reported in one line and rebuilt. A full disk while an
entry is written is one paragraph, and the partial entry is removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import cast

from omegaconf import DictConfig

from trainer.config.schema import dataset_schema
from trainer.run import atomic
from trainer.run.atomic import clean_partials

log = logging.getLogger(__name__)

#: Bump when the tokenized layout changes, so old entries are not reused (2: entries carry a manifest; 3: the
#: manifest names the entry's key; 4: the canonical rows are in rows.arrow, written and read in chunks).
VERSION = 4
MANIFEST = "manifest.json"
FILES = ("train.arrow", "validation.arrow", "rows.arrow", "examples.json", "stats.json")
_IGNORED_KEYS = {"name", "use_cache", "streaming", "path", "validation_path"}  # streaming: never cached


def _hash_path(h, path: str, split: str | None) -> None:
    p = Path(path).expanduser()
    if p.is_file():
        h.update(b"file\0")
        with atomic.reading(p), open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    elif p.is_dir():
        h.update(b"dir\0")
        for child in sorted(c for c in p.rglob("*") if c.is_file()):
            h.update(str(child.relative_to(p)).encode() + b"\0")
            _hash_path(h, str(child), None)
    else:  # a hub id: its id and split (the hub revision is resolved by datasets itself)
        h.update(f"hub\0{path}\0{split}".encode())
    h.update(b"\0")


def _hash_tokenizer(h, tokenizer) -> None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    template = getattr(tokenizer, "chat_template", None)
    h.update(json.dumps(template, sort_keys=True).encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    h.update(f"{type(tokenizer).__name__}\0{getattr(tokenizer, 'add_bos_token', None)}".encode())


def cache_key(dataset_cfg: DictConfig, tokenizer, settings: dict) -> str:
    import tokenizers

    cfg = dataclasses.asdict(dataset_schema(dataset_cfg))
    h = hashlib.sha256(f"hydratune-data-v{VERSION}\0tokenizers-{tokenizers.__version__}\0".encode())
    for source in [cfg, *cfg["mix"]]:
        _hash_path(h, source["path"], source["split"])
    if cfg["validation_path"]:
        _hash_path(h, cfg["validation_path"], None)
    _hash_tokenizer(h, tokenizer)
    shaped = {k: v for k, v in cfg.items() if k not in _IGNORED_KEYS}
    shaped["mix"] = [{k: v for k, v in m.items() if k != "path"} for m in cfg["mix"]]
    h.update(json.dumps({"dataset": shaped, **settings}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def exists(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


class Damaged(Exception):
    """A cache entry that fails its manifest check (truncated, garbled, tampered with, or files missing)."""


def save(folder: Path, train, validation, examples, stats: dict) -> None:
    """Write the entry into a temporary folder of this process, with a manifest (its key, and the size and sha256
    of every file), then rename it into place: readers see a complete entry or none, and the first of several
    concurrent writers wins (their entries are identical)."""
    with atomic.staged_folder(folder, keep_if=MANIFEST) as tmp:
        for name, ds in (("train", train), ("validation", validation)):
            _write_arrow(tmp / f"{name}.arrow", ds)
        finish(tmp, folder.name, examples, stats)


def finish(tmp: Path, key: str, examples, stats: dict) -> None:
    """Complete an entry whose train.arrow and validation.arrow are written: the canonical rows (rows.arrow: the
    training rows, then the validation rows), examples.json (their counts, skipped rows, warnings), stats.json and
    the manifest."""
    from trainer.data.rows import Rows, Spool

    spool = Spool(tmp / "rows.arrow")
    for part in (examples.train, examples.validation):
        if isinstance(part, Rows):
            for text in part.texts():
                spool.add_text(text)
        else:
            for row in part:
                spool.add(row)
    spool.close(unlink=False)
    payload = {
        "train": len(examples.train),
        "validation": len(examples.validation),
        "skipped": examples.skipped,
        "warnings": examples.warnings,
    }
    (tmp / "examples.json").write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")
    manifest = {name: _describe(tmp / name) for name in FILES}
    atomic.write_json(tmp / MANIFEST, {"version": VERSION, "key": key, "files": manifest})


def _describe(path: Path) -> dict:
    return {"size": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def verify(folder: Path) -> None:
    """Raise :class:`Damaged` when the entry is not this key's own (a symlink or a copy of another key's entry: its
    resolved path, and the key in its manifest, must be the key it is looked up under) or names the first file
    whose size or content differs from the manifest."""
    key = folder.name
    if folder.is_symlink() or folder.resolve() != folder.parent.resolve() / key:
        raise Damaged(f"it is a link to {folder.resolve()}, not an entry of its own")
    try:
        record = json.loads((folder / MANIFEST).read_text())
        entries, stored = record["files"], record.get("key")
        manifest = {name: (entry["size"], entry["sha256"]) for name, entry in entries.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise Damaged(f"{MANIFEST} unreadable ({exc.__class__.__name__})") from None
    if stored != key:
        raise Damaged(f"it holds the entry of another key ({stored}): a copy under the wrong name")
    for name in FILES:
        path = folder / name
        if not path.is_file():
            raise Damaged(f"{name} is missing")
        if name not in manifest:
            raise Damaged(f"{name} is not in the manifest")
        size, sha256 = manifest[name]
        if path.stat().st_size != size:
            raise Damaged(f"{name} has {path.stat().st_size} bytes, the manifest says {size}")
        if _sha256(path) != sha256:
            raise Damaged(f"{name} content differs from its manifest hash (edited or garbled)")


def load_verified(folder: Path):
    """The entry's (train, validation, examples, stats) after checking it against its manifest, or None when it
    is damaged: then one warning line says what is wrong, and the entry is removed so that it is rebuilt."""
    try:
        verify(folder)
        return load(folder)
    except (Damaged, OSError, ValueError) as exc:
        log.warning("dataset cache entry %s is damaged (%s): not used, rebuilt", folder.name, exc)
        discard(folder)
        return None


def discard(folder: Path) -> None:
    """Remove an entry (a symlink itself, never the entry it points at)."""
    trash = atomic.partial_name(folder)
    try:
        folder.rename(trash)  # atomically out of readers' sight, then removed
    except OSError:
        return
    atomic.remove(trash)


def _write_arrow(path: Path, dataset) -> None:
    """The dataset's Arrow table as an IPC stream, which datasets memory-maps back with Dataset.from_file."""
    import pyarrow as pa

    table = dataset.with_format(None).data.table
    if dataset._indices is not None:  # a selection or shuffle: materialise it
        table = dataset.flatten_indices().data.table
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def load(folder: Path, in_memory: bool = False):
    """The entry's (train, validation, examples, stats): the datasets memory-mapped from their files (``in_memory``:
    read into memory, for an entry about to be removed), the rows read back on demand."""
    import datasets
    import numpy as np
    import pyarrow as pa

    from trainer.data.examples import Examples
    from trainer.data.rows import Rows, Store

    def dataset(name: str):
        path = str(folder / f"{name}.arrow")
        if not in_memory:
            return datasets.Dataset.from_file(path)
        with pa.OSFile(path, "rb") as f:
            return datasets.Dataset(pa.ipc.open_stream(f).read_all())

    train, validation = dataset("train"), dataset("validation")
    payload = json.loads((folder / "examples.json").read_text(encoding="utf-8"))
    stats = json.loads((folder / "stats.json").read_text(encoding="utf-8"))
    store = Store(folder / "rows.arrow")
    n_train, n_val = int(payload.pop("train")), int(payload.pop("validation"))
    rows = cast(list, Rows(store, np.arange(n_train))), cast(list, Rows(store, np.arange(n_train, n_train + n_val)))
    return train, validation, Examples(train=rows[0], validation=rows[1], **payload), stats


# ---------------------------------------------------------------- single-file entries (base evaluations)


def save_json(path: Path, value) -> None:
    """A JSON cache file that carries its key (its name) and its own size and sha256 (of the canonical text of
    ``value``)."""
    text = json.dumps(value, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()
    clean_partials(path.parent)
    record = {"key": path.stem, "size": len(text.encode()), "sha256": digest, "value": value}
    atomic.write_text(path, json.dumps(record) + "\n")


def load_json(path: Path, what: str):
    """The value saved by :func:`save_json`, or None (with one warning line, the file removed) when the file is
    truncated, garbled, edited, or another key's file (a copy or a symlink under this key's name)."""
    try:
        record = json.loads(path.read_text())
        text = json.dumps(record["value"], sort_keys=True)
        ok = len(text.encode()) == record["size"] and hashlib.sha256(text.encode()).hexdigest() == record["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        ok, reason = False, f"unreadable: {exc.__class__.__name__}"
    else:
        reason = "its content differs from its recorded hash (edited or garbled)"
        if ok and (path.is_symlink() or path.resolve() != path.parent.resolve() / path.name):
            ok, reason = False, f"it is a link to {path.resolve()}, not a file of its own"
        elif ok and "key" not in record:
            ok, reason = False, "it records no key (written by an older hydratune)"
        elif ok and record["key"] != path.stem:
            ok, reason = False, f"it holds the result of another key ({record['key']}): a copy under the wrong name"
    if ok:
        return record["value"]
    log.warning("%s cache file %s is damaged (%s): not used, computed again", what, path.name, reason)
    atomic.remove(path)
    return None
