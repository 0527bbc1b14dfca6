"""The summary of a sweep: after ``hydratune -m ...`` (grid or hparams_search=...), one row per run.

Written into the sweep dir by the :class:`SweepCallback` Hydra callback (registered in conf/config.yaml):

- ``summary.csv`` and ``summary.md``: every run's overrides, status (ok / failed with the error), the objective
  and the other metrics, sorted by the objective (best first, failed runs last), plus how often the dataset was
  tokenized and the base model evaluated (cache misses) versus reused (cache hits);
- ``summary.png``: the objective against each swept parameter;
- ``report.html``: the same table, sortable, with that plot, in one self-contained page.

Rebuild it by hand (for a sweep that was interrupted, or a SLURM sweep read later):
``python -m trainer.report.sweeps SWEEP_DIR [METRIC] [minimize|maximize]``.

This module is imported at the start of every run (Hydra instantiates callbacks): it must stay light.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from trainer.run.threads import share, usable_cores

log = logging.getLogger(__name__)

SECTIONS = ("finetuned", "base", "few_shot")
#: metrics.json numbers shown as columns (when present), after the objective.
METRICS = ("eval_loss", "perplexity", "exact_match", "token_f1")
BASE_EVAL_HIT = "base evaluation cache hit"
#: evaluation.cached's log line names the cache file, whose name starts with what was cached: base, few_shot,
#: regression (the general-ability probe on the base model).
CACHE_HIT_FILE = re.compile(BASE_EVAL_HIT + r": (\w+)-[0-9a-f]{16}\.json")
#: The runs of the last sweep that did not end ok (the CLI then exits non-zero, after every run has finished).
FAILED: list[str] = []


@dataclass
class Run:
    name: str
    overrides: dict[str, str]
    status: str
    error: str = ""
    objective: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float | None = None
    #: "hit" / "miss" / "" (unknown: the run never got that far).
    dataset_cache: str = ""
    base_eval_cache: str = ""
    #: The regression probe's base-model answers (eval.regression), cached apart from the base evaluation.
    probe_cache: str = ""


class SweepCallback(Callback):
    """Hydra callback (conf/config.yaml, hydra.callbacks): sets each run's CPU threads when a multirun starts
    (parallel and SLURM launchers) and writes the sweep summary when it ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        FAILED.clear()
        share_threads(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        metric, direction = str(config.optimize.metric), config.optimize.direction
        FAILED[:] = [f"{r.name} ({r.status})" for r in read_runs(sweep_dir, metric) if r.status != "ok"]
        try:
            written = write_summary(sweep_dir, metric, getattr(direction, "name", str(direction)))
        except Exception:  # noqa: BLE001 - a summary problem must not turn a finished sweep into a failure
            log.exception("could not write the sweep summary in %s", sweep_dir)
            return
        log.info("sweep summary: %s", written)


def share_threads(config: DictConfig) -> None:
    """Add ``hardware.threads=N`` to the sweep's overrides (unless the command line sets hardware.threads) where
    "every core" would be wrong: with the parallel (joblib) launcher N = cores // n_jobs, so that n_jobs runs
    never start n_jobs x cores spin-waiting OpenMP threads. Not for runs submitted elsewhere (hardware.submit=slurm
    or skypilot): their processes run on the nodes they are given, not on the cores of this one. Every run then says
    in its config and overrides.json how many threads it used."""
    launcher = config.hydra.launcher
    target = str(launcher.get("_target_", ""))
    if "joblib" not in target or OmegaConf.select(config, "hardware.submit", default="local") != "local":
        return
    threads = threads_per_job(int(launcher.get("n_jobs") or -1), usable_cores()[0])
    task = config.hydra.overrides.task
    if any(str(o).lstrip("+~").startswith("hardware.threads=") for o in task):
        return
    with read_write(task):
        task.append(f"hardware.threads={threads}")
    log.info("%s: hardware.threads=%d for each run", target.rsplit(".", 1)[-1], threads)


def threads_per_job(n_jobs: int, cores: int) -> int:
    """The cores divided among the runs that run at once (joblib's n_jobs: -1 = one per core, -2 = all but one)."""
    at_once = n_jobs if n_jobs > 0 else cores + 1 + n_jobs
    return share(cores, at_once)


# ---------------------------------------------------------------- reading the runs


def read_runs(sweep_dir: Path, metric: str) -> list[Run]:
    """Every run dir of the sweep (a sub-folder with status.json or overrides.json), in job order."""
    found = {p.parent for name in ("status.json", "overrides.json") for p in Path(sweep_dir).glob(f"*/{name}")}
    folders = sorted(found, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))
    return [read_run(folder, metric) for folder in folders]


def read_run(run_dir: Path, metric: str) -> Run:
    from trainer.run.rundir import STATUS, objective

    status, metrics, overrides = (_json(run_dir / name) for name in (STATUS, "metrics.json", "overrides.json"))
    overrides = dict(_split(o) for o in (overrides or status.get("overrides") or []))
    run = Run(
        name=run_dir.name,
        overrides=overrides,
        # No status.json: the process died (killed, out of memory) or is still running.
        status=status.get("status", "incomplete"),
        error=status.get("error") or "",
        objective=objective(metrics, metric),
    )
    if "started" in status and "finished" in status:
        run.seconds = round(status["finished"] - status["started"], 1)
    for section in SECTIONS:
        for name in METRICS:
            value = objective(metrics, f"{section}.{name}")
            if value is not None and f"{section}.{name}" != metric:
                run.metrics[f"{section}.{name}"] = value
    data = metrics.get("data") or _json(run_dir / "data_stats.json")  # the latter: `hydratune prepare` runs
    if "cache_hit" in data:
        run.dataset_cache = "hit" if data["cache_hit"] else "miss"
    if "base" in metrics or "regression" in metrics:
        # evaluation.cached logs each hit with the file's name; a run with a base (or regression probe) section and
        # no hit for it evaluated the base model (or asked it the probe).
        logs = "".join(p.read_text(errors="replace") for p in run_dir.glob("*.log"))
        hits = set(CACHE_HIT_FILE.findall(logs))
        if "base" in metrics:
            run.base_eval_cache = "hit" if "base" in hits else "miss"
        if "regression" in metrics:
            run.probe_cache = "hit" if "regression" in hits else "miss"
    return run


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else {}


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def sort_runs(runs: list[Run], direction: str) -> list[Run]:
    """Runs with an objective first, best first; then the rest (failed, incomplete) in job order."""
    sign = -1.0 if direction == "maximize" else 1.0
    scored = sorted((r for r in runs if r.objective is not None), key=lambda r: sign * (r.objective or 0.0))
    return scored + [r for r in runs if r.objective is None]


def swept_keys(runs: list[Run]) -> list[str]:
    """The override keys whose value differs between runs (the parameters of the sweep)."""
    keys = list(dict.fromkeys(k for r in runs for k in r.overrides))
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


# ---------------------------------------------------------------- writing the summary


def write_summary(sweep_dir: Path, metric: str, direction: str) -> Path:
    """Write summary.csv, summary.md and summary.png into ``sweep_dir``; returns the markdown file."""
    sweep_dir = Path(sweep_dir)
    runs = sort_runs(read_runs(sweep_dir, metric), direction)
    swept = swept_keys(runs)
    keys = swept + [k for k in dict.fromkeys(k for r in runs for k in r.overrides) if k not in swept]
    metric_cols = list(dict.fromkeys(m for r in runs for m in r.metrics))
    caches = ["dataset_cache", "base_eval_cache"] + (["probe_cache"] if any(r.probe_cache for r in runs) else [])
    header = ["run", *keys, "status", metric, *metric_cols, "seconds", *caches, "error"]
    rows = [
        [
            r.name,
            *(r.overrides.get(k, "") for k in keys),
            r.status,
            _num(r.objective),
            *(_num(r.metrics.get(m)) for m in metric_cols),
            _num(r.seconds),
            *(getattr(r, c) for c in caches),
            r.error,
        ]
        for r in runs
    ]
    from trainer.run import atomic

    with atomic.open_atomic(sweep_dir / "summary.csv", "w") as f:
        csv.writer(f).writerows([header, *rows])
    plot = plot_objective(runs, swept_keys(runs), metric, sweep_dir / "summary.png")
    md = sweep_dir / "summary.md"
    # The markdown table leaves out the overrides every run shares; they are listed above it.
    fixed = {k: runs[0].overrides[k] for k in keys[len(swept) :] if all(k in r.overrides for r in runs)}
    shown = [i for i, name in enumerate(header) if name not in fixed]
    table = ([header[i] for i in shown], [[row[i] for i in shown] for row in rows])
    atomic.write_text(md, render_markdown(runs, *table, metric, direction, plot, fixed))
    from trainer.report import html as report_html

    atomic.write_text(sweep_dir / "report.html", report_html.sweep_page(runs, header, rows, metric, direction, plot))
    return md


def cache_counts(runs: list[Run], attr: str) -> tuple[int, int]:
    values = [getattr(r, attr) for r in runs]
    return values.count("miss"), values.count("hit")


def render_markdown(runs, header, rows, metric, direction, plot: Path | None, fixed: dict[str, str]) -> str:
    ok = [r for r in runs if r.status == "ok"]
    failed = [r for r in runs if r.status == "failed"]
    lines = [
        "# Sweep summary",
        "",
        f"{len(runs)} runs: {len(ok)} ok, {len(failed)} failed, {len(runs) - len(ok) - len(failed)} incomplete. "
        f"Objective: {metric} ({direction}), best first.",
        "",
    ]
    best = next((r for r in runs if r.objective is not None), None)
    if best is not None:
        settings = " ".join(f"{k}={best.overrides[k]}" for k in swept_keys(runs) if k in best.overrides)
        lines += [f"**Best: run {best.name}** ({metric} = {_num(best.objective)}): `{settings}`", ""]
    tokenized, dataset_hits = cache_counts(runs, "dataset_cache")
    evaluated, base_hits = cache_counts(runs, "base_eval_cache")
    asked, probe_hits = cache_counts(runs, "probe_cache")
    probe = (
        f"; regression probe asked of the base model {asked} time(s), reused from the cache {probe_hits} time(s)"
        if asked + probe_hits
        else ""
    )
    lines += [
        f"Dataset tokenized {tokenized} time(s), reused from the cache {dataset_hits} time(s); base model "
        f"evaluated {evaluated} time(s), reused from the cache {base_hits} time(s){probe}.",
        "",
        *([f"Every run: `{' '.join(f'{k}={v}' for k, v in fixed.items())}`", ""] if fixed else []),
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    if plot is not None:
        lines += ["", f"![{metric} against each swept parameter]({plot.name})"]
    for r in failed:
        lines += ["", f"- run {r.name} failed: {r.error}"]
    return "\n".join(lines) + "\n"


def plot_objective(runs: list[Run], keys: list[str], metric: str, path: Path) -> Path | None:
    """One panel per swept parameter: the objective of every run with an objective against its value."""
    scored = [r for r in runs if r.objective is not None]
    if not scored:
        return None
    keys = keys or ["run"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), dpi=110, squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        values = [r.name if key == "run" else r.overrides.get(key, "") for r in scored]
        numbers = [n for n in (_float(v) for v in values) if n is not None]
        if len(numbers) == len(values):
            ax.scatter(numbers, [r.objective for r in scored])
            if min(numbers) > 0 and max(numbers) / min(numbers) >= 10:
                ax.set_xscale("log")
        else:
            labels = sorted(set(values))
            ax.scatter([labels.index(v) for v in values], [r.objective for r in scored])
            ax.set_xticks(range(len(labels)), labels, rotation=20)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    from trainer.run import atomic

    with atomic.open_atomic(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path


def _float(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _cell(value: str) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def main(argv: list[str]) -> None:
    if not argv or argv[0].startswith("-"):
        sys.exit("usage: python -m trainer.report.sweeps SWEEP_DIR [METRIC] [minimize|maximize]")
    metric = argv[1] if len(argv) > 1 else "finetuned.eval_loss"
    direction = argv[2] if len(argv) > 2 else "minimize"
    print(write_summary(Path(argv[0]), metric, direction))


if __name__ == "__main__":
    main(sys.argv[1:])
