"""Helpers shared by the tests: import them from here (never from conftest.py or another test file).

Fixtures (cache_dir, tiny_tokenizer) live in conftest.py; plain functions and constants live here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().parent / "assets"


def compose(*overrides: str):
    """The config `hydratune` would compose for these overrides (no Hydra run dir)."""
    from trainer import schema

    return schema.compose(list(overrides))


def hydratune(*args: str, cache: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the `hydratune` command as a user would, in a subprocess."""
    full_env = {**os.environ, "HYDRATUNE_CACHE": str(cache), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "trainer.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=REPO,
        timeout=timeout,
    )


def compose_checked(*overrides: str):
    """:func:`compose`, with composition errors (an unknown key, a value outside a closed choice) rewritten into the
    UserError paragraph the CLI prints."""
    from trainer.compose_errors import explain_composition_error
    from trainer.errors import UserError

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
