"""On a CUDA machine: the tiny model trains and evaluates on one GPU through the CLI (skipped without CUDA)."""

from __future__ import annotations

import json
import math

import pytest

from tests.helpers import hydratune

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def test_lora_trains_and_evaluates_on_one_gpu(tmp_path, cache_dir):
    args = ["model=tiny_random", "hardware=single_gpu", "train.max_steps=3", "eval.max_examples=4"]
    result = hydratune(*args, "eval.generation.max_new_tokens=4", f"hydra.run.dir={tmp_path}", cache=cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["hardware"]["device"] == "cuda"
    assert metrics["hardware"]["model_dtype"] in ("bfloat16", "float16")  # model.dtype=auto on a GPU
    assert math.isfinite(metrics["finetuned"]["eval_loss"]) and metrics["finetuned"]["examples"] == 4
    assert (tmp_path / "model" / "adapter_model.safetensors").is_file()
