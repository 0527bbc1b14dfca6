"""What a finished run leaves for people: metrics.json, examples.jsonl, history.json, loss_curve.png, report.md
and report.html.

The evaluation keeps every example's answer and scores (``per_example`` in each section); the report moves them
into examples.jsonl (one line per held-out example, every section's answer side by side), compares every pair of
sections with paired statistics (:mod:`trainer.stats`), counts the flips and shows the worst regressions.
What the report says lives here; :mod:`trainer.report_files` writes the files (report.md from here, report.html from
:mod:`trainer.report_html`), and ``hydratune report RUN_DIR`` rebuilds them (:func:`trainer.report_files.rebuild`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from trainer import stats

SECTIONS = ("base", "few_shot", "finetuned")
_HEADINGS = {"base": "base model", "few_shot": "base + few-shot prompt", "finetuned": "fine-tuned"}
# Lower is better for these; every other metric is higher-is-better.
LOWER_IS_BETTER = {"eval_loss", "perplexity", "prompt_tokens_per_query", "answer_tokens_per_query"}
#: The metric the headline verdict and the flips are about: the first of these that was scored per example.
PRIMARY = ("exact_match", "token_f1")
#: metrics.json keys rendered by the report itself (everything else is shown as JSON at the end).
ANALYSIS_KEYS = ("comparisons", "flips", "break_even", "regression", "judge")
WORST = 5


# ---------------------------------------------------------------- per-example records and their analysis


def section_order(metrics: dict) -> list[str]:
    """base, few_shot, each compared model (``compare.<name>``), finetuned last: each later section is compared with
    every earlier one, so the fine-tuned model is compared with everything."""
    others = [f"compare.{name}" for name, _ in compared(metrics)]
    return [s for s in ("base", "few_shot", *others, "finetuned") if isinstance(section(metrics, s), dict)]


def section(metrics: dict, key: str) -> dict | None:
    """``base`` -> metrics["base"]; ``compare.NAME`` -> metrics["compare"]["NAME"]."""
    if key.startswith("compare."):
        return (metrics.get("compare") or {}).get(key.removeprefix("compare."))
    return metrics.get(key)


def pop_examples(metrics: dict) -> list[dict]:
    """Move each section's ``per_example`` lists out of ``metrics``; returns one row per example:
    ``{"index", "prompt", "reference", "answers": {section: {"prediction", "scores", ...}}}``."""
    rows: list[dict] = []
    for key in section_order(metrics):
        per = (section(metrics, key) or {}).pop("per_example", None)
        if not per:
            continue
        answer_tokens = per.get("answer_tokens") or [None] * len(per["prediction"])
        for i, prediction in enumerate(per["prediction"]):
            if i == len(rows):
                rows.append({"index": i, "prompt": per["prompt"][i], "reference": per["reference"][i], "answers": {}})
            elif key in ("base", "finetuned"):
                rows[i]["prompt"] = per["prompt"][i]  # the plain question rather than a few-shot prompt
            rows[i]["answers"][key] = {
                "prediction": prediction,
                "scores": {m: v[i] for m, v in per["scores"].items()},
                "prompt_tokens": per["prompt_tokens"][i],
                "answer_tokens": answer_tokens[i],
            }
    return rows


def section_scores(examples: list[dict], order: list[str]) -> dict[str, dict[str, list[float]]]:
    """section -> metric -> scores in example order (over the leading examples every one of them answered)."""
    out: dict[str, dict[str, list[float]]] = {}
    for section in order:
        answered = [row["answers"][section] for row in examples if section in row["answers"]]
        if answered:
            out[section] = {m: [a["scores"][m] for a in answered] for m in answered[0]["scores"]}
    return out


def analyse(metrics: dict, examples: list[dict]) -> None:
    """Add ``comparisons`` (every pair of sections, every metric) and ``flips`` to ``metrics`` (in place)."""
    order = section_order(metrics)
    scores = section_scores(examples, order)
    if len(scores) < 2:
        return
    metrics["comparisons"] = [c.to_dict() for c in stats.compare_sections(scores, order)]
    metrics["flips"] = flips(examples, metrics["comparisons"])


def primary_metric(comparisons: list[dict]) -> str | None:
    names = [c["metric"] for c in comparisons]
    return next((m for m in PRIMARY if m in names), names[0] if names else None)


def flips(examples: list[dict], comparisons: list[dict]) -> list[dict]:
    """For the fine-tuned model against each earlier section: wrong -> right and right -> wrong counts on the 0/1
    metric, and the worst regressions (largest drop in the primary metric, then in the others)."""
    out = []
    metric = primary_metric(comparisons)
    for c in comparisons:
        if c["candidate"] != "finetuned" or c["metric"] != metric:
            continue
        ref = c["reference"]
        both = [row for row in examples if ref in row["answers"] and "finetuned" in row["answers"]]

        def drop(row: dict, ref: str = ref) -> tuple:
            before, after = row["answers"][ref]["scores"], row["answers"]["finetuned"]["scores"]
            return tuple(before[m] - after[m] for m in [metric] + [m for m in before if m != metric])

        worst = sorted((row for row in both if drop(row)[0] > 0), key=drop, reverse=True)[:WORST]
        out.append(
            {
                "reference": ref,
                "metric": metric,
                "n": len(both),
                "wrong_to_right": c["gained"],
                "right_to_wrong": c["lost"],
                "improved": sum(drop(r)[0] < 0 for r in both),
                "regressed": sum(drop(r)[0] > 0 for r in both),
                "worst": [
                    {
                        "index": r["index"],
                        "prompt": r["prompt"],
                        "reference": r["reference"],
                        "before": r["answers"][ref]["prediction"],
                        "after": r["answers"]["finetuned"]["prediction"],
                        "score_before": r["answers"][ref]["scores"][metric],
                        "score_after": r["answers"]["finetuned"]["scores"][metric],
                    }
                    for r in worst
                ],
            }
        )
    return out


# ---------------------------------------------------------------- markdown


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


def heading(section: str) -> str:
    return _HEADINGS.get(section, section.removeprefix("compare."))


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
    for values in [metrics[s] for s in sections] + [values for _, values in others]:
        names += [k for k, v in values.items() if isinstance(v, int | float) and k not in names]
    rows = []
    for name in names:
        cells = [_fmt(metrics[s].get(name)) for s in sections]
        if change:
            same_data = name in ("examples", "pairs")  # a count, not a score: no change to show
            cells.append("-" if same_data else _delta(metrics["base"].get(name), metrics["finetuned"].get(name), name))
        cells += [_fmt(values.get(name)) for _, values in others]
        rows.append((name, cells))
    headings = [heading(s) for s in sections] + (["change"] if change else []) + [name for name, _ in others]
    return headings, rows


def headline(metrics: dict) -> dict | None:
    """The comparison the verdict is about: fine-tuned against base on the primary metric."""
    comparisons = [c for c in metrics.get("comparisons") or [] if c["candidate"] == "finetuned"]
    metric = primary_metric(comparisons)
    for reference in ("base", "few_shot"):
        for c in comparisons:
            if c["reference"] == reference and c["metric"] == metric:
                return c
    return None


def verdict(metrics: dict) -> str:
    """About the objective's headline metric (metrics.json ``objective.headline``: pair_accuracy for DPO, the mean
    reward for GRPO ...; exact_match, token_f1, eval_loss for supervised fine-tuning), the first one both have."""
    base, tuned = metrics.get("base") or {}, metrics.get("finetuned") or {}
    wanted = (metrics.get("objective") or {}).get("headline") or ["exact_match", "token_f1", "eval_loss"]
    first = next((name for name in wanted if name in base and name in tuned), None)
    c = headline(metrics)
    if c is not None and (first is None or c["metric"] == first):
        word = {"better": "beat", "worse": "was WORSE than"}.get(c["verdict"], "did NOT beat")
        lead = f"**The fine-tuned model {word} the {heading(c['reference'])} on {c['metric']}**"
        detail = stats.Comparison(**c).sentence(_HEADINGS).split(": ", 1)[1]
        return f"{lead}: {detail}"
    for name in wanted:
        if name in base and name in tuned:
            better = tuned[name] < base[name] if name in LOWER_IS_BETTER else tuned[name] > base[name]
            word = "beat" if better else "did NOT beat"
            return (
                f"**The fine-tuned model {word} the base model on {name}** ({_fmt(base[name])} -> {_fmt(tuned[name])}; "
                "no per-example scores, so no confidence interval)."
            )
    return "No base-model evaluation to compare with (eval.compare_base=false or eval=none)."


def verdict_cell(c: dict) -> str:
    if c["verdict"] != "no significant difference":
        return c["verdict"]
    need = f", ~{c['examples_needed']} examples would resolve it" if c.get("examples_needed") else ""
    return f"no significant difference at n={c['n']}{need}"


def render_markdown(metrics: dict, title: str, plot: Path | None, examples: list[dict] | None = None) -> str:
    lines = [f"# {title}", "", verdict(metrics), ""]
    headings, rows = comparison_rows(metrics)
    if rows:
        lines += ["| metric | " + " | ".join(headings) + " |", "|---" * (len(headings) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
        lines.append("")
    comparisons = metrics.get("comparisons") or []
    if comparisons:
        lines += [
            "## Paired comparisons",
            "",
            "Same held-out examples for every model; difference = candidate - reference, with a percentile bootstrap "
            f"95% CI (seed {stats.SEED}); McNemar's exact test for 0/1 metrics, a paired permutation test otherwise.",
            "",
            "| candidate | reference | metric | difference | 95% CI | test | p | verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {heading(c['candidate'])} | {heading(c['reference'])} | {c['metric']} | {c['difference']:+.4f} | "
            f"{stats.interval(c['ci_low'], c['ci_high'])} | {c['test']} | {stats.format_p(c['p_value'])} | {verdict_cell(c)} |"
            for c in comparisons
        ]
        lines.append("")
    for f in metrics.get("flips") or []:
        lines += flips_markdown(f)
    for key in ("regression", "judge"):
        block = metrics.get(key)
        if isinstance(block, dict) and block.get("lines"):
            lines += [f"## {block.get('title', key)}", "", *(f"- {line}" for line in block["lines"]), ""]
    if metrics.get("break_even"):
        from trainer import cost

        lines += ["## Cost and break-even", "", *cost.markdown(metrics["break_even"]), ""]
    if metrics.get("estimate"):
        from trainer import estimate

        lines += ["## Time and memory: pre-flight estimate vs measured", ""]
        lines += [*estimate.markdown(metrics["estimate"], metrics.get("hardware")), ""]
    if plot is not None:
        lines += [f"![loss curve]({plot.name})", ""]
    lines += serving_lines(metrics.get("serving"))
    for key, value in metrics.items():
        if key not in (*SECTIONS, *ANALYSIS_KEYS, "compare", "serving", "estimate"):
            lines += [f"## {key}", "", "```", json.dumps(value, indent=2, default=str), "```", ""]
    samples = (metrics.get("finetuned") or {}).get("samples") or []
    if samples:
        lines += ["## Sample answers of the fine-tuned model", ""]
        for s in samples:
            lines += [f"- prediction: `{_code(s['prediction'])}`", f"  reference: `{_code(s['reference'])}`"]
        lines.append("")
    if examples:
        lines += ["Every example's answers and scores: examples.jsonl; the searchable table: report.html.", ""]
    return "\n".join(lines)


def flips_markdown(f: dict) -> list[str]:
    ref = heading(f["reference"])
    lines = [f"## Flips: fine-tuned vs {ref} ({f['metric']}, n = {f['n']})", ""]
    if f["wrong_to_right"] is not None:
        lines.append(f"- wrong -> right: **{f['wrong_to_right']}**; right -> wrong: **{f['right_to_wrong']}**")
    lines += [f"- scored higher: {f['improved']}; scored lower: {f['regressed']}", ""]
    if f["worst"]:
        lines += [f"Worst regressions (largest drop in {f['metric']}):", ""]
        for w in f["worst"]:
            lines += [
                f"{w['index']}. prompt: `{_code(w['prompt'][-200:])}`",
                f"   - {ref} ({w['score_before']:.2f}): `{_code(w['before'])}`",
                f"   - fine-tuned ({w['score_after']:.2f}): `{_code(w['after'])}`",
                f"   - reference: `{_code(w['reference'])}`",
            ]
        lines.append("")
    return lines


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


def _code(text: str) -> str:
    return " ".join(str(text).split())[:200].replace("`", "'")


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
