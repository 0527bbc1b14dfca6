"""``hardware.submit=slurm``: the run as one SLURM job, for any local or distributed strategy, single run or sweep.

The submitting node composes and checks the config, prepares the dataset once, writes the resolved config and
``<run dir>/job.sbatch``, submits it with ``sbatch`` and waits for the job (polling ``scontrol``), so that when the
command returns the run is over, exactly as a local run: status.json, metrics.json and a sweep's summary are right.
Ctrl-C leaves the job running. A job that ends otherwise than COMPLETED (cancelled, timed out, preempted, failed)
fails the run; running the same command again submits a new job that resumes from the last checkpoint.

Inside the job: a local strategy runs one worker (``python -m launchers.worker``); a distributed one runs one
torchrun per node (srun), c10d rendezvous on the job's first node. Workers load ``<run dir>/config.yaml`` (the run dir
and the cache must be on a filesystem every node shares). DeepSpeed and FSDP strategies run the same way: the
Trainer's integrations only need the processes torchrun starts.

A sweep is Hydra's multirun over the same switch; the parallel launcher keeps several jobs in flight:

    hydratune hardware=ddp hardware.submit=slurm +hardware.sbatch.partition=gpu
    hydratune -m hydra/launcher=parallel hydra.launcher.n_jobs=8 hardware.submit=slurm train.learning_rate=1e-4,3e-4
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from trainer.config.errors import UserError
from trainer.config.schema import DistributedHardwareSchema, hardware_schema
from trainer.run import atomic
from trainer.run.threads import threads_per_process

log = logging.getLogger(__name__)

WORKER = "-m launchers.worker"
#: JobState values after which a job never runs again (squeue/scontrol's own names).
FINAL_STATES = {
    "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
}  # fmt: skip
#: Seconds between polls: the first, doubled up to the last.
POLL_S = (1.0, 5.0)


def run(cfg: DictConfig, command: str) -> None:
    from launchers import distributed, local

    if command != "train":  # prepare and eval run here, in one process
        local.run(cfg, command)
        return
    hw = cfg.hardware
    run_dir = Path(cfg.output_dir).resolve()
    if issubclass(hardware_schema(cfg), DistributedHardwareSchema):
        distributed.check(cfg)
        nproc, device = distributed.num_processes(hw), requested_device(hw)
        ds, sharding = distributed.worker_settings(cfg, run_dir)
    else:
        nproc, device, ds, sharding = 1, requested_device(hw), None, None
    threads, _ = threads_per_process(hw.threads, nproc)
    script = render(cfg, run_dir, nproc, threads, device)
    if hw.dry_run:
        print("hydratune: dry run, nothing submitted. sbatch script:\n" + script)
        if ds is not None:
            print("DeepSpeed config:\n" + json.dumps(ds, indent=2))
        if sharding is not None:
            print("FSDP2 settings:\n" + json.dumps(sharding, indent=2))
        sys.stdout.flush()
        return None
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UserError(
            "hardware.submit=slurm: `sbatch` is not on PATH here, so this is not a SLURM login node. Submit from one "
            "(the run dir and the cache must be on a filesystem the compute nodes share), or use hardware.dry_run=true "
            "to see the job script."
        )
    distributed.prepare_once(cfg, run_dir, 0)
    if ds is not None:
        from launchers import deepspeed_config

        deepspeed_config.write(ds, run_dir)
    (run_dir / "logs").mkdir(exist_ok=True)
    path = run_dir / "job.sbatch"
    atomic.write_text(path, script)
    job = submit(sbatch, path, run_dir)
    state, exit_code = wait(job)
    if state == "GONE" and (run_dir / "metrics.json").is_file():  # finished longer ago than SLURM remembers jobs
        state = "COMPLETED"
    if state != "COMPLETED":
        raise UserError(
            f"SLURM job {job} of {run_dir} ended {state} (exit code {exit_code}); its log: "
            f"{run_dir / 'logs' / f'slurm-{job}.out'}. Run the same command again: a new job resumes from the last "
            f"checkpoint in {run_dir / 'checkpoints'}."
        )
    log.info("SLURM job %s completed", job)
    return None


def requested_device(hw: DictConfig) -> str:
    """The compute nodes' device: cuda when asked for (the submitting node may have no GPU), else what this node has."""
    if hw.device == "cuda":
        return "cuda"
    from launchers.local import pick_device

    return pick_device(hw, needs_cuda=False)


def render(cfg: DictConfig, run_dir: Path, nproc: int, threads: int, device: str) -> str:
    hw = cfg.hardware
    distributed = issubclass(hardware_schema(cfg), DistributedHardwareSchema)
    nodes = hw.num_nodes if distributed else 1
    options = {
        "job-name": f"hydratune-{cfg.run_name}",
        "nodes": nodes,
        "ntasks-per-node": 1,
        "cpus-per-task": threads * nproc,
        "chdir": str(Path.cwd()),
        "output": str(run_dir / "logs" / "slurm-%j.out"),
    }
    if device == "cuda":
        options["gpus-per-node"] = nproc
    options.update(dict(hw.sbatch))
    lines = ["#!/bin/bash"] + [f"#SBATCH --{key}={value}" for key, value in options.items()]
    lines += [
        "# Rendered by hydratune from the resolved config in this folder; workers load config.yaml, not Hydra.",
        "# Submitting this script again (sbatch job.sbatch) resumes the run from its last checkpoint.",
        "set -euo pipefail",
        f"export OMP_NUM_THREADS={threads}",
        "export TOKENIZERS_PARALLELISM=false",
    ]
    worker = f"{WORKER} --run-dir {shlex.quote(str(run_dir))}"
    if not distributed:
        lines += [f"srun --kill-on-bad-exit=1 {shlex.quote(sys.executable)} {worker}", ""]
        return "\n".join(lines)
    torchrun = " ".join(
        [
            shlex.quote(torchrun_path()),
            '--nnodes "$SLURM_JOB_NUM_NODES"',
            f"--nproc_per_node {nproc}",
            '--rdzv_id "$SLURM_JOB_ID"',
            "--rdzv_backend c10d",
            '--rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT"',
            worker,
        ]
    )
    lines += [
        f"export TORCH_EXTENSIONS_DIR={shlex.quote(str(hw.torch_extensions_dir))}",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "# hardware.master_port offset by the job id: two jobs sharing a node never share a rendezvous port.",
        f"MASTER_PORT=$(( {hw.master_port} + SLURM_JOB_ID % 1000 ))",
        f"srun --kill-on-bad-exit=1 {torchrun}",
        "",
    ]
    return "\n".join(lines)


def torchrun_path() -> str:
    """The torchrun of this environment (the compute nodes share it with the submitting node), else PATH's."""
    beside = Path(sys.executable).parent / "torchrun"
    return str(beside) if beside.exists() else "torchrun"


def submit(sbatch: str, script: Path, run_dir: Path) -> str:
    """sbatch the script; the job id is recorded in <run dir>/slurm.json (every submission of this run dir)."""
    out = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True)
    if out.returncode != 0:
        raise UserError(f"sbatch refused {script}: {out.stderr.strip() or out.stdout.strip()}")
    job = out.stdout.strip().split(";")[0]  # "<id>" or "<id>;<cluster>"
    record = run_dir / "slurm.json"
    jobs = json.loads(record.read_text())["jobs"] if record.is_file() else []
    atomic.write_json(record, {"jobs": [*jobs, {"id": job, "submitted": time.time()}]}, indent=1)
    log.info("submitted SLURM job %s (%s); log: %s", job, script, run_dir / "logs" / f"slurm-{job}.out")
    return job


def job_state(job: str) -> tuple[str, str]:
    """(JobState, ExitCode) from ``scontrol show job``; ("GONE", "?") once SLURM has forgotten the job."""
    out = subprocess.run(["scontrol", "show", "job", "--oneliner", job], capture_output=True, text=True)
    if out.returncode != 0:
        return "GONE", "?"
    state = re.search(r"\bJobState=(\S+)", out.stdout)
    code = re.search(r"\bExitCode=(\S+)", out.stdout)
    return (state.group(1) if state else "UNKNOWN"), (code.group(1) if code else "?")


def wait(job: str) -> tuple[str, str]:
    """Poll until the job reaches a final state. Ctrl-C stops waiting and leaves the job running."""
    delay, longest = POLL_S
    try:
        while True:
            state, code = job_state(job)
            if state in FINAL_STATES or state == "GONE":
                return state, code
            time.sleep(delay)
            delay = min(delay * 2, longest)
    except KeyboardInterrupt:
        log.warning("stopped waiting; SLURM job %s keeps running (squeue -j %s; scancel %s stops it)", job, job, job)
        raise
