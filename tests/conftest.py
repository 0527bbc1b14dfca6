"""Shared fixtures: no network, no GPU. The tiny model and its tokenizer are built in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Provider model lifecycles are checked against this day (launchers/cloud/lifecycle.py), so that tests using
# gpt-4o-mini do not start failing when OpenAI shuts it down; tests of the lifecycle itself set their own day.
os.environ.setdefault("HYDRATUNE_TODAY", "2026-12-01")

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().parent / "assets"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the session's runs (converted models, prepared datasets, base evaluations)."""
    return tmp_path_factory.mktemp("hydratune-cache")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from trainer.models import tiny_tokenizer

    return tiny_tokenizer()


def compose(*overrides: str):
    """The config `hydratune` would compose for these overrides (no Hydra run dir)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from trainer import schema

    schema.register()
    with initialize_config_module("conf", version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=False)


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
