"""The preference and RL verdict: length-controlled pair metrics, the random-weight control that exposes a metric a
model with no knowledge already maxes, per-pair and per-prompt scores with CIs, and the trackers' eval/ names."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.helpers import hydratune
from trainer.report import files as report_files
from trainer.report import markdown as report


def pair_section(wins: list[int], means: list[int], chosen_shorter: float) -> dict:
    """A metrics.json section from per-pair wins on the summed and the per-token mean log-probability."""
    per_pair = {"pair_accuracy": [float(w) for w in wins], "pair_accuracy_mean": [float(m) for m in means]}
    return {
        "pair_accuracy": sum(wins) / len(wins),
        "pair_accuracy_mean": sum(means) / len(means),
        "pairs": len(wins),
        "pairs_matched": 0,
        "chosen_shorter": chosen_shorter,
        "per_pair": per_pair,
    }


HEADLINE = ["pair_accuracy_mean", "pair_accuracy_matched", "pair_accuracy", "exact_match"]


def run_metrics(control: dict, base: dict, tuned: dict) -> dict:
    metrics = {"control": control, "base": base, "finetuned": tuned, "objective": {"name": "dpo", "headline": HEADLINE}}
    report.analyse(metrics, [])
    return metrics


def test_a_metric_the_control_maxes_is_flagged_and_the_headline_says_which_metric_it_uses():
    # length-biased data: every summed score prefers the (shorter) chosen answer, whatever the model knows
    n = 40
    coin = [i % 2 for i in range(n)]
    metrics = run_metrics(
        pair_section([1] * n, coin, 1.0), pair_section([1] * n, coin, 1.0), pair_section([1] * n, [1] * n, 1.0)
    )
    text = report.verdict(metrics)
    assert "pair_accuracy: this metric does not measure the task on this data" in text
    assert "already scores 1.0000 on it, where chance is 0.5" in text
    assert "Length confound: the chosen answer is the shorter one in 100% of the held-out pairs" in text
    assert text.startswith("**The fine-tuned model beat the base model on pair_accuracy_mean (pair accuracy on the per")
    assert "(95% CI +0.3" in text and "McNemar exact" in text  # 20 pairs flipped to right: a CI and a paired test


def test_no_win_is_claimed_when_every_headline_metric_is_maxed_by_the_control():
    n = 30
    sections = [pair_section([1] * n, [1] * n, 0.9) for _ in range(3)]
    sections[1] = pair_section([1] * n, [0] * n, 0.9)  # the base loses on the mean: a "gain" the control had anyway
    text = report.verdict(run_metrics(*sections))
    assert text.startswith("**No headline metric measures the task on this data**")
    assert "beat the" not in text.replace("NOT beat", "")


def test_a_gain_over_the_base_that_the_control_also_has_is_no_win():
    rng = random.Random(0)
    control_wins = [1] * 24 + [0] * 16  # 0.6: not off chance at n = 40 (p = 0.27)
    rng.shuffle(control_wins)
    control = pair_section(control_wins, control_wins, 0.5)
    base, tuned = (
        pair_section([0] * 30 + [1] * 10, [0] * 30 + [1] * 10, 0.5),
        pair_section([1] * 26 + [0] * 14, [1] * 26 + [0] * 14, 0.5),
    )
    metrics = run_metrics(control, base, tuned)
    text = report.verdict(metrics)
    assert text.startswith("**The fine-tuned model did NOT beat the base model on pair_accuracy_mean")
    assert "It does not beat the random-weight control on it either way" in text
    assert report.headline(metrics)["verdict"] == "no significant difference"
    flips = [f for f in metrics["flips"] if f["metric"] == "pair_accuracy_mean"]
    assert flips and (flips[0]["wrong_to_right"], flips[0]["right_to_wrong"]) == (26, 10)


def test_a_reward_the_control_scores_as_high_is_flagged():
    def section(values: list[float]) -> dict:
        return {"reward": sum(values) / len(values)}

    metrics = {
        "control": section([1.0] * 10),
        "base": section([0.2] * 10),
        "finetuned": section([0.9] * 10),
        "objective": {"name": "grpo", "headline": ["reward"]},
    }
    assert "reward: this metric does not measure the task on this data" in report.verdict(metrics)


def test_tracker_names_put_every_evaluation_number_under_eval():
    from trainer.run.mlflow_tracking import final_metrics, tracker_name

    assert tracker_name("eval_base_exact_match") == "eval/base_exact_match"
    assert tracker_name("eval_finetuned_loss") == "eval/finetuned_loss"
    assert tracker_name("loss") == "loss"
    got = final_metrics(
        {"base": {"token_f1": 0.5, "per_pair": {"x": [1.0]}}, "finetuned": {"exact_match": 1}, "data": {"n": 3}}
    )
    assert got == {"eval/base_token_f1": 0.5, "eval/finetuned_exact_match": 1.0, "data.n": 3.0}


def test_match_length_cuts_the_answer_or_swaps_an_ingredient():
    from examples.quickstart_dpo.generate_pairs import match_length

    reference = '["flour", "sugar"]'
    assert match_length("Ingredients: 2 cups of flour and some sugar", reference, []) == "Ingredients: 2 cups"
    swapped = match_length("no", reference, ["milk", "salt", "cornstarch"])
    assert json.loads(swapped)[0] == "flour" and json.loads(swapped)[1] in ("milk", "salt")


# ---------------------------------------------------------------- the tiny random model, end to end


def planted_pairs(path: Path, n: int = 24) -> Path:
    """Length-biased pairs: the chosen answer always the short one (like the old quickstart_pairs)."""
    rows = []
    for i in range(n):
        item = ["flour", "sugar", "butter", "eggs", "milk", "salt"][i % 6]
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"Generic ingredients of recipe {i}: 2 cups {item}, water"}],
                "chosen": [{"role": "assistant", "content": json.dumps([item, "water"])}],
                "rejected": [{"role": "assistant", "content": f"2 cups {item}, water, and then some more {item} " * 3}],
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow  # trains the tiny model
def test_tiny_random_dpo_on_length_biased_pairs_claims_no_win_and_flags_the_confound(tmp_path):
    data = planted_pairs(tmp_path / "pairs.jsonl")
    run_dir = tmp_path / "run"
    result = hydratune(
        "model=tiny_random",
        "objective=dpo",
        "dataset=preference",
        f"dataset.path={data}",
        "dataset.validation_size=12",
        "hardware.threads=1",
        "eval.generation.max_new_tokens=4",
        "logger=tensorboard",
        "train.max_steps=2",
        f"hydra.run.dir={run_dir}",
        cache=tmp_path / "cache",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["control"]["pair_accuracy"] == 1.0 and metrics["base"]["chosen_shorter"] == 1.0
    verdict = (run_dir / "report.md").read_text().split("\n\n")[1]
    assert "Length confound" in verdict and "pair_accuracy: this metric does not measure the task" in verdict
    assert "model beat the" not in verdict  # no headline claims a win over the control
    assert "(95% CI " in verdict or verdict.startswith("**No headline metric")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_finetuned_pair_accuracy_mean" in r for r in rows)  # trackers get the eval numbers
    assert any("eval_base_loss" in r for r in rows)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in (run_dir / "tensorboard").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    wanted = {"eval/base_loss", "eval/finetuned_loss", "eval/finetuned_exact_match", "eval/finetuned_token_f1"}
    assert wanted <= tags and "eval/finetuned_pair_accuracy_mean" in tags and not any("_eval_" in t for t in tags)
    report_files.rebuild(run_dir)  # per-pair scores live in metrics.json: the rebuilt verdict is the same
    assert (run_dir / "report.md").read_text().split("\n\n")[1] == verdict
