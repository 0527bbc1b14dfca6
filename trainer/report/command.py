"""``hydratune report DIR [DIR...] [--out FILE]``: rebuild report.md and report.html of a run or a sweep from the
files it left, and, given several runs, write one page that compares them side by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trainer.config.errors import UserError


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="hydratune report", description=__doc__)
    parser.add_argument("dirs", nargs="+", type=Path, help="run dirs (with metrics.json) or sweep dirs")
    parser.add_argument("--out", type=Path, default=Path("hydratune-compare.html"), help="side-by-side page (runs)")
    args = parser.parse_args(argv)
    pages = [rebuild(d) for d in args.dirs]
    for page in pages:
        print(page)
    runs = [d for d in args.dirs if (d / "metrics.json").is_file()]
    if len(runs) > 1:
        from trainer.report import html as report_html

        reports = [json.loads((d / "metrics.json").read_text()) for d in runs]
        titles = [_title(d) for d in runs]
        args.out.write_text(report_html.compare_page(runs, reports, titles))
        print(args.out)


def rebuild(path: Path) -> Path:
    from trainer.report import files as report_files
    from trainer.report import sweeps

    if (path / "metrics.json").is_file():
        return report_files.rebuild(path)
    runs = [p.parent for name in ("status.json", "overrides.json") for p in path.glob(f"*/{name}")]
    if runs:
        metric, direction = objective_of(sorted(set(runs)))
        sweeps.write_summary(path, metric, direction)
        return path / "report.html"
    raise UserError(
        f"{path} is neither a run dir (no metrics.json: the run has not finished, or this is not its folder) nor a "
        "sweep dir (no sub-folder with status.json or overrides.json). Pass the folder a run or a sweep wrote "
        "(outputs/<run>/<time> or multirun/<run>/<time>)."
    )


def objective_of(run_dirs: list[Path]) -> tuple[str, str]:
    """The sweep's objective metric and direction, as its runs recorded them (config.yaml, status.json)."""
    from omegaconf import DictConfig, OmegaConf

    for run in run_dirs:
        if (run / "config.yaml").is_file():
            cfg = OmegaConf.load(run / "config.yaml")
            if not isinstance(cfg, DictConfig):
                continue
            if "optimize" in cfg:
                return str(cfg.optimize.metric), str(cfg.optimize.direction)
            if "metric" in (cfg.get("objective") or {}):  # a run recorded before the sweep's key was renamed
                return str(cfg.objective.metric), str(cfg.objective.direction)
    return "finetuned.eval_loss", "minimize"


def _title(run_dir: Path) -> str:
    saved = run_dir / "history.json"
    return (json.loads(saved.read_text()).get("title") if saved.is_file() else None) or run_dir.name
