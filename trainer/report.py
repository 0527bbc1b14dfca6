"""What a finished run leaves for people: metrics.json, loss_curve.png and report.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

SECTIONS = ("base", "few_shot", "finetuned")
_HEADINGS = {"base": "base model", "few_shot": "base + few-shot prompt", "finetuned": "fine-tuned"}
# Lower is better for these; every other metric is higher-is-better.
LOWER_IS_BETTER = {"eval_loss", "perplexity", "prompt_tokens_per_query"}


def write_report(run_dir: Path, metrics: dict, history: list[dict], title: str) -> None:
    """Write metrics.json (all sections), loss_curve.png (when there is a history) and report.md."""
    from trainer import atomic

    run_dir = Path(run_dir)
    plot = plot_losses(history, run_dir / "loss_curve.png")
    atomic.write_text(run_dir / "report.md", render_markdown(metrics, title, plot))
    atomic.write_json(run_dir / "metrics.json", metrics, default=str)  # last: it marks the run's results complete


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
    from trainer import atomic

    with atomic.open_atomic(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path


def compared(metrics: dict) -> list[tuple[str, dict]]:
    """(name, section) of each compared model (``compare.<name>``: eval.endpoint and eval.compare_models)."""
    return [(name, section) for name, section in (metrics.get("compare") or {}).items() if isinstance(section, dict)]


def comparison_rows(metrics: dict) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The base-vs-fine-tuned table: column headings and one row per metric of any column; the compared models'
    columns come after the change."""
    sections = [s for s in SECTIONS if isinstance(metrics.get(s), dict)]
    change = {"base", "finetuned"} <= set(sections)
    others = compared(metrics)
    names: list[str] = []
    for section in [metrics[s] for s in sections] + [section for _, section in others]:
        names += [k for k, v in section.items() if isinstance(v, int | float) and k not in names]
    rows = []
    for name in names:
        cells = [_fmt(metrics[s].get(name)) for s in sections]
        if change:
            same_data = name == "examples"  # a count, not a score: no change to show
            cells.append("-" if same_data else _delta(metrics["base"].get(name), metrics["finetuned"].get(name), name))
        cells += [_fmt(section.get(name)) for _, section in others]
        rows.append((name, cells))
    headings = [_HEADINGS[s] for s in sections] + (["change"] if change else []) + [name for name, _ in others]
    return headings, rows


def verdict(metrics: dict) -> str:
    base, tuned = metrics.get("base") or {}, metrics.get("finetuned") or {}
    for name in ("exact_match", "token_f1", "eval_loss"):
        if name in base and name in tuned:
            better = tuned[name] < base[name] if name in LOWER_IS_BETTER else tuned[name] > base[name]
            word = "beat" if better else "did NOT beat"
            return (
                f"**The fine-tuned model {word} the base model on {name}** ({_fmt(base[name])} -> {_fmt(tuned[name])})."
            )
    return "No base-model evaluation to compare with (eval.compare_base=false or eval=none)."


def render_markdown(metrics: dict, title: str, plot: Path | None) -> str:
    lines = [f"# {title}", "", verdict(metrics), ""]
    headings, rows = comparison_rows(metrics)
    if rows:
        lines += ["| metric | " + " | ".join(headings) + " |", "|---" * (len(headings) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
        lines.append("")
    if plot is not None:
        lines += [f"![loss curve]({plot.name})", ""]
    lines += serving_lines(metrics.get("serving"))
    for key, value in metrics.items():
        if key not in (*SECTIONS, "compare", "serving"):
            lines += [f"## {key}", "", "```", json.dumps(value, indent=2, default=str), "```", ""]
    samples = (metrics.get("finetuned") or {}).get("samples") or []
    if samples:
        lines += ["## Sample answers of the fine-tuned model", ""]
        for s in samples:
            lines += [f"- prediction: `{s['prediction'].strip()[:200]}`", f"  reference: `{s['reference'][:200]}`"]
        lines.append("")
    return "\n".join(lines)


def serving_lines(bench: dict | None) -> list[str]:
    """The `hydratune serve --bench` figures and the cost per 1,000 queries, as markdown tables."""
    if not bench:
        return []
    lines = [
        "## Serving (`hydratune serve --bench`)",
        "",
        f"{bench['engine']} serving `{bench['model']}` on {bench['cpu']}: {bench['clients']} concurrent clients for "
        f"{bench['seconds']:g} s, {bench['max_tokens']} new tokens at most per request.",
        "",
        "| requests | errors | requests/s | output tokens/s | latency p50 | latency p95 | TTFT p50 | TTFT p95 |",
        "|---|---|---|---|---|---|---|---|",
        f"| {bench['requests']} | {bench['errors']} | {bench['requests_per_s']:.3f} | {bench['output_tokens_per_s']:.1f} | "
        + " | ".join(_seconds(bench[k]) for k in ("latency_p50_s", "latency_p95_s", "ttft_p50_s", "ttft_p95_s"))
        + " |",
        "",
    ]
    costs = bench.get("cost_per_1k_queries") or []
    if costs:
        lines += ["| cost per 1,000 queries | USD | basis |", "|---|---|---|"]
        lines += [f"| {c['model']} | {c['usd_per_1k_queries']:.4f} | {c['basis']} |" for c in costs]
        lines.append("")
    return lines


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.3f} s"


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
