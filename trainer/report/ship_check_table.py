"""report.md/html's "Ship check" table (metrics.json ``ship_check``, trainer.engine.ship_check): each deployed
artifact's agreement with the in-process model, its metrics, stop rate and answer length; the verdict's flag."""

from __future__ import annotations

COLUMNS = ["artifact", "agreement with in-process", "metrics", "stop rate", "answer tokens", "note"]


def table(section: dict) -> list[list[str]]:
    """One row of cells per artifact (in-process first)."""
    out = []
    for name, row in section["rows"].items():
        if "error" in row:
            out.append([name, "-", "-", "-", "-", f"failed: {row['error'][:200]}"])
            continue
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in row["metrics"].items()) or "-"
        note = row.get("runtime") or row.get("engine") or ""
        cells = [f"{row['agreement']:.0%}", metrics, f"{row['stop_rate']:.0%}", f"{row['answer_tokens']:.1f}", note]
        out.append([name, *cells])
    return out


def markdown(section: dict) -> list[str]:
    lines = [
        "## Ship check",
        "",
        f"The {_examples(section)} held-out prompts, greedy, asked of each artifact a user deploys; agreement = exact "
        f"same answer as the in-process model (the one the verdict is about); stop rate = answers that ended on an "
        f"end-of-sequence token before eval.generation.max_new_tokens. The check took {section['seconds']:.1f} s.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|---" * len(COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in table(section)]
    lines += ["", *(f"- **{p}**" for p in section["problems"]), ""]
    return lines


def flag(metrics: dict) -> str:
    """The verdict's first words when a deployed artifact does not answer like the evaluated model."""
    section = metrics.get("ship_check") or {}
    if not section.get("problems"):
        return ""
    names = ", ".join(dict.fromkeys(p.split(":")[0].split(" ")[0] for p in section["problems"]))
    return f"**Ship check FAILED ({names}): what you deploy does not answer like the model evaluated below; see Ship check.** "


def _examples(section: dict) -> int:
    return next((r["examples"] for r in section["rows"].values() if "examples" in r), 0)
