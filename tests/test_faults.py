"""Fault injection: nothing lost, nothing leaked. A finished run is immutable; run dirs are locked; torn checkpoints
are skipped; damaged cache entries are rebuilt; no planted secret reaches any file; SIGKILLs at seeded instants
(checkpoint writes included) rerun to the same losses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_provider import files_containing, write_chat_dataset
from tests.helpers import REPO, compose, hydratune
from trainer import checkpoints, rundir
from trainer.errors import UserError

TINY = ["model=tiny_random", "hardware.threads=1", "eval.max_examples=4", "eval.generation.max_new_tokens=4"]
#: One unique secret per credential field, and one inside a URL.
SECRETS = {
    "train.hub_token": "hf_PLANTEDhubtoken0001",
    "hardware.api_key": "sk-PLANTEDapikey0002",
    "hardware.base_url": "PLANTEDurlpass0003",
    "hardware.deployment.token": "PLANTEDmgmttoken0004",
    "OPENAI_API_KEY": "PLANTEDenvkey0005",
    "WANDB_API_KEY": "PLANTEDwandbkey0006",
}
SECRET_ENV = {"OPENAI_API_KEY": SECRETS["OPENAI_API_KEY"], "WANDB_API_KEY": SECRETS["WANDB_API_KEY"]}


def leaks(*roots: Path) -> list[str]:
    return [hit for root in roots for hit in files_containing(root, *SECRETS.values())]


def in_text(text: str) -> list[str]:
    return [s for s in SECRETS.values() if s in text]


def losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache_dir) -> Path:
    """A finished tiny run with a hub token planted on the command line and API keys in the environment."""
    run_dir = tmp_path_factory.mktemp("faults") / "run"
    result = hydratune(
        *TINY,
        "train.max_steps=2",
        "train.save_steps=1",
        f"train.hub_token={SECRETS['train.hub_token']}",
        f"hydra.run.dir={run_dir}",
        cache=cache_dir,
        env=SECRET_ENV,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert in_text(result.stdout + result.stderr) == []
    return run_dir


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != rundir.LOCK and not p.name.endswith(".log")
    }


# ---------------------------------------------------------------- a finished run is immutable


@pytest.mark.parametrize("command", ["prepare", "train"])
def test_a_finished_run_refuses_prepare_and_train(finished, cache_dir, command):
    before = snapshot(finished)
    result = hydratune(command, *TINY, f"hydra.run.dir={finished}", cache=cache_dir)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "already holds a finished run" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(finished) == before


def test_eval_of_a_finished_run_goes_into_a_new_sub_dir(finished, tmp_path, cache_dir):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    before = snapshot(run_dir)
    result = hydratune("eval", *TINY, f"hydra.run.dir={run_dir}", cache=cache_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    (sub,) = run_dir.glob("eval-*")
    assert {k: v for k, v in snapshot(run_dir).items() if not k.startswith("eval-")} == before
    assert "base" in json.loads((sub / "metrics.json").read_text())  # the configured model, evaluated there
    assert json.loads((sub / "status.json").read_text())["status"] == "ok"


def test_overwrite_moves_the_whole_old_run_aside(finished, tmp_path, cache_dir):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    before = snapshot(run_dir)
    result = hydratune("prepare", *TINY, f"hydra.run.dir={run_dir}", "overwrite=true", cache=cache_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    (aside,) = run_dir.glob("previous-*")
    assert snapshot(aside) == before  # config.yaml, overrides.json, status.json, data_stats.json, metrics, model...
    assert json.loads((run_dir / "status.json").read_text())["command"] == "prepare"
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "checkpoints").exists()


# ---------------------------------------------------------------- locks


def test_a_locked_run_dir_names_the_holder(tmp_path, cache_dir):
    rundir.lock(tmp_path, "train")  # this test process holds it, as a running hydratune would
    try:
        result = hydratune(*TINY, f"hydra.run.dir={tmp_path}", cache=cache_dir)
    finally:
        rundir.release(tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"PID {os.getpid()} on host {socket.gethostname()}" in result.stderr
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "status.json").exists()


def test_a_stale_lock_is_detected_and_taken_over(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {"pid": int(dead.stdout), "host": socket.gethostname(), "command": "train", "started": 0}
    (tmp_path / rundir.LOCK).write_text(json.dumps(record))
    caplog.set_level("WARNING")
    rundir.lock(tmp_path, "train")
    try:
        assert f"stale lock of PID {record['pid']}" in caplog.text
        assert json.loads((tmp_path / rundir.LOCK).read_text())["pid"] == os.getpid()
    finally:
        rundir.release(tmp_path)
    assert (tmp_path / rundir.LOCK).read_text() == ""  # released: no holder recorded


# ---------------------------------------------------------------- resume checks


def test_resuming_with_a_changed_config_lists_the_differences(tmp_path):
    cfg = compose(*TINY, "hydra.run.dir=unused")
    cfg.output_dir = str(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    rundir._owned.add(tmp_path.resolve())
    from omegaconf import OmegaConf

    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    changed = compose(*TINY, "seed=7", "++train.learning_rate=1e-3")
    changed.output_dir = str(tmp_path)
    with pytest.raises(UserError) as err:
        rundir.check_resume(changed, tmp_path)
    assert "seed: 42 -> 7" in str(err.value) and "train.learning_rate: 0.0002 -> 0.001" in str(err.value)
    changed.resume.allow_changes = True
    rundir.check_resume(changed, tmp_path)  # allowed: no error


def test_torn_checkpoints_are_named_and_set_aside(finished, tmp_path, caplog):
    import shutil

    folder = tmp_path / "checkpoints"
    shutil.copytree(finished / "checkpoints", folder)
    assert checkpoints.problems_of(folder / "checkpoint-2") == []
    weights = folder / "checkpoint-2" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a write cut short
    caplog.set_level("WARNING")
    assert checkpoints.last_complete(folder) == str(folder / "checkpoint-1")
    assert "skipping torn checkpoint checkpoint-2 (adapter_model.safetensors is truncated" in caplog.text
    assert (folder / "torn-checkpoint-2").is_dir() and not (folder / "checkpoint-2").exists()
    (folder / "checkpoint-1" / "optimizer.pt").unlink()
    assert checkpoints.last_complete(folder) is None
    assert "checkpoint-1 (no optimizer state)" in caplog.text


# ---------------------------------------------------------------- secrets


def test_no_planted_secret_reaches_a_file_a_log_or_a_printed_config(finished, tmp_path, cache_dir):
    assert leaks(finished, cache_dir) == []
    data = tmp_path / "data.jsonl"
    write_chat_dataset(data, 12)
    cloud = [
        "hardware=openai",
        "model=gpt_4o_mini",
        "dataset=chat_jsonl",
        f"dataset.path={data}",
        "dataset.validation_size=2",
        f"hardware.api_key={SECRETS['hardware.api_key']}",
        f"hardware.base_url=http://user:{SECRETS['hardware.base_url']}@127.0.0.1:9/v1",
        f"hardware.deployment.token={SECRETS['hardware.deployment.token']}",
        f"train.hub_token={SECRETS['train.hub_token']}",
    ]
    env = {**SECRET_ENV, "TIKTOKEN_CACHE_DIR": str(tmp_path / "tiktoken")}
    sweep_dir = tmp_path / "sweep"
    result = hydratune("prepare", "-m", *cloud, "seed=1,2", f"hydra.sweep.dir={sweep_dir}", cache=cache_dir, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in sweep_dir.glob("[0-9]")) == ["0", "1"]
    assert (sweep_dir / "multirun.yaml").is_file() and (sweep_dir / "0" / "config.yaml").is_file()
    assert "hydra.run.dir" not in (sweep_dir / "0" / "overrides.json").read_text()
    assert in_text(result.stdout + result.stderr) == []
    printed = hydratune("--cfg", "job", *cloud, cache=cache_dir, env=env)
    assert printed.returncode == 0 and "api_key: '***redacted***'" in printed.stdout, printed.stdout[-2000:]
    assert in_text(printed.stdout + printed.stderr) == []
    assert leaks(sweep_dir, cache_dir) == []


def test_the_hub_token_never_reaches_training_args(finished):
    import torch

    for path in [finished / "model" / "training_args.bin", *finished.glob("checkpoints/*/training_args.bin")]:
        args = torch.load(path, weights_only=False)
        assert args.hub_token is None, path
    assert (finished / "model" / "training_args.bin").is_file()


# ---------------------------------------------------------------- SIGKILL at seeded instants


def kill_harness(run_dir: Path, straight: Path | str, kills: int, seed: int, cache: Path, steps: int):
    args = [str(run_dir), str(straight), str(kills), str(seed), "0.3", "--", *TINY, "eval=none"]
    args += [f"train.max_steps={steps}", "train.save_steps=1", "logger=jsonl"]
    env = {**os.environ, "HYDRATUNE_CACHE": str(cache)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.kill_harness", *args], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )


def run_kills(tmp_path: Path, cache: Path, kills: int, harnesses: int, steps: int) -> None:
    straight = tmp_path / "straight"
    procs = [
        kill_harness(tmp_path / f"run{i}", straight if i == 0 else "-", kills // harnesses, 1000 + i, cache, steps)
        for i in range(harnesses)
    ]
    reports = [json.loads(p.communicate(timeout=900)[0].strip().splitlines()[-1]) for p in procs]
    expected = losses(straight)
    assert [s for s, _ in expected] == list(range(1, steps + 1))
    for i, report in enumerate(reports):
        assert report["resumed_rc"] == 0 and report["straight_rc"] in (0, None), report
        assert report["ended_before_kill"] == [], report  # no run crashed (or finished) between kills
        got = losses(tmp_path / f"run{i}")
        assert [s for s, _ in got] == [s for s, _ in expected], "a step is missing or logged twice"
        for (step, a), (_, b) in zip(got, expected, strict=True):
            assert a == pytest.approx(b, rel=1e-6, abs=0), (i, step)
        assert json.loads((tmp_path / f"run{i}" / "status.json").read_text())["status"] == "ok"
    assert sum(r["kills"] for r in reports) == kills, reports
    # Seeded instants land inside checkpoint writes too (a torn newest checkpoint right after the kill).
    assert sum(r["torn_at_kill"] for r in reports) >= 1, reports


@pytest.mark.slow
def test_twenty_sigkills_rerun_to_the_same_losses(tmp_path, cache_dir):
    run_kills(tmp_path, cache_dir, kills=20, harnesses=2, steps=60)
