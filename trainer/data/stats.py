"""Dataset statistics with the model's own tokenizer: printed, and saved as ``data_stats.json`` in the run dir."""

from __future__ import annotations

import numpy as np


def summary(values) -> dict:
    """min, mean, median, p90, max of a list of counts (zeros when empty)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"min": 0, "mean": 0.0, "median": 0.0, "p90": 0.0, "max": 0}
    return {
        "min": int(a.min()),
        "mean": round(float(a.mean()), 2),
        "median": float(np.median(a)),
        "p90": float(np.percentile(a, 90)),
        "max": int(a.max()),
    }


def split_stats(rows, tokens, loss_tokens, truncated: int, dropped: int, messages=None) -> dict:
    """``messages``: the message count of each chat row, when known (else counted from ``rows``)."""
    if messages is None:
        messages = [len(r["messages"]) for r in rows if "messages" in r]
    return {
        "examples": len(rows),
        "messages_per_example": summary(messages) if len(messages) else None,
        "tokens_per_example": summary(tokens),
        "assistant_tokens_per_example": summary(loss_tokens),
        "total_tokens": int(np.sum(tokens, dtype=np.int64)),
        "assistant_tokens": int(np.sum(loss_tokens, dtype=np.int64)),
        "truncated": truncated,
        "dropped_without_answer_tokens": dropped,
    }


COLUMNS = ("min", "mean", "median", "p90", "max")


def number(value) -> str:
    """A count as one readable token however large: 1234, 12.5, 5.83e+06 (columns never run together)."""
    if isinstance(value, int) and abs(value) < 10**9:
        return str(value)
    value = float(value)
    return f"{value:.1f}" if abs(value) < 10**7 else f"{value:.3g}"


def format_stats(stats: dict) -> str:
    """A short human-readable table of the statistics."""
    lines = [
        f"dataset {stats['name']}: {stats['train']['examples']} train / "
        f"{stats['validation']['examples']} validation examples, {stats['skipped']} skipped rows, "
        f"max_length {stats['max_length']}, cache {'hit' if stats['cache_hit'] else 'miss'}"
    ]
    header = f"  {'':<34}" + "".join(f" {name:>10}" for name in COLUMNS)
    for split in ("train", "validation"):
        s = stats[split]
        if not s["examples"]:
            continue
        lines.append(
            f" {split}: {s['total_tokens']} tokens, {s['assistant_tokens']} in the loss, {s['truncated']} truncated"
        )
        lines.append(header)
        for key in ("messages_per_example", "tokens_per_example", "assistant_tokens_per_example"):
            v = s[key]
            if v:
                lines.append(f"  {key.replace('_', ' '):<34}" + "".join(f" {number(v[c]):>10}" for c in COLUMNS))
    lines += [f" warning: {w}" for w in stats["warnings"]]
    return "\n".join(lines)
