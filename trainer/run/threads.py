"""How many CPU threads each process of a run gets: the cores this process may use (CPU affinity and the cgroup's
CPU quota, not the machine's core count) divided among the processes that run at once.

Imports no torch: the parent of a sweep or a distributed run decides before any worker starts.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def usable_cores() -> tuple[int, str]:
    """The cores this process may run on, and where the number comes from."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    source = f"CPU affinity ({cores} of {os.cpu_count()} cores)"
    quota = cgroup_cpu_quota()
    if quota is not None and quota < cores:
        cores, source = max(1, math.ceil(quota)), f"cgroup CPU quota ({quota:g} cores)"
    return cores, source


def threads_per_process(requested: int | None, processes: int = 1) -> tuple[int, str]:
    """``hardware.threads`` when set, else the usable cores divided among ``processes`` (at least 1), and why."""
    if requested:
        return requested, "hardware.threads"
    cores, source = usable_cores()
    return share(cores, processes), source + (f" / {processes} processes" if processes > 1 else "")


def share(cores: int, processes: int) -> int:
    """Cores divided among processes that run at once: never more threads than cores, never fewer than one."""
    return max(1, cores // max(1, processes))


def cgroup_cpu_quota(root: Path = CGROUP, self_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The tightest CPU quota (in cores) of this process's cgroup and its parents; None when there is none.

    cgroup v2: ``cpu.max`` holds "QUOTA PERIOD" or "max PERIOD". cgroup v1: ``cpu.cfs_quota_us`` (-1 = none) and
    ``cpu.cfs_period_us`` in the cpu controller's hierarchy.
    """
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2 unified hierarchy
            folders, read = _parents(root, path), _v2_quota
        elif "cpu" in controllers.split(","):
            base = root / controllers if (root / controllers).is_dir() else root / "cpu"
            folders, read = _parents(base, path), _v1_quota
        else:
            continue
        limits += [q for q in map(read, folders) if q is not None]
    return min(limits) if limits else None


def _parents(base: Path, path: str) -> list[Path]:
    parts = [p for p in path.strip("/").split("/") if p]
    return [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _v2_quota(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period
