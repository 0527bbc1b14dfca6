"""`hydratune prepare hardware=openai`: dataset -> provider JSONL, validated, token-counted and priced."""

from __future__ import annotations

import gc
import logging
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launchers.cloud import lifecycle, pricing, provider_data, tokens
from launchers.cloud import provider as provider_api
from trainer.engine import objectives
from trainer.run import atomic

log = logging.getLogger(__name__)
TRAIN_FILE, VALIDATION_FILE, ESTIMATE_FILE = "provider_train.jsonl", "provider_validation.jsonl", "cloud_estimate.json"


@dataclass
class Prepared:
    train_rows: list[dict[str, Any]]
    validation_rows: list[dict[str, Any]]
    train_path: Path
    train_sha256: str
    validation_path: Path | None
    validation_sha256: str | None
    estimate: pricing.Estimate
    stats: dict[str, Any] = field(default_factory=dict)
    #: The model's retirement dates at this provider (None when none are known).
    lifecycle: lifecycle.Lifecycle | None = None
    #: The canonical rows (trainer.data.Examples): evaluation builds its queries from them, as local runs do.
    examples: Any = None


def load_examples(dataset_cfg: Any, run_dir: Path) -> Any:
    from trainer.data import load_examples as load

    return load(dataset_cfg, report_dir=run_dir)


def prepare(cfg: Any, run_dir: Path) -> Prepared:
    with _no_cycle_collection():
        return _prepare(cfg, run_dir)


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Parsed rows are millions of small, acyclic objects: the collector's full passes over them find nothing and
    cost about 0.3 s of 4 on 100,000 rows, so it is off while we read and count (and back on after)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _prepare(cfg: Any, run_dir: Path) -> Prepared:
    hw = cfg.hardware
    examples = load_examples(cfg.dataset, run_dir)
    for warning in examples.warnings:
        log.warning("%s", warning)
    if examples.skipped:
        log.warning("%d row(s) skipped (dataset.on_error=skip)", len(examples.skipped))
    method = objectives.provider_method(cfg)
    provider = provider_api.get(hw)
    tools = getattr(provider, "tools", False)  # it trains function calling from the rows' tools and calls
    train = provider_data.convert(list(examples.train), method, tools)
    validation = provider_data.convert(list(examples.validation), method, tools)
    provider_data.raise_if_invalid(
        provider_data.validate(train, "train") + provider_data.validate(validation, "validation")
    )
    enc = tokens.get_encoding(cfg.model.encoding)
    counts, assistant = tokens.count_examples(train, enc, str(hw.provider))
    model = provider.model_name(cfg)
    estimate = pricing.estimate(model, counts, cfg.model.max_context, provider.epochs(cfg), provider.price_table(cfg))
    stats = _stats(train, counts, assistant)
    run_dir.mkdir(parents=True, exist_ok=True)
    train_sha = provider_data.write_jsonl(run_dir / TRAIN_FILE, train)
    val_path = run_dir / VALIDATION_FILE if validation else None
    val_sha = provider_data.write_jsonl(val_path, validation) if val_path else None
    life = lifecycle.lifecycle(cfg)
    estimate_file = {"estimate": estimate.as_dict(), "stats": stats, "lifecycle": life.as_dict() if life else None}
    atomic.write_json(run_dir / ESTIMATE_FILE, estimate_file)
    print(
        f"hydratune: {hw.provider} {model}: {len(train)} training / {len(validation)} validation examples; "
        f"tokens per example min {stats['tokens']['min']}, mean {stats['tokens']['mean']:.0f}, "
        f"max {stats['tokens']['max']} ({cfg.model.encoding})."
    )
    print(f"hydratune: cost estimate: {estimate.summary()}")
    if life is not None and life.closing_soon:
        print(f"hydratune: WARNING: {life.warning()}")
        log.warning("%s", life.warning())
    return Prepared(
        train, validation, run_dir / TRAIN_FILE, train_sha, val_path, val_sha, estimate, stats, life, examples
    )


def _stats(rows: list[dict[str, Any]], counts: list[int], assistant: list[int]) -> dict[str, Any]:
    def summary(values: list[int]) -> dict[str, float]:
        if not values:
            return {"min": 0, "mean": 0.0, "median": 0.0, "max": 0}
        return {
            "min": min(values),
            "mean": statistics.fmean(values),
            "median": statistics.median(values),
            "max": max(values),
        }

    return {"examples": len(rows), "tokens": summary(counts), "assistant_tokens": summary(assistant)}
