"""Several processes on this CPU (gloo backend): ddp through accelerate, DeepSpeed ZeRO-2 and ZeRO-3 through the
deepspeed launcher, a simulated 2-node torchrun run on localhost, and a killed DeepSpeed LoRA run that resumes.

Every 2-process run uses 2 processes x batch 2 and is compared with one process x batch 4 (the same global batch,
the same data order). LoRA dropout is off in these runs: each rank draws its own dropout masks, which alone moves
the losses by ~3e-4 (relative) after 10 steps. Without it the curves agree to float32 rounding (measured <= 2e-7:
the 2-process gradient is the sum of two half-batch sums instead of one sum), so the tolerance is rel=1e-5.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, hydratune

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # runs a training job (tiny model) or several processes

# DeepSpeed compiles its CPU communication op on first use (~40 s); a stable folder makes that happen once per machine.
EXTENSIONS = Path(
    os.environ.get("HYDRATUNE_TEST_EXTENSIONS", Path.home() / ".cache" / "hydratune" / "torch_extensions")
)
RUN = [
    "model=tiny_random",
    "hardware.threads=1",
    "eval.max_examples=4",
    "eval.generation.max_new_tokens=4",
    "train.max_steps=10",
    "train.save_steps=5",
    "train.learning_rate=3e-3",
    "method.peft.lora_dropout=0",
]
# eval.cache_base=false: every run evaluates the base model under its own strategy before training (under DeepSpeed
# that path needs care in the engine), instead of reading the single-process run's cached result.
TWO = ["train.per_device_train_batch_size=2", f"hardware.torch_extensions_dir={EXTENSIONS}", "eval.cache_base=false"]
ENV = {"OMP_NUM_THREADS": "1"}
TOLERANCE = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def assert_one_finished_run(run_dir: Path, ranks: int = 2) -> None:
    assert sorted(p.name for p in run_dir.parent.iterdir()) == [run_dir.name], "more than one run dir"
    for name in ("config.yaml", "metrics.json", "report.md", "loss_curve.png", "model/adapter_model.safetensors"):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "logs").glob("rank*.log")) == [f"rank{r}.log" for r in range(ranks)]
    assert "rank 1 of" in (run_dir / "logs" / "rank1.log").read_text()
    assert "ddp_timeout: 1800" in (run_dir / "config.yaml").read_text()  # hardware.timeout_s, for every rank
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"base", "finetuned"} <= metrics.keys()
    curve = losses(run_dir)
    assert sorted(curve) == list(range(1, 11)), "metrics.jsonl holds one line per step: rank 0 writes alone"
    assert max(curve[s] for s in (8, 9, 10)) < curve[1] - 0.1, f"loss did not fall: {curve}"


@pytest.fixture(scope="module")
def single(tmp_path_factory, cache_dir) -> dict[int, float]:
    """The reference: one process, batch 4."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    result = hydratune(
        *RUN, "hardware=cpu", "train.per_device_train_batch_size=4", f"hydra.run.dir={run_dir}", cache=cache_dir
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return losses(run_dir)


@pytest.fixture(scope="module")
def zero3(tmp_path_factory, cache_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("zero3") / "run"
    args = [*RUN, *TWO, "hardware=deepspeed_zero3", f"hardware.master_port={free_port()}", f"hydra.run.dir={run_dir}"]
    result = hydratune(*args, cache=cache_dir, env=ENV)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return run_dir


@pytest.mark.parametrize(
    "strategy",
    [
        pytest.param(["hardware=ddp", "hardware.launcher=accelerate"], id="ddp-accelerate"),
        pytest.param(["hardware=deepspeed_zero2"], id="deepspeed_zero2"),
    ],
)
def test_two_processes_match_one(strategy, single, tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    args = [*RUN, *TWO, *strategy, f"hardware.master_port={free_port()}", f"hydra.run.dir={run_dir}"]
    result = hydratune(*args, cache=cache_dir, env=ENV)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert_one_finished_run(run_dir)
    assert losses(run_dir) == pytest.approx(single, rel=TOLERANCE)
    if "deepspeed" in strategy[0]:
        assert json.loads((run_dir / "deepspeed.json").read_text())["zero_optimization"]["stage"] == 2


def test_zero3_matches_one_process(zero3, single):
    assert_one_finished_run(zero3)
    assert losses(zero3) == pytest.approx(single, rel=TOLERANCE)
    assert "launchers.worker --run-dir" in (zero3 / "hydratune.log").read_text()


def test_two_nodes_on_localhost(single, tmp_path, cache_dir):
    """Two torchrun agents (--nnodes 2, one process each) rendezvous on 127.0.0.1; node 1 reads NODE_RANK."""
    run_dir = tmp_path / "run"
    port = free_port()
    args = [*RUN, *TWO, "hardware=ddp", "hardware.num_nodes=2", "hardware.num_processes=1"]
    args += [f"hardware.master_port={port}", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "HYDRATUNE_CACHE": str(cache_dir), **ENV}
    nodes = []
    for rank in (0, 1):
        nodes.append(
            subprocess.Popen(
                [sys.executable, "-m", "trainer.cli", *args],
                cwd=REPO,
                env={**env, "NODE_RANK": str(rank)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [node.communicate(timeout=400)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "--nnodes 2 --nproc_per_node 1 --node_rank 1" in outputs[1]
    assert_one_finished_run(run_dir)
    assert losses(run_dir) == pytest.approx(single, rel=TOLERANCE)


def test_killed_deepspeed_lora_run_resumes(zero3, tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    args = [*RUN, *TWO, "hardware=deepspeed_zero3", f"hardware.master_port={free_port()}", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "HYDRATUNE_CACHE": str(cache_dir), **ENV}
    # A session of its own, so the kill reaches the launcher and every worker it started, as a node failure would.
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer.cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    checkpoint = run_dir / "checkpoints" / "checkpoint-5"
    deadline = time.time() + 300
    while not (checkpoint / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "metrics.json").exists()
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / "latest").is_file()

    result = hydratune(*args, cache=cache_dir, env=ENV)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "resuming from" in (run_dir / "logs" / "rank0.log").read_text()
    assert "resuming from" in (run_dir / "logs" / "rank1.log").read_text()
    assert losses(run_dir)[10] == pytest.approx(losses(zero3)[10], rel=TOLERANCE)
