"""The `hydratune` command against the fake provider, in subprocesses: kill -9 and rerun, Ctrl-C, a failed job,
the job commands. Whatever happens, the provider sees one upload per file and one job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.fake_provider import FakeProvider, files_containing, write_chat_dataset
from tests.helpers import run_to_end, start

pytestmark = pytest.mark.slow  # runs a training job (tiny model) or several processes

API_KEY = "sk-test-CRASH-KEY-5f4e3d2c1b0a"
FAST = ["hardware.poll_interval_s=0.02", "hardware.max_poll_interval_s=0.05", "hardware.retry_backoff_s=0.01"]


@pytest.fixture
def fake():
    with FakeProvider(api_key=API_KEY) as server:
        yield server


@pytest.fixture
def env(fake, tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_"))}
    return {
        **clean,
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": fake.openai_url,
        "TIKTOKEN_CACHE_DIR": str(tmp_path / "tiktoken"),
        "HYDRATUNE_CACHE": str(tmp_path / "cache"),
    }


def args(tmp_path: Path, fake: FakeProvider, *extra: str) -> list[str]:
    data = tmp_path / "data.jsonl"
    if not data.exists():
        write_chat_dataset(data, 20, fake)
    return [
        "hardware=openai", "model=gpt_4o_mini", "dataset=chat_jsonl", f"dataset.path={data}",
        "dataset.validation_size=5", f"hydra.run.dir={tmp_path / 'run'}", *FAST, *extra,
    ]  # fmt: skip


def hydratune(argv: list[str], env: dict, log: Path | None = None):
    with open(log or os.devnull, "ab") as out:  # the child holds its own copy
        return start(argv, env, stdout=out, stderr=out)


def finish(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    return run_to_end(argv, env, timeout=120)


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def state(tmp_path: Path) -> dict:
    path = tmp_path / "run" / "cloud_state.json"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.mark.parametrize("moment", ["before the job id is recorded", "while the job runs"])
def test_kill_9_after_the_job_is_created_then_rerun(fake, env, tmp_path, moment):
    if moment == "before the job id is recorded":
        fake.create_delay_s = 5.0  # the job exists at the provider; its id never reaches the run dir
    else:
        fake.polls_per_state = 10_000  # the job stays in validating_files until we let it go
    proc = hydratune(args(tmp_path, fake), env, tmp_path / "first.log")
    try:
        if moment == "before the job id is recorded":
            wait_for(lambda: fake.counters["jobs_created"] == 1)
        else:
            wait_for(lambda: (state(tmp_path).get("job") or {}).get("status") == "validating_files")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    recorded = state(tmp_path)
    assert len(recorded["files"]) == 2
    assert (recorded["job"] is None) == (moment == "before the job id is recorded")

    fake.create_delay_s, fake.polls_per_state = 0.0, 1
    done = finish(args(tmp_path, fake), env)
    assert done.returncode == 0, done.stderr
    assert (fake.counters["uploads"], fake.counters["jobs_created"]) == (2, 1)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["finetuned"]["exact_match"] == 1.0 and metrics["base"]["exact_match"] == 0.0
    assert files_containing(tmp_path / "run", API_KEY) == []
    assert API_KEY not in done.stdout + done.stderr + (tmp_path / "first.log").read_text()


def test_failed_job_exits_nonzero_with_the_providers_message(fake, env, tmp_path):
    fake.fail = {"code": "invalid_n_examples", "message": "Training file has 3 examples; 10 required.", "param": None}
    done = finish(args(tmp_path, fake), env)
    assert done.returncode == 2
    assert "failed: Training file has 3 examples; 10 required. (code invalid_n_examples)" in done.stderr
    assert "Traceback" not in done.stderr


def test_ctrl_c_cancels_when_configured_and_job_commands(fake, env, tmp_path):
    fake.polls_per_state = 10_000
    proc = hydratune(args(tmp_path, fake, "hardware.on_interrupt=cancel"), env, tmp_path / "first.log")
    wait_for(lambda: (state(tmp_path).get("job") or {}).get("status") == "validating_files")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 2
    assert "was cancelled" in (tmp_path / "first.log").read_text()
    assert fake.counters["cancels"] == 1

    status = finish(["job-status", f"hydra.run.dir={tmp_path / 'run'}"], env)
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "cancelled"
    cancel = finish(["job-cancel", f"hydra.run.dir={tmp_path / 'run'}"], env)
    assert cancel.returncode == 2 and "already completed" in cancel.stderr
    missing = finish(["job-status", f"hydra.run.dir={tmp_path / 'nothing'}"], env)
    assert missing.returncode == 2 and "holds no provider run" in missing.stderr
