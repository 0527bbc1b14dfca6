"""report.md's pre-flight table: each figure the estimate (trainer.engine.estimate) forecast beside the measured one."""

from __future__ import annotations


def rows(compared: dict, hardware: dict | None) -> list[str]:
    """The table's markdown lines, from the ``estimate`` section of metrics.json."""
    est, got = compared["estimated"], compared["measured"]
    rows = [
        ("time per training step", "step_s", "s"),
        ("training", "train_s", "s"),
        ("whole run (process start to report)", "total_s", "s"),
        ("whole run, CPU time / threads (wall time on an idle machine)", "cpu_per_thread_s", "s"),
        ("peak memory (resident)", "peak_memory_gb", "GB"),
    ]
    lines = ["| | estimated | measured | measured / estimated |", "|---|---|---|---|"]
    for label, key, unit in rows:
        a, b = est.get("total_s" if key == "cpu_per_thread_s" else key), got.get(key)
        ratio = f"{b / a:.2f}" if a and b else "-"
        lines.append(f"| {label} | {_cell(a, unit)} | {_cell(b, unit)} | {ratio} |")
    lines += [
        "",
        f"{est['tokens_per_step']:.0f} tokens per step; CPU time used: {_cell(got.get('cpu_s'), 's')}; "
        f"throughput: {compared['source']}.",
    ]
    if hardware:
        lines.append(f"Weights in {hardware['model_dtype']} on the {hardware['device']}: {hardware['why']}.")
    return lines


def _cell(value, unit: str) -> str:
    return "-" if value is None else f"{value:g} {unit}"
