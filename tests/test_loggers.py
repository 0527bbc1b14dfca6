"""Each logger option writes where it says, and wandb never hangs on a missing network."""

from __future__ import annotations

import time

import pytest

from tests.helpers import hydratune

pytestmark = pytest.mark.slow  # runs a training job (tiny model) or several processes

TINY = ["model=tiny_random", "hardware.threads=1", "train.max_steps=2", "eval=none"]


def test_tensorboard_writes_event_files(tmp_path, cache_dir):
    result = hydratune(*TINY, "logger=tensorboard", f"hydra.run.dir={tmp_path}", cache=cache_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert (tmp_path / "metrics.jsonl").read_text().count('"loss"') == 2


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_wandb_logs_offline_and_never_hangs_without_network(tmp_path, cache_dir, mode):
    # online with an unreachable server: the run must fall back to offline at once, not wait ~100 s for wandb.
    env = {"WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "x" * 40, "WANDB_MODE": ""}
    start = time.perf_counter()
    result = hydratune(
        *TINY, "logger=wandb", f"logger.mode={mode}", f"hydra.run.dir={tmp_path}", cache=cache_dir, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert time.perf_counter() - start < 90
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    if mode == "online":
        assert "logging offline instead" in (tmp_path / "hydratune.log").read_text()
    assert "x" * 40 not in "".join(p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file())
