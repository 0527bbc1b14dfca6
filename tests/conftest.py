"""Shared fixtures: no network, no GPU. The tiny model and its tokenizer are built in-process."""

from __future__ import annotations

import os
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
# The tiers that share the cores between two pytest-xdist workers: OpenMP threads that wait for work sleep instead of
# spinning. Spinning, each waiting torch thread keeps a core busy that the other worker's run needs: two tiny runs of
# 2 threads side by side trained in 19.3 s each, 6.9 s with PASSIVE (alone: 5.0 s, 6.3 s with PASSIVE, AVX512). The
# serial tier (cores free) keeps OpenMP's default. Set before anything imports torch (libgomp reads it when loaded).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the session's runs (converted models, prepared datasets, base evaluations)."""
    return tmp_path_factory.mktemp("hydratune-cache")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from trainer.models import tiny_tokenizer

    return tiny_tokenizer()


@pytest.hookimpl(trylast=True)  # after -m has deselected: torch is imported only when a gpu test is still selected
def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need a CUDA device; elsewhere they are reported as skipped (never as passed)."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason=f"needs a CUDA GPU (torch {torch.__version__} sees none)")
        for item in gpu_items:
            item.add_marker(skip)
