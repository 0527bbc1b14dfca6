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
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from omegaconf import DictConfig, OmegaConf

from trainer.config.errors import UserError
from trainer.config.schema import DatasetSchema, SourceSchema, dataset_schema
from trainer.data.examples import Examples

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

    The rows are read in one pass into a spool on disk (trainer/data/rows.py); ``Examples.train`` and
    ``.validation`` are sequences that read them back on demand, so memory does not grow with the row count.

    on_error=fail raises UserError listing every bad row as ``file:line: what is wrong`` (the first 20 in the
    message, all of them in ``invalid_rows.txt`` in ``report_dir`` or a temporary file).
    """
    import numpy as np

    from trainer.data.rows import Rows, Spool
    from trainer.data.split import split_keys, weighted_indices
    from trainer.data.validate import bad_rows_error, check_on_error, load_source, row_warnings

    cfg = dataset_schema(dataset_cfg)
    check_on_error(cfg.on_error)
    if cfg.validation_rows and (cfg.validation_path or cfg.validation_split):
        raise UserError(
            "dataset.validation_rows and dataset.validation_path/validation_split both name validation data; keep one."
        )
    sources: list[SourceSchema] = [cfg, *cfg.mix]
    folder = Path(tempfile.mkdtemp(prefix="hydratune-rows-"))
    spool = Spool(folder / "rows.arrow")
    try:
        loaded = [load_source(s, spool=spool) for s in sources]
        external = None
        if cfg.validation_path:
            external = load_source(cfg, path=cfg.validation_path, spool=spool)
        elif cfg.validation_split:
            from trainer.data.read import is_local

            if is_local(cfg.path) and not Path(cfg.path).is_dir():
                raise UserError(
                    f"dataset.validation_split={cfg.validation_split}: {cfg.path} is a single file "
                    "without named splits. Use dataset.validation_path=FILE or dataset.validation_size."
                )
            external = load_source(cfg, split=cfg.validation_split, spool=spool)
    finally:
        store = spool.close(unlink=True)
        folder.rmdir()
    bad = [b for part in loaded for b in part.bad]
    ignored = sum((part.ignored for part in loaded), Counter())
    if external is not None:
        bad += external.bad

    if bad and cfg.on_error == "fail":
        raise bad_rows_error(bad, report_dir)
    if not any(len(part) for part in loaded):
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
        validation = external
        train_parts = []
        for part in loaded:
            overlap = np.isin(part.keys, validation.keys)
            removed = int(overlap.sum())
            if removed:
                warnings.append(f"{removed} training rows also appear in the validation data; removed from train")
            train_parts.append(part.take(~overlap))
    else:
        pooled = _concat(loaded)
        owner = np.concatenate([np.full(len(part), k, dtype=np.int64) for k, part in enumerate(loaded)])
        train_idx, val_idx = split_keys(pooled.keys, cfg.validation_size, seed)
        validation = pooled.take(val_idx)
        train_parts = [pooled.take(train_idx[owner[train_idx] == k]) for k in range(len(loaded))]

    picks = []
    for k, (source, part) in enumerate(zip(sources, train_parts, strict=True)):
        weight = source.weight
        picks.append(part if weight == 1.0 else part.take(weighted_indices(len(part), weight, seed + k)))
    train = _concat(picks)
    limit = cfg.max_train_examples
    if limit is not None and len(train) > limit:
        keep = np.asarray(sorted(random.Random(seed).sample(range(len(train)), limit)), dtype=np.int64)
        train = train.take(keep)
    if not len(train):
        raise UserError(
            f"dataset {cfg.name}: no training rows are left after the validation split. "
            "Add data or lower dataset.validation_size."
        )

    warnings = row_warnings(_concat([train, validation]), ignored) + warnings
    if bad:
        warnings.insert(0, f"{len(bad)} invalid rows skipped (on_error=skip); listed in skipped_rows.txt")
    rows = cast(list, Rows(store, train.ids)), cast(list, Rows(store, validation.ids))  # read-only lists on disk
    return Examples(train=rows[0], validation=rows[1], skipped=bad, warnings=warnings)


def _concat(parts: list):
    import numpy as np

    from trainer.data.validate import Loaded

    return Loaded(
        np.concatenate([p.ids for p in parts]),
        np.concatenate([p.positions for p in parts]),
        np.concatenate([p.keys for p in parts]),
        np.concatenate([p.flags for p in parts]),
    )


def _row_ranges(cfg: DatasetSchema, loaded: list, external):
    """Apply dataset.train_rows / validation_rows to the first source: keep its training rows in ``loaded[0]``,
    return the validation rows as the external validation set (or ``external`` when there is no validation range)."""

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
    pos = primary.positions
    in_val = (pos >= val_w[0]) & (pos < val_w[1]) if val_w else pos < 0
    in_train = ~in_val & ((pos >= train_w[0]) & (pos < train_w[1]) if train_w else pos >= 0)
    train, validation = primary.take(in_train), primary.take(in_val)
    for key, w, part in (("train_rows", train_w, train), ("validation_rows", val_w, validation)):
        if w and not len(part):
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
    """Validate, tokenize, label, truncate, pack and cache the dataset of the root config ``cfg``.

    Every stage streams: rows are read into a spool on disk, tokenized a chunk at a time over the run's cores
    (``hardware.threads``, else the usable cores) and written to the entry's Arrow files as they come, so memory does
    not grow with the dataset. With ``dataset.use_cache=false`` the entry is built the same way, read into memory
    and removed.
    """
    from trainer.data import cache
    from trainer.run import atomic

    settings = _settings(cfg)
    run_dir = Path(run_dir) if run_dir is not None else None
    key = cache.cache_key(cfg.dataset, tokenizer, settings)
    folder = Path(cfg.cache_dir) / "datasets" / key
    started = time.perf_counter()
    use_cache = bool(cfg.dataset.use_cache)
    loaded = cache.load_verified(folder) if use_cache and cache.exists(folder) else None
    hit = loaded is not None
    if loaded is not None:
        train, validation, examples, stats = loaded
        log.info("dataset cache hit %s", key)
    else:
        log.info("dataset cache miss %s", key)
        _slow_for_tests()
        scratch = None if use_cache else Path(tempfile.mkdtemp(prefix="hydratune-prepare-"))
        target = folder if scratch is None else scratch / key
        try:
            with atomic.staged_folder(target, keep_if=cache.MANIFEST) as tmp:
                examples, stats = _build(cfg, tokenizer, settings, run_dir, tmp)
                cache.finish(tmp, key, examples, stats)
            train, validation, examples, stats = cache.load(target, in_memory=scratch is not None)
        finally:
            if scratch is not None:
                atomic.remove(scratch)
    stats = {**stats, "cache_key": key, "cache_hit": hit, "seconds": round(time.perf_counter() - started, 3)}
    if run_dir is not None:
        _write_run_files(run_dir, stats, examples, key, hit, folder)
    return Prepared(train, validation, examples, stats, key, hit)


def _slow_for_tests() -> None:
    """Tests only (tests/test_prepare_once.py): ``HYDRATUNE_TEST_PREPARE_DELAY_S=S`` makes every cache miss take S
    seconds longer, a preparation that outlasts a deliberately short process-group timeout wherever it runs."""
    import os

    delay = float(os.environ.get("HYDRATUNE_TEST_PREPARE_DELAY_S") or 0)
    if delay > 0:
        log.warning("HYDRATUNE_TEST_PREPARE_DELAY_S=%s: preparation slowed down for a test", delay)
        time.sleep(delay)


def _build(cfg: DictConfig, tokenizer, settings: dict, run_dir: Path | None, folder: Path):
    """Tokenize both splits into ``folder``/train.arrow and validation.arrow; returns (examples, statistics)."""
    from trainer.data.parallel import encode_split, workers_for
    from trainer.data.stats import split_stats
    from trainer.data.tokenize import Encoder

    examples = load_examples(cfg.dataset, run_dir)
    encoder = Encoder(
        tokenizer, settings["max_length"], bool(cfg.dataset.train_on_all_tokens), str(cfg.dataset.reasoning)
    )
    workers = workers_for(OmegaConf.select(cfg, "hardware.threads", default=None))
    packing = (settings["max_length"], settings["packing_strategy"]) if settings["packing"] else None
    parts, written = {}, {}
    for split, rows in (("train", examples.train), ("validation", examples.validation)):
        target, pack = folder / f"{split}.arrow", packing if split == "train" else None
        done = _encode(lambda r=rows, t=target, p=pack: encode_split(encoder, r.texts, t, workers, p), split)
        tokens, loss_tokens, messages = done.counts()
        parts[split] = split_stats(rows, tokens, loss_tokens, done.truncated, done.no_loss, messages)
        written[split] = done
    warnings = list(examples.warnings)
    truncated = parts["train"]["truncated"] + parts["validation"]["truncated"]
    if truncated:
        warnings.append(
            f"{truncated} examples are longer than max_length={settings['max_length']} tokens and are truncated"
        )
    dropped = parts["train"]["dropped_without_answer_tokens"] + parts["validation"]["dropped_without_answer_tokens"]
    if dropped:
        warnings.append(f"{dropped} examples have no answer tokens left after truncation and are not used")
    if written["train"].kept == 0:
        raise UserError(
            f"no training example has any answer token within max_length={settings['max_length']}. "
            "Raise train.max_length or shorten the prompts."
        )
    examples.warnings = warnings
    stats = {
        "name": cfg.dataset.name,
        **settings,
        "train": parts["train"],
        "validation": parts["validation"],
        "skipped": len(examples.skipped),
        "warnings": warnings,
        "packed_sequences": written["train"].sequences if settings["packing"] else None,
    }
    return examples, stats


def _encode(run, split: str):
    from jinja2 import TemplateError

    try:
        return run()
    except TemplateError as exc:
        raise UserError(
            f"the chat template rejects a {split} conversation: {exc}. The template may require "
            "alternating user/assistant turns or a particular first role; fix the data or set "
            "model.chat_template."
        ) from None


def _write_run_files(run_dir: Path, stats: dict, examples: Examples, key: str, hit: bool, folder: Path) -> None:
    from trainer.data.validate import write_list
    from trainer.run import atomic

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
