"""hardware.submit=slurm against a real SLURM (the single-node cluster .ci/slurm starts): a 2-run sweep of 2-process
jobs, and a cancelled job whose resubmission resumes from its checkpoint. Skipped only where sbatch is missing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, hydratune

pytestmark = [
    pytest.mark.serial,  # counts on the cores being free (make test runs these alone)
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="no SLURM here: run .ci/slurm to start one"),
]
TINY = ["model=tiny_random", "hardware.threads=1", "hardware.submit=slurm", "eval=none"]


def job_ids(run_dir: Path) -> list[str]:
    return [job["id"] for job in json.loads((run_dir / "slurm.json").read_text())["jobs"]]


def in_queue(job: str) -> bool:
    return bool(subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip())


def test_sweep_of_two_distributed_jobs(tmp_path, cache_dir):
    from tests.helpers import compose
    from trainer import models

    # Build the tiny model into the cache first: two runs that start at once on an empty cache both build it, and the
    # second one keeps the first complete entry (trainer.models.save_folder).
    models.resolve_path(compose("model=tiny_random").model, cache_dir)
    sweep = tmp_path / "sweep"
    result = hydratune(
        "-m", *TINY, "hardware=ddp", "train.max_steps=3", "train.learning_rate=1e-3,2e-3",
        "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}",
        cache=cache_dir, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = []
    for run in (sweep / "0", sweep / "1"):
        assert json.loads((run / "status.json").read_text())["status"] == "ok"
        assert (run / "model" / "adapter_model.safetensors").is_file()
        assert sorted(p.name for p in (run / "logs").glob("rank*.log")) == ["rank0.log", "rank1.log"]
        assert "rank 1 of 2" in (run / "logs" / "rank1.log").read_text()  # 2 processes inside the one allocation
        assert "--nproc_per_node 2" in (run / "job.sbatch").read_text()
        jobs += job_ids(run)
    assert len(set(jobs)) == 2 and not any(in_queue(job) for job in jobs)
    assert "2 runs: 2 ok" in (sweep / "summary.md").read_text()


def test_cancelled_job_resubmitted_resumes_from_its_checkpoint(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    # 300 small steps: seconds of training, so that the job is still running when its first checkpoint appears
    args = [*TINY, "hardware=cpu", "train.max_steps=300", "train.save_steps=10", f"hydra.run.dir={run_dir}"]
    args += ["train.per_device_train_batch_size=2"]
    first = subprocess.Popen(
        [sys.executable, "-m", "trainer.cli", *args],
        cwd=REPO,
        env={**os.environ, "HYDRATUNE_CACHE": str(cache_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "checkpoint-10").is_dir():
        assert first.poll() is None and time.monotonic() < deadline, "no checkpoint before the job ended"
        time.sleep(0.2)
    (job,) = job_ids(run_dir)
    subprocess.run(["scancel", job], check=True)
    output = first.communicate(timeout=120)[0]
    assert first.returncode == 2, output[-3000:]
    assert f"SLURM job {job} of {run_dir} ended CANCELLED" in output
    assert not (run_dir / "metrics.json").exists()
    saved = max(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert saved < 300

    second = hydratune(*args, cache=cache_dir, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert len(job_ids(run_dir)) == 2
    log = (run_dir / "logs" / "rank0.log").read_text()
    resumed = int(re.search(r"resuming from \S+/checkpoint-(\d+)", log).group(1))
    assert resumed >= 10
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 300
    assert json.loads((run_dir / "status.json").read_text())["status"] == "ok"
