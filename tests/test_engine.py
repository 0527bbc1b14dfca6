"""End to end on the tiny random model: every output, recorded losses, the finished-run guard (kill-and-resume: test_faults)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, hydratune

pytestmark = pytest.mark.slow  # runs a training job (tiny model) or several processes

TINY = [
    "model=tiny_random",
    "hardware.threads=1",
    "eval.max_examples=8",
    "eval.generation.max_new_tokens=8",
    "logger=jsonl",
]


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, cache_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    start = time.perf_counter()
    # eval.regression: the general-ability probe on the base and the fine-tuned model (tests/test_regression.py)
    result = hydratune(
        *TINY, "train.max_steps=3", "eval.regression=general", f"hydra.run.dir={run_dir}", cache=cache_dir
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir / "wall_seconds").write_text(f"{time.perf_counter() - start:.1f}")
    return run_dir


def test_tiny_run_writes_every_output(tiny_run):
    for name in (
        "config.yaml",
        "overrides.json",
        "metrics.json",
        "metrics.jsonl",
        "report.md",
        "report.html",
        "examples.jsonl",
        "loss_curve.png",
        "hydratune.log",
        "data_stats.json",
        "estimate.json",
    ):
        assert (tiny_run / name).is_file(), name
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    shared = {"eval_loss", "perplexity", "exact_match", "token_f1", "prompt_tokens_per_query"}
    assert shared <= metrics["base"].keys() and shared <= metrics["finetuned"].keys()
    assert (tiny_run / "model" / "adapter_config.json").is_file()
    assert (tiny_run / "model" / "adapter_model.safetensors").is_file()
    report = (tiny_run / "report.md").read_text()
    assert "| metric | base model | fine-tuned | change |" in report and "loss_curve.png" in report
    assert "## Time and memory: pre-flight estimate vs measured" in report and "| time per training step |" in report
    assert metrics["estimate"]["measured"]["step_s"] > 0 and metrics["estimate"]["estimated"]["step_s"] > 0
    assert "[trainer.engine.estimate][INFO] - estimate: " in (tiny_run / "hydratune.log").read_text()


def test_tiny_run_report_has_paired_statistics_flips_and_break_even(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    pairs = {(c["reference"], c["candidate"], c["metric"]) for c in metrics["comparisons"]}
    assert {("base", "finetuned", "exact_match"), ("base", "finetuned", "token_f1")} <= pairs
    assert metrics["flips"][0]["n"] == 8 and metrics["break_even"]["training"]["usd"] > 0
    assert (
        metrics["break_even"]["per_1000_queries"]["few_shot"]["prompt_tokens"]
        > metrics["finetuned"]["prompt_tokens_per_query"]
    )
    assert len((tiny_run / "examples.jsonl").read_text().splitlines()) == 8
    md = (tiny_run / "report.md").read_text()
    assert "## Paired comparisons" in md and "## Flips: fine-tuned vs base model" in md
    assert "## Cost and break-even" in md and "3-shot" in md
    assert "Every example" in (tiny_run / "report.html").read_text()
    probe = metrics["regression"]
    assert probe["items"] == 104 and probe["comparison"]["n"] == 104 and "## General-ability regression check" in md


def test_saved_adapter_loads_with_plain_peft(tiny_run, cache_dir):
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(tiny_run / "model")
    assert model.peft_config["default"].r == 16


def test_seeded_tiny_run_matches_recorded_losses(tiny_run):
    # Recorded from a seeded run on CPU (torch 2.13, transformers 5.24, trl 1.16): the tiny model, quickstart data,
    # LoRA r=16, batch 8, lr 2e-4. A change here means training itself changed.
    recorded = json.loads((REPO / "tests" / "assets" / "recorded_losses.json").read_text())
    got = losses(tiny_run)
    assert got.keys() == {int(k) for k in recorded}
    for step, loss in recorded.items():
        assert got[int(step)] == pytest.approx(loss, rel=1e-4), (step, got)


def test_finished_run_is_never_overwritten(tiny_run, cache_dir):
    before = (tiny_run / "metrics.json").read_text()
    result = hydratune(*TINY, "train.max_steps=3", f"hydra.run.dir={tiny_run}", cache=cache_dir)
    assert result.returncode == 2
    assert "already holds a finished run" in result.stderr and "Traceback" not in result.stderr
    assert (tiny_run / "metrics.json").read_text() == before


def test_eval_command_scores_the_configured_model_without_training(tmp_path, cache_dir):
    result = hydratune("eval", *TINY, f"hydra.run.dir={tmp_path}", cache=cache_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"hardware", "objective", "base"} and metrics["base"]["examples"] == 8
    assert metrics["objective"]["name"] == "sft"  # the verdict's headline metric comes from the objective
    assert not (tmp_path / "model").exists()
