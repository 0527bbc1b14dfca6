"""A distributed run prepares its dataset once, in the parent, before any worker starts: the process-group timeout
never covers preparation, however long it takes.

The dataset here takes DELAY_S seconds to prepare (``HYDRATUNE_TEST_PREPARE_DELAY_S``, a test-only hook that slows
every cache miss, wherever it happens) and the process group waits TIMEOUT_S seconds for its ranks
(``hardware.timeout_s``, the workers' ``train.ddp_timeout``). The 2-process ddp run trains; every rank reads the
entry the parent built. The control runs the same preparation inside two workers after their process group has
started, rank 0 first (how the Trainer's ``main_process_first`` arranges it): rank 1 times out waiting.

On the CPU the TrainingArguments drop ``ddp_timeout`` (they pass it to the process group on a GPU only);
trainer.engine.objectives.cpu_process_group starts the group with it, which the control relies on too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from tests.helpers import REPO, compose, hydratune
from tests.test_distributed import free_port

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # starts several processes

DELAY_S = 10
TIMEOUT_S = 4  # longer than the ranks' start-up skew on a loaded 2-core machine (measured <= 1.5 s)
RUN = [
    "model=tiny_random",
    "dataset=chat_jsonl",
    "dataset.validation_size=4",
    "eval.enabled=false",
    "train.max_steps=2",
    "train.per_device_train_batch_size=2",
    "hardware.threads=1",
]
SLOW = {"HYDRATUNE_TEST_PREPARE_DELAY_S": str(DELAY_S), "OMP_NUM_THREADS": "1"}


def dataset(folder: Path) -> Path:
    """Recipes no other test prepared (their file's bytes, hence the cache key, are this folder's own)."""
    rows = (REPO / "trainer" / "assets" / "quickstart" / "recipes.jsonl").read_text().splitlines()[:24]
    marker = {"messages": [{"role": "user", "content": str(folder)}, {"role": "assistant", "content": "ok"}]}
    path = folder / "rows.jsonl"
    path.write_text("\n".join([*rows, json.dumps(marker)]) + "\n")
    return path


def test_ddp_run_prepares_once_before_the_process_group(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    args = [*RUN, f"dataset.path={dataset(tmp_path)}", "hardware=ddp", "hardware.num_processes=2"]
    args += [f"hardware.timeout_s={TIMEOUT_S}", f"hardware.master_port={free_port()}", f"hydra.run.dir={run_dir}"]
    result = hydratune(*args, cache=cache_dir, env=SLOW)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"ddp_timeout: {TIMEOUT_S}\n" in (run_dir / "config.yaml").read_text()
    parent = (run_dir / "hydratune.log").read_text()
    (key,) = re.findall(r"\]\[trainer\.data\]\[INFO\] - dataset cache miss (\w+)", parent)  # the parent's line
    assert "preparation slowed down for a test" in parent
    for rank in (0, 1):
        log = (run_dir / "logs" / f"rank{rank}.log").read_text()
        assert f"[rank{rank}][trainer.data][INFO] - dataset cache hit {key}" in log, log[-2000:]
        assert "dataset cache miss" not in log
        assert f"process group: gloo, 2 ranks, timeout {TIMEOUT_S} s" in log  # hardware.timeout_s holds on the CPU
    losses = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses if "loss" in r] == [1, 2]


def test_preparing_inside_the_workers_times_out(tmp_path, cache_dir):
    """The control: the same slow preparation after the process group has started outlasts TIMEOUT_S."""
    from trainer import models

    overrides = [a for a in RUN if not a.startswith("train.")]  # train.max_steps is the CLI's own addition
    cfg = compose(*overrides, f"dataset.path={dataset(tmp_path)}", "hardware=cpu", f"cache_dir={cache_dir}")
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / "run")
        cfg.train.ddp_timeout = TIMEOUT_S
    models.resolve_path(cfg.model, str(cache_dir))  # the tiny model, built once here rather than by both ranks
    config = tmp_path / "config.yaml"
    OmegaConf.save(cfg, config, resolve=True)
    port = str(free_port())
    ranks = []
    for rank in (0, 1):
        env = {**os.environ, **SLOW, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}
        env |= {"LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        command = [sys.executable, "-m", "tests.prepare_in_workers", str(config)]
        ranks.append(
            subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs = [p.communicate(timeout=300)[0] for p in ranks]
    assert ranks[1].returncode != 0, outputs[1][-2000:]
    assert "prepared" not in outputs[1].splitlines()
    assert f"Timed out waiting {TIMEOUT_S * 1000}ms" in outputs[1], outputs[1][-2000:]  # gloo, at rank 1's barrier
