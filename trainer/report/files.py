"""The files a finished run leaves for people: metrics.json, examples.jsonl, history.json, loss_curve.png, report.md
(:mod:`trainer.report.markdown`) and report.html (:mod:`trainer.report.html`); and their rebuild from the saved files
(``hydratune report RUN_DIR``)."""

from __future__ import annotations

import json
from pathlib import Path

from trainer.report import html as report_html
from trainer.report.markdown import analyse, plot_losses, pop_examples, render_markdown
from trainer.run import atomic


def write_report(run_dir: Path, metrics: dict, history: list[dict], title: str) -> None:
    """Write metrics.json (all sections, the comparisons and flips), examples.jsonl, history.json (the title and the
    training log), loss_curve.png (when there is a history), report.md and report.html."""
    run_dir = Path(run_dir)
    examples = pop_examples(metrics)
    analyse(metrics, examples)
    with atomic.open_atomic(run_dir / "examples.jsonl") as f:
        f.writelines(json.dumps(row) + "\n" for row in examples)
    atomic.write_json(run_dir / "history.json", {"title": title, "log_history": history}, indent=None, default=str)
    render(run_dir, metrics, examples, history, title)
    atomic.write_json(run_dir / "metrics.json", metrics, default=str)  # last: it marks the run's results complete


def rebuild(run_dir: Path) -> Path:
    """report.md and report.html again from metrics.json, examples.jsonl and history.json; returns report.html."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    examples = read_examples(run_dir)
    saved = json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").is_file() else {}
    analyse(metrics, examples)
    title = saved.get("title") or f"hydratune run: {run_dir.name}"
    return render(run_dir, metrics, examples, saved.get("log_history") or [], title)


def render(run_dir: Path, metrics: dict, examples: list[dict], history: list[dict], title: str) -> Path:
    plot = plot_losses(history, run_dir / "loss_curve.png")
    atomic.write_text(run_dir / "report.md", render_markdown(metrics, title, plot, examples))
    html = run_dir / "report.html"
    atomic.write_text(html, report_html.run_page(metrics, title, plot, examples))
    return html


def read_examples(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "examples.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
