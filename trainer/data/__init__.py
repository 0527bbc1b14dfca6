"""Datasets: every common format in, exact errors out, tokenized once.

- :func:`load_examples`: read every source of ``cfg.dataset``, validate every row, split train/validation
  (no tokenizer, no torch).
- :func:`prepare`: tokenize with the model's chat template, build labels, truncate, pack when asked, cache the
  result under ``cache_dir/datasets/<key>`` and write statistics into the run dir.
- :func:`run_prepare`: the ``hydratune prepare`` command (prepare and print the statistics).

Modules: read (files -> raw rows), formats (raw rows -> canonical rows), validate (errors and warnings),
split (train/validation, mixing), tokenize (ids and labels), pack, stats, cache.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from trainer.data.examples import Examples
from trainer.errors import UserError
from trainer.schema import DatasetSchema, SourceSchema, dataset_schema

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)

__all__ = ["Examples", "Prepared", "load_examples", "prepare", "prepare_once", "run_prepare"]


@dataclass
class Prepared:
    train: datasets.Dataset  # input_ids, labels (-100 outside the loss); + seq_lengths when packed
    validation: datasets.Dataset  # same columns, never packed (may be empty)
    examples: Examples
    stats: dict
    cache_key: str
    cache_hit: bool


# ---------------------------------------------------------------- loading and validating


def load_examples(dataset_cfg: DictConfig, report_dir: Path | None = None) -> Examples:
    """Load every source of the dataset config, validate every row, split train/validation.

    on_error=fail raises UserError listing every bad row as ``file:line: what is wrong`` (the first 20 in the
    message, all of them in ``invalid_rows.txt`` in ``report_dir`` or a temporary file).
    """
    from trainer.data.split import drop_overlap, split_indices, weighted
    from trainer.data.validate import bad_rows_error, check_on_error, load_source, row_warnings

    cfg = dataset_schema(dataset_cfg)
    check_on_error(cfg.on_error)
    if cfg.validation_rows and (cfg.validation_path or cfg.validation_split):
        raise UserError(
            "dataset.validation_rows and dataset.validation_path/validation_split both name validation data; keep one."
        )
    sources: list[SourceSchema] = [cfg, *cfg.mix]
    loaded = [load_source(s) for s in sources]
    bad = [b for part in loaded for b in part.bad]
    ignored = sum((part.ignored for part in loaded), Counter())

    external = None
    if cfg.validation_path:
        external = load_source(cfg, path=cfg.validation_path)
    elif cfg.validation_split:
        from trainer.data.read import is_local

        if is_local(cfg.path) and not Path(cfg.path).is_dir():
            raise UserError(
                f"dataset.validation_split={cfg.validation_split}: {cfg.path} is a single file "
                "without named splits. Use dataset.validation_path=FILE or dataset.validation_size."
            )
        external = load_source(cfg, split=cfg.validation_split)
    if external is not None:
        bad += external.bad

    if bad and cfg.on_error == "fail":
        raise bad_rows_error(bad, report_dir)
    if not any(part.rows for part in loaded):
        raise UserError(
            f"dataset {cfg.name}: no usable rows in {cfg.path}"
            f"{' (all ' + str(len(bad)) + ' rows were invalid)' if bad else ''}. Check the file and "
            "dataset.format."
        )

    warnings = []
    seed = cfg.split_seed
    if cfg.train_rows or cfg.validation_rows:
        external = _row_ranges(cfg, loaded, external)
    if external is not None:
        validation = external.rows
        train_parts = []
        for part in loaded:
            kept, removed = drop_overlap(part.rows, validation)
            if removed:
                warnings.append(f"{removed} training rows also appear in the validation data; removed from train")
            train_parts.append(kept)
    else:
        pooled = [r for part in loaded for r in part.rows]
        owner = [k for k, part in enumerate(loaded) for _ in part.rows]
        train_idx, val_idx = split_indices(pooled, cfg.validation_size, seed)
        validation = [pooled[i] for i in val_idx]
        train_parts = [[] for _ in loaded]
        for i in train_idx:
            train_parts[owner[i]].append(pooled[i])

    train: list[dict] = []
    for k, (source, rows) in enumerate(zip(sources, train_parts, strict=True)):
        weight = source.weight
        train += rows if weight == 1.0 else weighted(rows, weight, seed + k)
    limit = cfg.max_train_examples
    if limit is not None and len(train) > limit:
        keep = sorted(random.Random(seed).sample(range(len(train)), limit))
        train = [train[i] for i in keep]
    if not train:
        raise UserError(
            f"dataset {cfg.name}: no training rows are left after the validation split. "
            "Add data or lower dataset.validation_size."
        )

    warnings = row_warnings(train + validation, ignored) + warnings
    if bad:
        warnings.insert(0, f"{len(bad)} invalid rows skipped (on_error=skip); listed in skipped_rows.txt")
    return Examples(train=train, validation=validation, skipped=bad, warnings=warnings)


def _row_ranges(cfg: DatasetSchema, loaded: list, external):
    """Apply dataset.train_rows / validation_rows to the first source: keep its training rows in ``loaded[0]``,
    return the validation rows as the external validation set (or ``external`` when there is no validation range)."""
    from trainer.data.validate import Loaded

    def window(key: str) -> tuple[int, int] | None:
        value = getattr(cfg, key)
        if value is None:
            return None
        if len(value) != 2 or not 0 <= value[0] < value[1]:
            raise UserError(
                f"dataset.{key}={list(value)} is not a row range: give [start, stop) with 0 <= start < stop."
            )
        return value[0], value[1]

    train_w, val_w = window("train_rows"), window("validation_rows")
    primary = loaded[0]
    inside = lambda w, pos: w[0] <= pos < w[1]  # noqa: E731
    train, validation = Loaded(), Loaded()
    for row, where, pos in zip(primary.rows, primary.wheres, primary.positions, strict=True):
        if val_w and inside(val_w, pos):
            validation.rows.append(row)
            validation.wheres.append(where)
        elif train_w is None or inside(train_w, pos):
            train.rows.append(row)
            train.wheres.append(where)
    for key, w, part in (("train_rows", train_w, train), ("validation_rows", val_w, validation)):
        if w and not part.rows:
            raise UserError(
                f"dataset.{key}={list(w)} selects no usable rows of {cfg.path} ({len(primary.positions)} usable "
                "rows). Check the range."
            )
    loaded[0] = train
    return validation if val_w else external


# ---------------------------------------------------------------- preparing (tokenizing) once


def _settings(cfg: DictConfig) -> dict:
    max_length = OmegaConf.select(cfg, "train.max_length", default=1024)
    packing = bool(OmegaConf.select(cfg, "train.packing", default=False))
    strategy = OmegaConf.select(cfg, "train.packing_strategy", default="bfd")
    if packing and max_length is None:
        raise UserError("train.packing=true needs train.max_length (the length of each packed sequence).")
    return {"max_length": max_length, "packing": packing, "packing_strategy": strategy if packing else None}


def prepare(cfg: DictConfig, tokenizer, run_dir: Path | None) -> Prepared:
    """Validate, tokenize, label, truncate, pack and cache the dataset of the root config ``cfg``."""
    from trainer.data import cache

    settings = _settings(cfg)
    run_dir = Path(run_dir) if run_dir is not None else None
    key = cache.cache_key(cfg.dataset, tokenizer, settings)
    folder = Path(cfg.cache_dir) / "datasets" / key
    started = time.perf_counter()
    loaded = cache.load_verified(folder) if cfg.dataset.use_cache and cache.exists(folder) else None
    hit = loaded is not None
    if loaded is not None:
        train, validation, examples, stats = loaded
        log.info("dataset cache hit %s", key)
    else:
        log.info("dataset cache miss %s", key)
        train, validation, examples, stats = _build(cfg, tokenizer, settings, run_dir)
        if cfg.dataset.use_cache:
            cache.save(folder, train, validation, examples, stats)
    stats = {**stats, "cache_key": key, "cache_hit": hit, "seconds": round(time.perf_counter() - started, 3)}
    if run_dir is not None:
        _write_run_files(run_dir, stats, examples, key, hit, folder)
    return Prepared(train, validation, examples, stats, key, hit)


def _build(cfg: DictConfig, tokenizer, settings: dict, run_dir: Path | None):
    from trainer.data.stats import split_stats
    from trainer.data.tokenize import Encoder, to_dataset

    examples = load_examples(cfg.dataset, run_dir)
    encoder = Encoder(tokenizer, settings["max_length"], bool(cfg.dataset.train_on_all_tokens))
    out, parts = {}, {}
    for split, rows in (("train", examples.train), ("validation", examples.validation)):
        enc = _encode(encoder, rows, split)
        out[split] = to_dataset(enc.input_ids, enc.labels)
        parts[split] = split_stats(rows, enc.tokens, enc.loss_tokens, enc.truncated, len(enc.no_loss))
    warnings = list(examples.warnings)
    truncated = parts["train"]["truncated"] + parts["validation"]["truncated"]
    if truncated:
        warnings.append(
            f"{truncated} examples are longer than max_length={settings['max_length']} tokens and are truncated"
        )
    dropped = parts["train"]["dropped_without_answer_tokens"] + parts["validation"]["dropped_without_answer_tokens"]
    if dropped:
        warnings.append(f"{dropped} examples have no answer tokens left after truncation and are not used")
    if len(out["train"]) == 0:
        raise UserError(
            f"no training example has any answer token within max_length={settings['max_length']}. "
            "Raise train.max_length or shorten the prompts."
        )
    train = out["train"]
    if settings["packing"]:
        from trainer.data.pack import pack

        train = pack(train, settings["max_length"], settings["packing_strategy"])
    examples.warnings = warnings
    stats = {
        "name": cfg.dataset.name,
        **settings,
        "train": parts["train"],
        "validation": parts["validation"],
        "skipped": len(examples.skipped),
        "warnings": warnings,
        "packed_sequences": len(train) if settings["packing"] else None,
    }
    return train, out["validation"], examples, stats


def _encode(encoder, rows: list[dict], split: str):
    from jinja2 import TemplateError

    try:
        return encoder.encode(rows)
    except TemplateError as exc:
        raise UserError(
            f"the chat template rejects a {split} conversation: {exc}. The template may require "
            "alternating user/assistant turns or a particular first role; fix the data or set "
            "model.chat_template."
        ) from None


def _write_run_files(run_dir: Path, stats: dict, examples: Examples, key: str, hit: bool, folder: Path) -> None:
    from trainer import atomic
    from trainer.data.validate import write_list

    atomic.write_json(run_dir / "data_stats.json", stats)
    atomic.write_json(run_dir / "data_cache.json", {"key": key, "hit": hit, "path": str(folder)})
    if examples.skipped:
        write_list(examples.skipped, run_dir, "skipped_rows.txt")


def prepare_once(cfg: DictConfig, tokenizer) -> str:
    """Fill the preprocessing cache before worker processes start; returns the cache key (workers then hit it)."""
    return prepare(cfg, tokenizer, None).cache_key


def run_prepare(cfg: DictConfig, tokenizer, run_dir: Path | None) -> dict:
    """``hydratune prepare``: validate and tokenize (or load from the cache), print and return the statistics."""
    from trainer.data.stats import format_stats

    prepared = prepare(cfg, tokenizer, run_dir)
    print(format_stats(prepared.stats), flush=True)
    return prepared.stats
