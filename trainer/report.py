"""What a finished run leaves for people: metrics.json, loss_curve.png and report.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

SECTIONS = ("base", "few_shot", "finetuned")
_HEADINGS = {"base": "base model", "few_shot": "base + few-shot prompt", "finetuned": "fine-tuned"}
# Lower is better for these; every other metric is higher-is-better.
LOWER_IS_BETTER = {"eval_loss", "perplexity", "prompt_tokens_per_query"}


HEADLINE = ("exact_match", "token_f1", "eval_loss")


def write_report(run_dir: Path, metrics: dict, history: list[dict], title: str, headline=HEADLINE) -> None:
    """Write metrics.json (all sections), loss_curve.png (when there is a history) and report.md; the verdict
    states the first ``headline`` metric (the objective's, e.g. pair_accuracy for DPO) both sections have."""
    run_dir = Path(run_dir)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    plot = plot_losses(history, run_dir / "loss_curve.png")
    (run_dir / "report.md").write_text(render_markdown(metrics, title, plot, tuple(headline)))


def plot_losses(history: list[dict], path: Path) -> Path | None:
    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], v) for h in history if "step" in h for k, v in h.items() if k.endswith("eval_loss")]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="training loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o--", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def comparison_rows(metrics: dict) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The base-vs-fine-tuned table: column headings and one row per metric shared by the sections."""
    sections = [s for s in SECTIONS if isinstance(metrics.get(s), dict)]
    names: list[str] = []
    for s in sections:
        names += [k for k, v in metrics[s].items() if isinstance(v, int | float) and k not in names]
    rows = []
    for name in names:
        cells = [_fmt(metrics[s].get(name)) for s in sections]
        if "base" in sections and "finetuned" in sections:
            same_data = name in ("examples", "pairs")  # a count, not a score: no change to show
            cells.append("-" if same_data else _delta(metrics["base"].get(name), metrics["finetuned"].get(name), name))
        rows.append((name, cells))
    headings = [_HEADINGS[s] for s in sections] + (["change"] if {"base", "finetuned"} <= set(sections) else [])
    return headings, rows


def verdict(metrics: dict, headline=HEADLINE) -> str:
    base, tuned = metrics.get("base") or {}, metrics.get("finetuned") or {}
    for name in headline:
        if name in base and name in tuned:
            better = tuned[name] < base[name] if name in LOWER_IS_BETTER else tuned[name] > base[name]
            word = "beat" if better else "did NOT beat"
            return (
                f"**The fine-tuned model {word} the base model on {name}** ({_fmt(base[name])} -> {_fmt(tuned[name])})."
            )
    return "No base-model evaluation to compare with (eval.compare_base=false or eval=none)."


def render_markdown(metrics: dict, title: str, plot: Path | None, headline=HEADLINE) -> str:
    lines = [f"# {title}", "", verdict(metrics, headline), ""]
    headings, rows = comparison_rows(metrics)
    if rows:
        lines += ["| metric | " + " | ".join(headings) + " |", "|---" * (len(headings) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
        lines.append("")
    if plot is not None:
        lines += [f"![loss curve]({plot.name})", ""]
    for key, value in metrics.items():
        if key not in SECTIONS:
            lines += [f"## {key}", "", "```", json.dumps(value, indent=2, default=str), "```", ""]
    samples = (metrics.get("finetuned") or {}).get("samples") or []
    if samples:
        lines += ["## Sample answers of the fine-tuned model", ""]
        for s in samples:
            lines += [f"- prediction: `{s['prediction'].strip()[:200]}`", f"  reference: `{s['reference'][:200]}`"]
        lines.append("")
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def _delta(before, after, name: str) -> str:
    if not isinstance(before, int | float) or not isinstance(after, int | float):
        return "-"
    diff = after - before
    good = diff < 0 if name in LOWER_IS_BETTER else diff > 0
    return f"{diff:+.4f}" + (" (better)" if good and diff else "")
