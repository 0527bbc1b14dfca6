"""The pre-flight estimate's arithmetic, its throughput cache and what a run writes."""

from __future__ import annotations

import json
import logging
import math

import pytest

from trainer.engine import estimate

SHAPE = estimate.ModelShape(
    layers=2, hidden=8, intermediate=16, vocab=100, body=1000, total=1800, trainable=50, full=False
)


def work(**changes) -> estimate.Workload:
    fields = dict(
        steps=10,
        sequences_per_step=4,
        tokens_per_sequence=20.0,
        padded_tokens_per_sequence=25.0,
        scored_tokens_per_sequence=5.0,
        eval_loss_runs=2,
        eval_sequences=6,
        generation_runs=2,
        queries=6,
        generation_batch=4,
        prompt_tokens=15.0,
        new_tokens=3,
    )
    return estimate.Workload(**{**fields, **changes})


def test_training_arithmetic_adapters_4n_full_6n():
    flops = 1e6
    est = estimate.compute(SHAPE, work(), "cpu", "float32", 2, flops, "test")
    attention = 4 * 2 * 25 * 8  # layers x context x hidden x 4, per token
    per_token = 4 * 1000 + 3 * attention + 6 * 50  # adapters: forward 2N + input gradients 2N; trainable 6 each
    head = 2 * 8 * 100  # 2 x hidden x vocab per scored position, 3 times (forward, recompute, input gradient)
    step = 4 * (25 * per_token + 5 * 3 * head)
    assert est.train_flops_per_token == per_token
    assert est.step_s == pytest.approx(step / (flops * estimate.EFFICIENCY["float32"]["train"]))
    assert est.train_s == pytest.approx(10 * est.step_s)
    assert est.tokens_per_step == 80

    full = estimate.compute(
        estimate.ModelShape(**{**SHAPE.__dict__, "full": True}), work(), "cpu", "float32", 2, flops, "test"
    )
    assert full.train_flops_per_token == 6 * 1000 + 3 * attention


def test_evaluation_and_whole_run_arithmetic():
    flops = 1e6
    est = estimate.compute(SHAPE, work(), "cpu", "bfloat16", 2, flops, "test")
    forward = 2 * 1000 + 4 * 2 * 25 * 8 + 2 * 8 * 100
    loss = 2 * 6 * 25 * forward / (flops * estimate.EFFICIENCY["bfloat16"]["forward"])
    prefill = 6 * 15 * forward / (flops * estimate.EFFICIENCY["bfloat16"]["forward"])
    step = (
        2 * (1000 + 800) * 4 / (flops * estimate.EFFICIENCY["bfloat16"]["decode"])
        + 2 * estimate.DECODE_LAYER_OVERHEAD_S["cpu"]
    )
    decode = 2 * 3 * step  # 2 batches of 4 queries, 3 new tokens each
    assert est.evaluation_s == pytest.approx(loss + 2 * (prefill + decode))
    startup = estimate.STARTUP_S["cpu"] + 1800 * 2 / estimate.LOAD_BYTES_PER_S
    assert est.total_s == pytest.approx(startup + est.train_s + est.evaluation_s)
    no_eval = estimate.compute(SHAPE, work(eval_loss_runs=0, generation_runs=0), "cpu", "bfloat16", 2, flops, "t")
    assert no_eval.evaluation_s == 0


def test_memory_arithmetic():
    tile = 4 * 5 * estimate.LM_HEAD_TILE[1] * (2 + 4 * estimate.LM_HEAD_TEMPORARIES)
    # On a CPU, saved activations count 4 bytes whatever the weights' dtype; the adapters' float32 copies 8.
    est = estimate.compute(SHAPE, work(), "cpu", "bfloat16", 2, 1e9, "test")
    activations = 4 * 25 * 2 * (4 * (12 * 8 + 6 * 16) + 8 * (6 * 8 + 16))
    expected = estimate.RUNTIME_BYTES + 1800 * 2 + 16 * 50 + activations + tile
    assert est.peak_memory_bytes == pytest.approx(expected)
    # On a GPU, bf16 activations count 2 bytes, and there is no CPU runtime in its memory.
    gpu = estimate.compute(SHAPE, work(), "cuda", "bfloat16", 2, 1e12, "test")
    activations = 4 * 25 * 2 * (2 * (12 * 8 + 6 * 16) + 8 * (6 * 8 + 16))
    assert gpu.peak_memory_bytes == pytest.approx(1800 * 2 + 16 * 50 + activations + tile)


def test_expected_longest_of_a_batch():
    assert estimate.expected_longest([1, 2, 3, 4], 1) == pytest.approx(2.5)
    assert estimate.expected_longest([1, 2, 3, 4], 2) == pytest.approx(50 / 16)
    assert estimate.expected_longest([4, 3, 2, 1], 200) == pytest.approx(4, rel=1e-6)
    assert estimate.expected_longest([], 8) == 0


def test_workload_steps_from_trl_arguments():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    eval_cfg = OmegaConf.create({"enabled": True, "batch_size": 16, "generation": {"max_new_tokens": 64}})
    args = SimpleNamespace(
        per_device_train_batch_size=8, gradient_accumulation_steps=1, max_steps=-1, num_train_epochs=1.0
    )
    lengths = [100] * 360
    w = estimate.workload(args, eval_cfg, lengths, [17] * 360, [120] * 60, [90] * 60, world=1, base_runs=True)
    assert (w.steps, w.sequences_per_step, w.eval_loss_runs, w.generation_runs) == (45, 8, 2, 2)
    assert (w.padded_tokens_per_sequence, w.scored_tokens_per_sequence, w.prompt_tokens) == pytest.approx((100, 17, 90))
    args.gradient_accumulation_steps, args.num_train_epochs = 2, 3.0
    assert estimate.workload(args, eval_cfg, lengths, [17], [], [], world=2, base_runs=False).steps == 3 * 11
    args.max_steps = 7
    w = estimate.workload(args, eval_cfg, lengths, [17], [], [], world=1, base_runs=False)
    assert (w.steps, w.eval_loss_runs, w.generation_runs, w.queries) == (7, 0, 1, 0)


def test_model_shape_of_the_tiny_model_with_lora(tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    from trainer import models

    model = models.tiny_model(tiny_tokenizer)
    embed = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    shape = estimate.model_shape(peft, full=False)
    assert (shape.layers, shape.hidden, shape.intermediate, shape.vocab) == (2, 64, 128, len(tiny_tokenizer))
    assert shape.total == total and shape.body == total - 2 * embed  # untied: the LM head is as big as the embedding
    assert shape.trainable == 2 * (4 * (64 + 64) + 4 * (64 + 32))  # q: 64->64, v: 64->32 (2 KV heads of 16)


def test_matmul_benchmark_keeps_the_best_and_gpu_is_nominal(tmp_path, monkeypatch):
    import torch

    flops, source = estimate.matmul_flops("cpu", "float32", 1, tmp_path, size=64)
    assert flops > 0 and "matmul" in source
    (key,) = json.loads((tmp_path / "estimate" / "matmul.json").read_text())
    (tmp_path / "estimate" / "matmul.json").write_text(json.dumps({key: 1e18}))
    assert estimate.matmul_flops("cpu", "float32", 1, tmp_path, size=64)[0] == 1e18  # a better figure seen earlier
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert estimate.matmul_flops("cuda", "bfloat16", 1, tmp_path)[0] == estimate.NOMINAL_GPU_FLOPS


def test_one_log_line_saved_in_the_run_dir_and_a_warning_past_an_hour(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(estimate, "matmul_flops", lambda *a: (1e6, "test throughput"))
    with caplog.at_level(logging.INFO, logger="trainer.engine.estimate"):
        quick = estimate.preflight(SHAPE, work(steps=1), "cpu", "float32", 2, tmp_path, run_dir=tmp_path)
    assert quick.total_s < estimate.WARN_OVER_S
    assert [r.getMessage() for r in caplog.records] == [quick.line()]
    assert quick.line().startswith("estimate: 80 tokens/step, ") and "test throughput" in quick.line()
    assert json.loads((tmp_path / "estimate.json").read_text())["total_s"] == pytest.approx(quick.total_s)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="trainer.engine.estimate"):
        slow = estimate.preflight(SHAPE, work(steps=100_000), "cpu", "float32", 2, tmp_path)
    assert slow.total_s > estimate.WARN_OVER_S
    assert caplog.records[-1].levelname == "WARNING" and "estimated to take" in caplog.records[-1].getMessage()
    assert math.isfinite(slow.total_s)


@pytest.mark.slow  # a hydratune process
def test_prepare_prints_the_estimate_of_a_gpu_run_on_a_machine_without_one(tmp_path, cache_dir):
    """`hydratune prepare hardware=single_gpu`: no GPU here, so the estimate uses the model's FLOPs and size and a
    nominal GPU; the run dir keeps estimate.json."""
    from tests.helpers import hydratune

    args = ["prepare", "model=tiny_random", "hardware=single_gpu", f"hydra.run.dir={tmp_path}"]
    result = hydratune(*args, cache=cache_dir, env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("estimate: "))
    assert "(cuda, float32," in line and "nominal GPU" in line  # tiny_random sets float32: an explicit dtype wins
    saved = json.loads((tmp_path / "estimate.json").read_text())
    assert saved["device"] == "cuda" and saved["flops_per_s"] == estimate.NOMINAL_GPU_FLOPS
