"""What a finished run leaves for people: metrics.json, examples.jsonl, history.json, loss_curve.png, report.md
and report.html.

The evaluation keeps every example's answer and scores (``per_example`` in each section); the report moves them
into examples.jsonl (one line per held-out example, every section's answer side by side), compares every pair of
sections with paired statistics (:mod:`trainer.evaluation.stats`), counts the flips and shows the worst regressions.
What the report says lives here; :mod:`trainer.report.files` writes the files (report.md from here, report.html from
:mod:`trainer.report.html`), and ``hydratune report RUN_DIR`` rebuilds them (:func:`trainer.report.files.rebuild`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from trainer.evaluation import stats

SECTIONS = ("control", "base", "few_shot", "finetuned")
_HEADINGS = {
    "control": "random-weight control",
    "base": "base model",
    "few_shot": "base + few-shot prompt",
    "finetuned": "fine-tuned",
}
#: What each pair metric is, for the verdict that names its headline.
PAIR_METRICS = {
    "pair_accuracy_mean": "pair accuracy on the per-token mean log-probability, which answer length does not decide",
    "pair_accuracy_matched": "pair accuracy over the {pairs_matched} pairs whose answers' token counts differ by under "
    "10%",
    "pair_accuracy": "pair accuracy on the summed log-probability (or a reward model's score)",
}
#: chosen answers shorter in at least this share of the pairs (or at most 1 - it): summed scores measure length.
LENGTH_BIAS = 0.7
# Lower is better for these; every other metric is higher-is-better.
LOWER_IS_BETTER = {"eval_loss", "perplexity", "prompt_tokens_per_query", "answer_tokens_per_query"}
#: The metric the headline verdict and the flips are about: the first of these that was scored per example.
PRIMARY = ("exact_match", "token_f1")
#: metrics.json keys rendered by the report itself (everything else is shown as JSON at the end).
ANALYSIS_KEYS = ("comparisons", "flips", "break_even", "regression", "judge")
WORST = 5


# ---------------------------------------------------------------- per-example records and their analysis


def section_order(metrics: dict) -> list[str]:
    """control (the random-weight validity probe), base, few_shot, each compared model (``compare.<name>``),
    finetuned last: each later section is compared with every earlier one, so the fine-tuned model is compared with
    everything."""
    others = [f"compare.{name}" for name, _ in compared(metrics)]
    order = ("control", "base", "few_shot", *others, "finetuned")
    return [s for s in order if isinstance(section(metrics, s), dict)]


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
    """Add ``comparisons`` (every pair of sections, every metric: the generated answers' and, from each section's
    ``per_pair``, the preference pairs') and ``flips`` to ``metrics`` (in place)."""
    order = section_order(metrics)
    scores = section_scores(examples, order)
    for key in order:
        per_pair = (section(metrics, key) or {}).get("per_pair") or {}
        if per_pair:
            scores.setdefault(key, {}).update(per_pair)
    if len(scores) < 2:
        return
    metrics["comparisons"] = [c.to_dict() for c in stats.compare_sections(scores, order)]
    metrics["flips"] = flips(examples, metrics["comparisons"]) + pair_flips(metrics)


def pair_flips(metrics: dict) -> list[dict]:
    """The headline pair accuracy's flips, fine-tuned against the base model: pairs the fine-tuned model ranks
    right and the base wrong, and the other way round."""
    name, _ = headline_metric(metrics)
    for c in metrics.get("comparisons") or []:
        if name in PAIR_METRICS and (c["reference"], c["candidate"], c["metric"]) == ("base", "finetuned", name):
            gained, lost = c["gained"], c["lost"]
            return [
                {
                    "reference": "base",
                    "metric": name,
                    "n": c["n"],
                    "wrong_to_right": gained,
                    "right_to_wrong": lost,
                    "improved": gained,
                    "regressed": lost,
                    "worst": [],
                }
            ]
    return []


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
    evals = [(h["step"], v) for h in history if "step" in h for k, v in h.items() if _is_eval_loss(k)]
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
    from trainer.run import atomic

    with atomic.open_atomic(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path


def _is_eval_loss(key: str) -> bool:
    """eval_loss (TRL's periodic evaluation), eval_base_loss and eval_finetuned_loss (the report's)."""
    return key == "eval_loss" or key in ("eval_base_loss", "eval_finetuned_loss")


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


def headline_metric(metrics: dict) -> tuple[str | None, list[str]]:
    """The metric the verdict is about: the first of metrics.json ``objective.headline`` (pair_accuracy_mean for
    DPO, the reward for GRPO ...; exact_match, token_f1, eval_loss for supervised fine-tuning) that the base and the
    fine-tuned model both have and that the control does not expose (:func:`invalid`); and a note on each headline
    metric the control exposes, and on the data's length confound."""
    base, tuned = metrics.get("base") or {}, metrics.get("finetuned") or {}
    wanted = (metrics.get("objective") or {}).get("headline") or ["exact_match", "token_f1", "eval_loss"]
    notes = [note] if (note := length_note(metrics)) else []
    chosen = None
    for name in wanted:
        if name not in base or name not in tuned:
            continue
        problem = invalid(metrics, name)
        if problem is not None:  # every headline metric the control exposes is named, not only those before it
            notes.append(f"{name}: {problem}.")
        elif chosen is None:
            chosen = name
    return chosen, notes


def invalid(metrics: dict, name: str) -> str | None:
    """Why the control says ``name`` does not measure the task on this data, or None: a pair accuracy that a model
    with random weights scores off chance (it follows length or format, not preference), or any other metric the
    control scores as high as the base and fine-tuned models."""
    control = metrics.get("control")
    if not isinstance(control, dict) or not isinstance(control.get(name), int | float):
        return None
    value = control[name]
    wins = (control.get("per_pair") or {}).get(name)
    if name in PAIR_METRICS and wins:
        p = stats.against_chance(wins)
        if p >= stats.ALPHA:
            return None
        return (
            "this metric does not measure the task on this data: a model with random weights (the control) already "
            f"scores {value:.4f} on it, where chance is 0.5 (binomial test p {stats.p_text(p)}, n = {len(wins)})"
        )
    if name in LOWER_IS_BETTER or name.startswith("pair_"):
        return None
    models = [
        metrics[s][name] for s in ("base", "finetuned") if isinstance((metrics.get(s) or {}).get(name), int | float)
    ]
    if value > 0 and models and value >= max(models):
        return (
            f"this metric does not measure the task on this data: a model with random weights (the control) scores "
            f"{value:.4f}, as much as the base and fine-tuned models"
        )
    return None


def length_note(metrics: dict) -> str | None:
    """The length confound of the held-out pairs, when the chosen answer is mostly the shorter (or the longer)."""
    pairs = metrics.get("base") or metrics.get("finetuned") or {}
    share = pairs.get("chosen_shorter")
    if not isinstance(share, float) or pairs.get("pairs", 0) < 10 or 1 - LENGTH_BIAS < share < LENGTH_BIAS:
        return None
    return (
        f"Length confound: the chosen answer is the shorter one in {share:.0%} of the held-out pairs with unequal "
        "lengths; a summed log-probability favours the shorter answer, so pair_accuracy and pair_margin measure "
        "length on this data (pair_accuracy_mean and pair_accuracy_matched do not)."
    )


def _comparison(metrics: dict, name: str | None, reference: str) -> dict | None:
    for c in metrics.get("comparisons") or []:
        if (c["reference"], c["candidate"], c["metric"]) == (reference, "finetuned", name):
            return c
    return None


def headline(metrics: dict) -> dict | None:
    """The comparison the verdict is about: fine-tuned against base (else few-shot) on the headline metric; a
    significant gain that the fine-tuned model does not also have over the control is no win (verdict
    ``no significant difference``)."""
    name, _ = headline_metric(metrics)
    c = _comparison(metrics, name, "base") or _comparison(metrics, name, "few_shot")
    control = _comparison(metrics, name, "control")
    if c is not None and c["verdict"] == "better" and control is not None and control["verdict"] != "better":
        return c | {"verdict": "no significant difference", "control": control}
    return c


def verdict(metrics: dict) -> str:
    """One paragraph: did the fine-tuned model beat the base model on the headline metric (:func:`headline_metric`),
    with the 95% CI and the paired test, and the notes on the metrics that the control exposed; first, the ship
    check's flag when a deployed artifact answers differently (trainer.report.ship_check_table)."""
    from trainer.report import ship_check_table

    return ship_check_table.flag(metrics) + _verdict(metrics)


def _verdict(metrics: dict) -> str:
    base, tuned = metrics.get("base") or {}, metrics.get("finetuned") or {}
    name, notes = headline_metric(metrics)
    tail = "".join(f" {n}" for n in notes)
    what = PAIR_METRICS.get(name or "", "").format(pairs_matched=base.get("pairs_matched"))
    called = f"{name} ({what})" if what else name
    c = headline(metrics)
    if c is not None:
        word = {"better": "beat", "worse": "was WORSE than"}.get(c["verdict"], "did NOT beat")
        lead = f"**The fine-tuned model {word} the {heading(c['reference'])} on {called}**"
        detail = stats.Comparison(**{k: v for k, v in c.items() if k != "control"}).sentence(_HEADINGS)
        detail = detail.split(": ", 1)[1]
        if "control" in c:
            detail += (
                f" It does not beat the {heading('control')} on it either way: "
                + stats.Comparison(**c["control"]).sentence(_HEADINGS).split(": ", 1)[1]
            )
        return f"{lead}: {detail}{tail}"
    if name is not None:
        better = tuned[name] < base[name] if name in LOWER_IS_BETTER else tuned[name] > base[name]
        word = "beat" if better else "did NOT beat"
        return (
            f"**The fine-tuned model {word} the base model on {called}** ({_fmt(base[name])} -> {_fmt(tuned[name])}; "
            f"no per-example scores, so no confidence interval).{tail}"
        )
    if notes:
        return f"**No headline metric measures the task on this data**, so no verdict.{tail}"
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
        from trainer.evaluation import cost

        lines += ["## Cost and break-even", "", *cost.markdown(metrics["break_even"]), ""]
    if metrics.get("estimate"):
        from trainer.report import estimate_table

        lines += ["## Time and memory: pre-flight estimate vs measured", ""]
        lines += [*estimate_table.rows(metrics["estimate"], metrics.get("hardware")), ""]
    if plot is not None:
        lines += [f"![loss curve]({plot.name})", ""]
    lines += serving_lines(metrics.get("serving"))
    if metrics.get("ship_check"):
        from trainer.report import ship_check_table

        lines += ship_check_table.markdown(metrics["ship_check"])
    for key, value in metrics.items():
        if key not in (*SECTIONS, *ANALYSIS_KEYS, "compare", "serving", "estimate", "ship_check"):
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
