"""report.html: one self-contained page per run, per sweep and per side-by-side comparison of several runs.

Jinja2 templates shipped in the package (trainer/templates/), CSS and JavaScript inline, plots embedded as base64
PNG: the page fetches nothing, so it can be mailed, attached to a pull request or opened offline.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from markupsafe import Markup, escape

from trainer.evaluation import stats
from trainer.report import markdown as report

_SHORT = {"base": "base", "few_shot": "few-shot", "finetuned": "tuned"}
#: Prompts longer than this show their last PROMPT_CLIP characters until expanded (the whole text on hover).
PROMPT_CLIP = 160


def environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    return Environment(
        loader=PackageLoader("trainer", "templates"),
        autoescape=select_autoescape(["html", "jinja"], default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def png_base64(path: Path | None) -> str | None:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii") if path and Path(path).is_file() else None


def bold(text: str) -> Markup:
    """Markdown's **bold** in an escaped string -> <strong>."""
    return Markup(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", str(escape(text))))


def verdict_class(verdict: str | None) -> str:
    return {"better": "better", "worse": "worse"}.get(verdict or "", "")


def run_page(metrics: dict, title: str, plot: Path | None, examples: list[dict]) -> str:
    headings, rows = report.comparison_rows(metrics)
    head = report.headline(metrics)
    comparisons = [
        {
            **c,
            "candidate": report.heading(c["candidate"]),
            "reference": report.heading(c["reference"]),
            "p": stats.format_p(c["p_value"]),
            "ci": stats.interval(c["ci_low"], c["ci_high"]),
            "verdict_text": report.verdict_cell(c),
            "verdict_class": verdict_class(c["verdict"]),
        }
        for c in metrics.get("comparisons") or []
    ]
    flips = [{**f, "reference_name": report.heading(f["reference"])} for f in metrics.get("flips") or []]
    order = report.section_order(metrics)
    present = [s for s in order if any(s in row["answers"] for row in examples)]
    example_sections = [
        {
            "key": s,
            "name": report.heading(s),
            "short": _SHORT.get(s, s),
            "metrics": list(next(row["answers"][s]["scores"] for row in examples if s in row["answers"])),
        }
        for s in present
    ]
    shown = set(order) | set(report.ANALYSIS_KEYS) | {"compare", "ship_check"}
    other = [(k, json.dumps(v, indent=2, default=str)) for k, v in metrics.items() if k not in shown]
    return (
        environment()
        .get_template("run.html.jinja")
        .render(
            title=title,
            verdict=bold(report.verdict(metrics)),
            verdict_class=verdict_class(head["verdict"] if head else None),
            metric_headings=headings,
            metric_rows=rows,
            comparisons=comparisons,
            seed=stats.SEED,
            flips=flips,
            break_even=_break_even(metrics.get("break_even")),
            extra_sections=extra_sections(metrics),
            ship_check=_ship_check(metrics.get("ship_check")),
            plot=png_base64(plot),
            examples=examples,
            example_sections=example_sections,
            clip=PROMPT_CLIP,
            other=other,
        )
    )


def _break_even(b: dict | None) -> dict | None:
    if not b:
        return None
    from trainer.evaluation import cost

    lines = cost.markdown(b)
    names = {"finetuned": "fine-tuned", "few_shot": f"base + {b['shots']}-shot prompt", "base": "base (zero-shot)"}
    return {
        "sentence": bold(lines[0]),
        "notes": [line.removeprefix("- ") for line in lines[2:4]],
        "rows": [(names.get(k, k), v) for k, v in b["per_1000_queries"].items()],
    }


def _ship_check(section: dict | None) -> dict | None:
    if not section:
        return None
    from trainer.report import ship_check_table

    lines = ship_check_table.markdown(section)
    return {
        "sentence": lines[2],
        "columns": ship_check_table.COLUMNS,
        "rows": ship_check_table.table(section),
        "problems": section["problems"],
    }


def extra_sections(metrics: dict) -> list[dict]:
    """Sections other modules add to metrics.json with a ``title`` and ``lines`` (regression probe, judge)."""
    out = []
    for key in ("regression", "judge"):
        block = metrics.get(key)
        if isinstance(block, dict) and block.get("lines"):
            out.append({"title": block.get("title", key), "lines": [bold(line) for line in block["lines"]]})
    return out


# ---------------------------------------------------------------- sweeps and side-by-side comparisons


def sweep_page(runs: list, header: list[str], rows: list[list[str]], metric: str, direction: str, plot: Path | None):
    best = next((r for r in runs if r.objective is not None), None)
    return (
        environment()
        .get_template("sweep.html.jinja")
        .render(
            title=f"Sweep summary: {metric} ({direction})",
            metric=metric,
            direction=direction,
            runs=runs,
            best=best,
            header=header,
            rows=rows,
            plot=png_base64(plot),
        )
    )


def compare_page(run_dirs: list[Path], reports: list[dict], titles: list[str]) -> str:
    """Several runs side by side: each one's verdict, every metric of every section, the break-even."""
    names: list[tuple[str, str]] = []
    for m in reports:
        for key in report.section_order(m):
            for k, v in (report.section(m, key) or {}).items():
                if isinstance(v, int | float) and (key, k) not in names:
                    names.append((key, k))
    rows = [(f"{key}.{k}", [report._fmt((report.section(m, key) or {}).get(k)) for m in reports]) for key, k in names]
    verdicts = [bold(report.verdict(m)) for m in reports]
    break_even = [m.get("break_even", {}) or {} for m in reports]
    return (
        environment()
        .get_template("compare.html.jinja")
        .render(
            title=f"{len(run_dirs)} runs side by side",
            runs=[{"name": d.name, "path": str(d), "title": t} for d, t in zip(run_dirs, titles, strict=True)],
            verdicts=verdicts,
            rows=rows,
            break_even=[b.get("break_even_queries") for b in break_even],
        )
    )
