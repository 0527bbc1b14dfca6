"""hardware.threads: the cores this process may use (affinity, cgroup quota), shared among a run's processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO
from trainer.run import threads

pytestmark = pytest.mark.serial  # counts on the cores being free (make test runs these alone)

ONE_CORE = {min(os.sched_getaffinity(0))}


def on_one_core() -> None:
    os.sched_setaffinity(0, ONE_CORE)


def test_usable_cores_follow_a_restricted_affinity():
    code = "from trainer.run.threads import threads_per_process as t; print(t(None, 1), t(None, 2), t(3, 1))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, preexec_fn=on_one_core, check=True
    ).stdout
    cores = os.cpu_count()
    assert out.split("\n")[0] == (
        f"(1, 'CPU affinity (1 of {cores} cores)') (1, 'CPU affinity (1 of {cores} cores) / 2 processes') "
        "(3, 'hardware.threads')"
    )


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 usable cores to tell a restriction apart")
def test_local_run_on_one_core_uses_one_thread(tmp_path, cache_dir):
    """A real run started with an affinity of one core (as taskset or a container's cpuset would) and no
    hardware.threads: torch gets one thread, and the log says why."""
    args = ["model=tiny_random", "train.max_steps=1", "eval=none", "logger=none", f"hydra.run.dir={tmp_path}"]
    full_env = {**os.environ, "HYDRATUNE_CACHE": str(cache_dir)}
    full_env.pop("OMP_NUM_THREADS", None)
    result = subprocess.run(
        [sys.executable, "-m", "trainer.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=REPO,
        timeout=600,
        preexec_fn=on_one_core,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        f"1 torch threads (from CPU affinity (1 of {os.cpu_count()} cores))" in (tmp_path / "hydratune.log").read_text()
    )


def write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_tightest_of_the_hierarchy(tmp_path):
    write(tmp_path / "proc", "0::/job/step\n")
    write(tmp_path / "fs/cpu.max", "max 100000\n")
    write(tmp_path / "fs/job/cpu.max", "150000 100000\n")
    write(tmp_path / "fs/job/step/cpu.max", "max 100000\n")
    assert threads.cgroup_cpu_quota(tmp_path / "fs", tmp_path / "proc") == 1.5
    write(tmp_path / "fs/job/cpu.max", "max 100000\n")
    assert threads.cgroup_cpu_quota(tmp_path / "fs", tmp_path / "proc") is None


def test_cgroup_v1_quota(tmp_path):
    write(tmp_path / "proc", "4:memory:/x\n2:cpu,cpuacct:/docker/abc\n")
    write(tmp_path / "fs/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "300000\n")
    write(tmp_path / "fs/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    write(tmp_path / "fs/cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    write(tmp_path / "fs/cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    assert threads.cgroup_cpu_quota(tmp_path / "fs", tmp_path / "proc") == 3.0


def test_quota_below_affinity_wins(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: 2.5)
    assert threads.usable_cores() == (3, "cgroup CPU quota (2.5 cores)")
    assert threads.threads_per_process(None, 2) == (1, "cgroup CPU quota (2.5 cores) / 2 processes")
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: None)
    assert threads.threads_per_process(None, 4) == (4, f"CPU affinity (16 of {os.cpu_count()} cores) / 4 processes")


def test_parallel_sweep_shares_the_usable_cores(monkeypatch):
    """The parallel sweep divides the usable cores (not os.cpu_count()) among the runs it starts at once."""
    from tests.test_sweeps import compose_with_hydra
    from trainer.report import sweeps

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: None)
    cfg = compose_with_hydra("hydra/launcher=parallel", "hydra.launcher.n_jobs=2")
    sweeps.share_threads(cfg)
    assert list(cfg.hydra.overrides.task)[-1] == "hardware.threads=3"


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 usable cores to tell a restriction apart")
def test_distributed_workers_get_the_usable_cores(tmp_path, cache_dir):
    """The launcher command a distributed run would start (dry run), from a process restricted to one core."""
    args = ["model=tiny_random", "hardware=ddp", "hardware.num_processes=1", "hardware.dry_run=true"]
    env = {**os.environ, "HYDRATUNE_CACHE": str(cache_dir)}
    for restrict, expected in ((on_one_core, 1), (None, len(os.sched_getaffinity(0)))):
        result = subprocess.run(
            [sys.executable, "-m", "trainer.cli", *args, f"hydra.run.dir={tmp_path / str(expected)}"],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=300,
            preexec_fn=restrict,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"OMP_NUM_THREADS={expected} " in result.stdout
