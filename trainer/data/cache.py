"""The preprocessing cache: tokenized datasets stored under a key of everything that shapes them.

The key is a sha256 over the contents of every data file (a hub dataset contributes its id, split and the
fingerprint ``datasets`` gives it), the tokenizer (its full definition, chat template and special tokens), the
dataset config (format, columns, roles, templates, weights, split settings, train_on_all_tokens), max_length and
the packing settings. Entries are written to a temporary folder and renamed into place, so a crash or a
concurrent writer never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig

from trainer.plain import plain_dict

#: Bump when the tokenized layout changes, so old entries are not reused.
VERSION = 1
_IGNORED_KEYS = {"name", "use_cache", "path", "validation_path"}


def _hash_path(h, path: str, split: str | None) -> None:
    p = Path(path).expanduser()
    if p.is_file():
        h.update(b"file\0")
        with open(p, "rb") as f:
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

    cfg = plain_dict(dataset_cfg)
    h = hashlib.sha256(f"hydratune-data-v{VERSION}\0tokenizers-{tokenizers.__version__}\0".encode())
    for source in [cfg, *cfg.get("mix", [])]:
        _hash_path(h, source["path"], source.get("split"))
    if cfg.get("validation_path"):
        _hash_path(h, cfg["validation_path"], None)
    _hash_tokenizer(h, tokenizer)
    shaped = {k: v for k, v in cfg.items() if k not in _IGNORED_KEYS}
    shaped["mix"] = [{k: v for k, v in m.items() if k != "path"} for m in cfg.get("mix", [])]
    h.update(json.dumps({"dataset": shaped, **settings}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def exists(folder: Path) -> bool:
    return (folder / "done").is_file()


def save(folder: Path, train, validation, examples, stats: dict) -> None:
    tmp = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, ds in (("train", train), ("validation", validation)):
        _write_arrow(tmp / f"{name}.arrow", ds)
    payload = {
        "train": examples.train,
        "validation": examples.validation,
        "skipped": examples.skipped,
        "warnings": examples.warnings,
    }
    (tmp / "examples.json").write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")
    (tmp / "done").write_text("ok\n")
    try:
        tmp.rename(folder)
    except OSError:  # another process finished first: its entry is identical
        shutil.rmtree(tmp, ignore_errors=True)


def _write_arrow(path: Path, dataset) -> None:
    """The dataset's Arrow table as an IPC stream, which datasets memory-maps back with Dataset.from_file."""
    import pyarrow as pa

    table = dataset.with_format(None).data.table
    if dataset._indices is not None:  # a selection or shuffle: materialise it
        table = dataset.flatten_indices().data.table
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def load(folder: Path):
    import datasets

    from trainer.data import Examples

    train = datasets.Dataset.from_file(str(folder / "train.arrow"))
    validation = datasets.Dataset.from_file(str(folder / "validation.arrow"))
    payload = json.loads((folder / "examples.json").read_text(encoding="utf-8"))
    stats = json.loads((folder / "stats.json").read_text(encoding="utf-8"))
    return train, validation, Examples(**payload), stats
