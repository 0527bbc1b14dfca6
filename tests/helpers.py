"""Helpers shared by the tests: import them from here (never from conftest.py or another test file).

Fixtures (cache_dir, tiny_tokenizer) live in conftest.py; plain functions and constants live here."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().parent / "assets"


def compose(*overrides: str):
    """The config `hydratune` would compose for these overrides (no Hydra run dir)."""
    from trainer.config import schema

    return schema.compose(list(overrides))


def hydratune(
    *args: str, cache: Path, env: dict | None = None, timeout: int = 600, fresh: bool = False
) -> subprocess.CompletedProcess:
    """Run the `hydratune` command as a user would, in a process of its own: a child of the warm server
    (tests/warm.py: torch and the other libraries already imported, hydratune not), or a fresh interpreter where a fork
    would differ (an environment variable the libraries read at import), with ``fresh=True``, or everywhere with
    HYDRATUNE_TEST_FRESH=1."""
    full_env = {**os.environ, "HYDRATUNE_CACHE": str(cache), **(env or {})}
    return run_to_end(list(args), full_env, timeout=timeout, fresh=fresh)


def run_to_end(
    args: list[str], env: dict, cwd: Path = REPO, timeout: float = 600, fresh: bool = False
) -> subprocess.CompletedProcess:
    """:func:`hydratune` with the whole environment given (``env``) and a working directory of its own."""
    if not fresh and not os.environ.get("HYDRATUNE_TEST_FRESH"):
        from tests import warm

        done = warm.run(args, env, cwd, timeout)
        if done is not None:
            return done
    command = [sys.executable, "-m", "trainer.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def start(args: list[str], env: dict, cwd: Path = REPO, **streams):
    """``python -m trainer.cli ARGS`` started as subprocess.Popen starts it (stdout=, stderr=, text=), for a test that
    signals or kills the run: a child of the warm server whose pid is the run's own (tests/warm.py: Popen), or a fresh
    interpreter where a fork would differ, or everywhere with HYDRATUNE_TEST_FRESH=1. ``env`` is the whole
    environment."""
    from tests import warm

    if os.environ.get("HYDRATUNE_TEST_FRESH"):
        return warm.fresh_popen(list(args), env, cwd, **streams)
    return warm.popen(list(args), env, cwd, **streams)


def interrupted_at(args: list[str], cache: Path, checkpoint: Path, sig: int) -> tuple[int, str]:
    """``hydratune ARGS`` started (:func:`start`), sent ``sig`` once ``checkpoint`` is complete: (exit code, stderr)."""
    import time

    proc = start(args, {**os.environ, "HYDRATUNE_CACHE": str(cache)}, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (checkpoint / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, f"the run ended before {checkpoint.name}"
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def compose_checked(*overrides: str):
    """:func:`compose`, with composition errors (an unknown key, a value outside a closed choice) rewritten into the
    UserError paragraph the CLI prints."""
    from trainer.config.compose_errors import explain_composition_error
    from trainer.config.errors import UserError

    try:
        return compose(*overrides)
    except Exception as exc:  # noqa: BLE001 - composition errors only; anything else is re-raised by the rewrite
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if not isinstance(exc, HydraException | OmegaConfBaseException):
            raise
        raise UserError(explain_composition_error(exc)) from None


def interruptible() -> None:
    """preexec_fn for a child that a test sends Ctrl-C (SIGINT): a shell running pytest in the background (`pytest &`,
    nohup) ignores SIGINT, children inherit that, and Python then never raises KeyboardInterrupt."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def preference_examples():
    """What launchers.cloud.prepare.load_examples returns for 8 training and 2 validation copies of one preference
    pair (a provider DPO job's data, without a dataset file)."""
    from types import SimpleNamespace

    pair = {
        "prompt": [{"role": "user", "content": "Recipe 1: 2 cups flour, 1 eggs, a pinch of salt"}],
        "chosen": [{"role": "assistant", "content": '["flour", "eggs", "salt"]'}],
        "rejected": [{"role": "assistant", "content": "flour"}],
    }
    return SimpleNamespace(train=[pair] * 8, validation=[pair] * 2, skipped=[], warnings=[])


def cli_run(capsys, *argv: str) -> tuple[int, str, str]:
    """``hydratune ARGV`` in this process: (exit code, stdout, stderr)."""
    from trainer import cli

    try:
        cli.main(list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def kill_9_once_a_job_exists(
    fake, args: list[str], env: dict, run_dir: Path, log_file: Path
) -> subprocess.CompletedProcess:
    """``hydratune ARGS``, a provider run, killed with SIGKILL as soon as ``fake`` has created its job (the fake's
    ``create_delay_s`` holds the answer), checked to have recorded its upload but no job id, then the same command
    run again to the end (``env``: the whole environment)."""
    import json
    import signal
    import time

    with open(log_file, "wb") as log:
        proc = start(args, env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while fake.counters["jobs_created"] == 0:
                assert time.monotonic() < deadline and proc.poll() is None, log_file.read_text()
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    state = json.loads((run_dir / "cloud_state.json").read_text())
    assert state["job"] is None and len(state["files"]) == 1, state
    fake.create_delay_s = 0.0
    return run_to_end(args, env, timeout=300)


@contextmanager
def served_cli(args: list[str], state: Path, log_file: Path, cache: Path):
    """``hydratune serve ARGS`` in a subprocess until ``state`` (its serve.json) appears: (process, state); stopped
    with SIGTERM at the end (killed if it does not stop within 40 s)."""
    import json
    import signal
    import time

    env = {**os.environ, "HYDRATUNE_CACHE": str(cache)}
    with open(log_file, "w") as log:
        process = start(["serve", *args], env, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 240
            while not state.is_file() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.3)
            assert state.is_file(), log_file.read_text()[-3000:]
            yield process, json.loads(state.read_text())
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(40)
                except subprocess.TimeoutExpired:
                    process.kill()
