"""Exact resume after the training phase (issue 31): a SIGKILL during the evaluation or the report, or at the last
step's checkpoint, reruns to the uninterrupted run's adapter and numbers without training again; a warm cache trains
as a cold one does; SIGTERM is recorded as Ctrl-C is and the run resumes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, hydratune, interrupted_at

STEPS = 5
#: A constant learning rate: one step too many would show in the adapter and the losses (a decaying one hides it).
RUN = [
    "model=tiny_random", "hardware.threads=1", "eval.max_examples=4", "eval.generation.max_new_tokens=4",
    f"train.max_steps={STEPS}", "train.save_steps=2", "train.lr_scheduler_type=constant", "logger=jsonl",
]  # fmt: skip
KILLS = 5


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> tuple[Path, dict]:
    """One uninterrupted run (ROOT/straight, on a cold cache: model, data and base evaluation computed), then
    KILLS runs SIGKILLed at seeded instants after the training phase was recorded and one at the appearance of the
    last step's checkpoint, each rerun to the end (tests.kill_harness phases; warm caches)."""
    root = tmp_path_factory.mktemp("resume")
    env = {**os.environ, "HYDRATUNE_CACHE": str(root / "cache")}
    out = subprocess.run(
        [sys.executable, "-m", "tests.kill_harness", "phases", str(root), str(KILLS), "31", "--", *RUN],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["straight_rc"] == 0, report
    return root, report


def adapter(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "model" / "adapter_model.safetensors")


def same_tensors(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def numbers(run_dir: Path) -> dict:
    """metrics.json without what measures this process (times, memory, whether a cache was warm) or the training
    time (the recorded phase's, checked on its own)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop("estimate")
    metrics["data"].pop("cache_hit")
    metrics["data"].pop("seconds")
    metrics["break_even"].pop("training")
    metrics["break_even"].pop("break_even_queries")
    return metrics


def summary(run_dir: Path) -> dict:
    """The training phase's summary (train_runtime, train_loss ...) in the report's history."""
    history = json.loads((run_dir / "history.json").read_text())["log_history"]
    (found,) = [h for h in history if "train_loss" in h]
    return found


@pytest.mark.slow  # kills and reruns hydratune processes (tiny model)
def test_a_sigkill_in_evaluation_or_reporting_reruns_to_the_uninterrupted_results(cases):
    root, report = cases
    straight = root / "straight"
    assert len(report["after"]) == KILLS
    for i, case in enumerate(report["after"]):
        run_dir = root / f"after-{i}"
        assert case["killed_rc"] == -signal.SIGKILL, (i, report)  # killed, not finished before the kill
        # A kill after metrics.json (the last result written) leaves a finished run, which a rerun never modifies.
        assert case["rerun_rc"] == (2 if case["results_at_kill"] else 0), (i, report)
        assert same_tensors(adapter(run_dir), adapter(straight)), i
        assert numbers(run_dir) == numbers(straight), i
        assert losses(run_dir) == losses(straight), i  # every step once, none after the last
        recorded = json.loads((run_dir / "journal.json").read_text())["trained"]
        assert summary(run_dir) == {**recorded["metrics"], "step": STEPS}  # the recorded phase's, not the rerun's
        assert summary(run_dir)["train_loss"] == summary(straight)["train_loss"]
        training = json.loads((run_dir / "metrics.json").read_text())["break_even"]["training"]
        assert training["how"].startswith(f"{recorded['metrics']['train_runtime']:.1f} s of training")
    assert sum(not c["results_at_kill"] for c in report["after"]) >= 3, report  # most kills before the results


@pytest.mark.slow  # kills and reruns hydratune processes (tiny model)
def test_cold_and_warm_caches_give_bit_identical_training_losses(cases):
    root, _ = cases
    cold, warm = root / "straight", root / "after-0"
    assert "cache hit" not in (cold / "hydratune.log").read_text()
    assert "base evaluation cache hit" in (warm / "hydratune.log").read_text()
    assert [s for s, _ in losses(cold)] == list(range(1, STEPS + 1))
    assert losses(warm) == losses(cold)  # bit for bit: == on the floats


@pytest.mark.slow  # kills and reruns hydratune processes (tiny model)
def test_a_sigkill_at_the_last_checkpoint_never_trains_a_step_too_many(cases):
    root, report = cases
    case, run_dir, straight = report["last_checkpoint"], root / "last-checkpoint", root / "straight"
    assert case["killed_rc"] == -signal.SIGKILL and case["rerun_rc"] == 0, report
    assert losses(run_dir) == losses(straight)
    assert same_tensors(adapter(run_dir), adapter(straight))
    assert numbers(run_dir) == numbers(straight)
    assert not (run_dir / "checkpoints" / f"checkpoint-{STEPS + 1}").exists()


@pytest.mark.slow  # kills and reruns hydratune processes (tiny model)
@pytest.mark.parametrize("left", ["no record", "record, model unsaved"])
def test_a_rerun_from_the_last_steps_checkpoint_takes_it_instead_of_training(cases, tmp_path, left):
    """The run dir a kill leaves after the last step's checkpoint and before the journal records the phase (or
    before the model is saved), rebuilt from the straight run: the checkpoint's model, no step after the last."""
    root, _ = cases
    straight, run_dir = root / "straight", tmp_path / "run"
    shutil.copytree(straight, run_dir)
    journal = json.loads((run_dir / "journal.json").read_text())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()[: journal["trained"]["metrics_log_records"]]
    (run_dir / "metrics.jsonl").write_text("".join(f"{line}\n" for line in lines))
    for name in ("metrics.json", "report.md", "report.html", "history.json", "examples.jsonl", "status.json"):
        (run_dir / name).unlink()
    shutil.rmtree(run_dir / "model")
    if left == "no record":
        (run_dir / "journal.json").unlink()
    else:
        del journal["trained"]["saved"]
        (run_dir / "journal.json").write_text(json.dumps(journal))
    result = hydratune(*RUN, f"hydra.run.dir={run_dir}", cache=root / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert losses(run_dir) == losses(straight)
    assert same_tensors(adapter(run_dir), adapter(straight))
    assert numbers(run_dir) == numbers(straight)
    assert summary(run_dir)["train_loss"] == summary(straight)["train_loss"]
    training = json.loads((run_dir / "metrics.json").read_text())["break_even"]["training"]
    if left == "no record":  # the time was never recorded: said so, never made up
        assert training["usd"] is None and "train_runtime" not in summary(run_dir)
        assert f"checkpoint-{STEPS} holds the last step" in (run_dir / "hydratune.log").read_text()
    else:
        assert summary(run_dir) == summary(straight)


@pytest.mark.slow  # kills and reruns hydratune processes (tiny model)
def test_sigterm_writes_interrupted_and_the_rerun_resumes(tmp_path, cache_dir):
    steps = [*RUN[:4], "eval=none", "train.max_steps=30", "train.save_steps=10", "logger=jsonl"]
    steps.append(f"hydra.run.dir={tmp_path}")
    code, err = interrupted_at(steps, cache_dir, tmp_path / "checkpoints" / "checkpoint-10", signal.SIGTERM)
    assert code == 130 and "Traceback" not in err, err[-2000:]
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "interrupted"
    result = hydratune(*steps, cache=cache_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [s for s, _ in losses(tmp_path)] == list(range(1, 31))  # every step once
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "ok"


# ---------------------------------------------------------------- the parts, without a run


def test_evaluation_draws_from_random_streams_of_its_own():
    import random

    import numpy as np
    import torch

    from trainer.evaluation.local import own_random_state

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    with own_random_state(7):
        inside = (torch.rand(2), np.random.rand(2), random.random())
    with own_random_state(7):
        again = (torch.rand(2), np.random.rand(2), random.random())
    after = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(after[0], expected[0]) and (after[1] == expected[1]).all() and after[2] == expected[2]
    assert torch.equal(inside[0], again[0]) and (inside[1] == again[1]).all() and inside[2] == again[2]


def test_the_journal_records_phases_and_ignores_an_unreadable_one(tmp_path, caplog):
    from trainer.run import journal

    assert journal.read(tmp_path) == {}
    journal.record(tmp_path, "trained", {"global_step": 3})
    journal.record(tmp_path, "other", 1)
    assert journal.read(tmp_path) == {"trained": {"global_step": 3}, "other": 1}
    (tmp_path / journal.JOURNAL).write_text('{"trained": {"glob')  # not what atomic writes leave, but a hand edit
    caplog.set_level("WARNING")
    assert journal.read(tmp_path) == {} and "unreadable" in caplog.text


def test_a_rerun_keeps_the_training_phases_log_records(tmp_path):
    from trainer.run import metrics_log

    path = tmp_path / metrics_log.FILE
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 2, "finetuned_eval_loss": 1.0}\n{"ste')
    assert metrics_log.records(path) == 4
    assert metrics_log.keep_first(path, 2) == 2
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert metrics_log.keep_first(tmp_path / "absent.jsonl", 2) == 0


def test_the_last_steps_checkpoint_gives_the_trainers_train_loss():
    from types import SimpleNamespace

    from trainer.engine import training

    # logging_steps=2: each logged loss is the mean of the steps since the one before
    history = [
        {"loss": 4.0, "step": 2},
        {"loss": 3.0, "step": 4},
        {"loss": 1.0, "step": 5},
        {"eval_loss": 9, "step": 5},
    ]
    state = SimpleNamespace(log_history=history, total_flos=1.0, global_step=5, epoch=0.5, max_steps=5)
    record = training._reconstructed(state)
    assert record["metrics"]["train_loss"] == (4.0 * 2 + 3.0 * 2 + 1.0) / 5
    assert "train_runtime" not in record["metrics"] and record["log_history"][-1]["step"] == 5
    assert training.planned_steps(SimpleNamespace(max_steps=30), 99) == 30
    assert training.planned_steps(SimpleNamespace(max_steps=-1), 99) == 99  # epochs: the Trainer's own count


def test_sigterm_raises_keyboard_interrupt_inside_the_block_only():
    from trainer.run.signals import sigterm_interrupts

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), sigterm_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs at once; never reached
    assert signal.getsignal(signal.SIGTERM) == before
