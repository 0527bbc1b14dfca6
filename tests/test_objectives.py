"""Training objectives (conf/objective/): compose-time errors, reward functions, and every objective training the tiny
model end to end: seeded losses equal the recorded ones, and a run killed after a checkpoint resumes to the same
final loss."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import ASSETS, compose, hydratune, start
from trainer.config.checks import check_config
from trainer.config.errors import UserError
from trainer.engine.checkpoints import problems_of

PAIRS = [
    "dataset=preference",
    f"dataset.path={ASSETS / 'data' / 'preference.jsonl'}",
    "dataset.validation_size=3",
]
REWARDS = (
    "objective.reward_funcs=[{_target_: trainer.engine.rewards.TokenF1}, "
    "{_target_: trainer.engine.rewards.LengthPenalty, max_chars: 8, per_char: 0.05}]"
)
#: Per objective: the overrides of its tiny run, and the metric its report's verdict states.
RUNS = {
    "dpo": ([*PAIRS], "pair_accuracy_mean"),
    "kto": ([*PAIRS], "pair_accuracy_mean"),
    "orpo": ([*PAIRS], "pair_accuracy_mean"),
    "reward": ([*PAIRS], "pair_accuracy"),
    "grpo": (["dataset.max_train_examples=16", REWARDS, "objective.args.max_completion_length=8"], "reward"),
    "distill": (
        [
            "dataset.max_train_examples=16",
            "objective.teacher.source=tiny_random",
            "objective.teacher.name_or_path=teacher",  # another tiny model: weights seeded by the name
            "objective.args.max_completion_length=8",
        ],
        "exact_match",
    ),
}
TINY = [
    "model=tiny_random",
    "hardware.threads=1",
    "eval.max_examples=3",
    "eval.generation.max_new_tokens=4",
    "logger=jsonl",
    "train.max_steps=6",
    "train.save_steps=2",
]
RECORDED = ASSETS / "recorded_losses_objectives.json"


def args(objective: str) -> list[str]:
    return [*TINY, f"objective={objective}", *RUNS[objective][0]]


#: What is recorded per step: the loss, except for GRPO, whose loss is ~0 by construction on its first pass over
#: each batch (advantages are centred per group); its mean reward of the sampled answers moves with training.
RECORDED_KEY = {"grpo": "reward"}


def losses(run_dir: Path, key: str = "loss") -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r and "loss" in r}


# ---------------------------------------------------------------- compose-time errors


def checked(*overrides: str):
    from launchers import check  # check_config, then the launcher's own rules (a provider's)

    check(compose(*overrides))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["objective=dpo", "dataset=quickstart"],
            "objective=dpo trains on preference pairs (dataset.format=preference: prompt, chosen, rejected), but "
            "dataset=quickstart has dataset.format=chat. Datasets that provide it: dataset=preference",
        ),
        (["objective=reward", "dataset=alpaca"], "objective=reward trains on preference pairs"),
        (["objective=kto", "dataset=quickstart"], "Datasets that provide it: dataset=preference"),
        (["objective=sft", *PAIRS], "objective=sft trains on supervised examples"),
        (["objective=grpo", "dataset=text"], "objective=grpo trains on prompts"),
        (["objective=grpo"], "objective=grpo needs reward functions and objective.reward_funcs is empty"),
        (["objective=grpo", "objective.reward_funcs=[TokenF1]"], "is not a `_target_` callable"),
        (["objective=distill"], "objective=distill needs a teacher model: set objective.teacher.name_or_path"),
        (
            ["objective=grpo", REWARDS, "++train.max_length=64"],
            "'train.max_length' is not an argument of trl.GRPOConfig",
        ),
        (["objective=dpo", *PAIRS, "++objective.args.betta=0.2"], "Did you mean 'beta'"),
        (["objective=dpo", *PAIRS, "objective.args.beta=high"], "objective.args.beta='high' has the wrong type"),
        (
            ["objective=kto", *PAIRS, "hardware=openai", "model=gpt_4o_mini"],
            "objective=kto is not offered by the provider openai (hardware=openai): it trains objective=sft, dpo.",
        ),
    ],
)
def test_mismatches_are_compose_time_errors(overrides, expected):
    with pytest.raises(UserError, match=re.escape(expected)):
        checked(*overrides)


def test_every_objective_composes_with_its_data():
    for objective, (overrides, _) in RUNS.items():
        cfg = compose(f"objective={objective}", *overrides)
        check_config(cfg)
        assert cfg.objective.trainer.rsplit(".", 1)[1].startswith(("DPO", "KTO", "ORPO", "Reward", "GRPO", "Distill"))


def test_objective_classes_are_what_trl_exports():
    from trainer.engine.objectives import _import

    for objective in RUNS:
        cfg = compose(f"objective={objective}", *RUNS[objective][0])
        trainer, config = _import(cfg.objective.trainer), _import(cfg.objective.config)
        assert trainer.__name__ == cfg.objective.trainer.rsplit(".", 1)[1]
        assert config.__name__.removesuffix("Config") == trainer.__name__.removesuffix("Trainer")
    assert compose("objective=orpo").objective.experimental is True


def test_cli_names_the_objective_and_the_datasets(tmp_path):
    result = hydratune("objective=dpo", "dataset=quickstart", f"hydra.run.dir={tmp_path}", cache=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "objective=dpo trains on preference pairs" in result.stderr and "dataset=preference" in result.stderr


# ---------------------------------------------------------------- reward functions


def test_shipped_rewards_score_completions_the_way_grpo_calls_them():
    from trainer.engine import rewards

    chat = [[{"role": "assistant", "content": '["flour", "eggs"]'}], [{"role": "assistant", "content": "flour"}]]
    refs = ['["flour", "eggs"]', '["flour", "eggs"]']
    assert rewards.ExactMatch()(prompts=["a", "b"], completions=chat, reference=refs) == [1.0, 0.0]
    assert rewards.TokenF1()(prompts=["a", "b"], completions=chat, reference=refs) == [1.0, pytest.approx(2 / 3)]
    assert rewards.JsonValid(type="list")(completions=['["a"]', '{"a": 1}', "nope"]) == [1.0, 0.0, 0.0]
    assert rewards.RegexFormat(pattern=r"\[.*\]")(completions=['["a"]', "a"]) == [1.0, 0.0]
    assert rewards.LengthPenalty(max_chars=3, per_char=0.25)(completions=["abc", "abcde", "x" * 20]) == [
        0.0,
        -0.5,
        -1.0,
    ]
    with pytest.raises(UserError, match="has none"):
        rewards.TokenF1()(completions=["a"], reference=[None])
    with pytest.raises(UserError, match="not a valid regex"):
        rewards.RegexFormat(pattern="([")


# ---------------------------------------------------------------- every objective trains the tiny model

_RUNS: dict[str, Path] = {}


def straight_run(objective: str, root: Path, cache: Path) -> Path:
    """One seeded tiny run per objective (6 steps, a checkpoint every 2), shared by the tests below."""
    if objective not in _RUNS:
        run_dir = root / objective
        result = hydratune(*args(objective), f"hydra.run.dir={run_dir}", cache=cache)
        assert result.returncode == 0, result.stderr[-3000:]
        _RUNS[objective] = run_dir
    return _RUNS[objective]


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("objectives")


@pytest.mark.slow  # trains the tiny model
@pytest.mark.parametrize("objective", list(RUNS))
def test_objective_trains_with_recorded_losses_and_reports_its_metric(objective, runs_root, cache_dir):
    # Recorded from seeded runs on CPU (torch 2.13, transformers 5.24, trl 1.16, one thread): the tiny model,
    # LoRA r=16, batch 8, lr 2e-4. A change here means training itself changed.
    run_dir = straight_run(objective, runs_root, cache_dir)
    got = losses(run_dir, RECORDED_KEY.get(objective, "loss"))
    recorded = json.loads(RECORDED.read_text())[objective]
    assert got.keys() == {int(k) for k in recorded}
    for step, loss in recorded.items():
        assert got[int(step)] == pytest.approx(loss, rel=1e-4, abs=1e-6), (objective, step, got)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    headline = RUNS[objective][1]
    assert headline in metrics["base"] and headline in metrics["finetuned"]
    report = (run_dir / "report.md").read_text()
    verdict = report.split("\n\n")[1]  # the paragraph under the title
    assert f"model beat the base model on {headline}" in verdict or f"NOT beat the base model on {headline}" in verdict
    assert "(95% CI " in verdict and f"(objective={objective})" in report  # per-example scores: a CI on the headline
    assert "control" in metrics  # the validity probe: the same evaluation of a random-weight model
    assert (run_dir / "model" / "adapter_config.json").is_file()


def kill_after_first_checkpoint(objective: str, run_dir: Path, cache: Path) -> None:
    env = {**os.environ, "HYDRATUNE_CACHE": str(cache)}
    cmd = [*args(objective), f"hydra.run.dir={run_dir}"]
    proc = start(cmd, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300

    def before_last() -> list[Path]:
        return [c for c in (run_dir / "checkpoints").glob("checkpoint-[0-9]*") if c.name != "checkpoint-6"]

    def complete(found: list[Path]) -> bool:  # a checkpoint before the last step, whole, so the resume uses it (on a
        # busy machine the first one may already be rotated away by save_total_limit when this process next looks)
        try:
            return any((c / "trainer_state.json").exists() and not problems_of(c) for c in found)
        except OSError:  # rotated away while being read
            return False

    while True:  # the run is stopped while its checkpoints are verified: a fast CPU finishes the last steps first
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        if found := before_last():
            proc.send_signal(signal.SIGSTOP)
            if complete(found):
                break
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "metrics.json").exists(), "the run finished before it was killed"


@pytest.mark.slow  # trains and kills the tiny model
@pytest.mark.parametrize("objective", list(RUNS))
def test_killed_run_resumes_to_the_same_final_loss(objective, runs_root, cache_dir, tmp_path):
    straight = straight_run(objective, runs_root, cache_dir)
    resumed = tmp_path / "resumed"
    kill_after_first_checkpoint(objective, resumed, cache_dir)
    result = hydratune(*args(objective), f"hydra.run.dir={resumed}", cache=cache_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming from" in (resumed / "hydratune.log").read_text()
    key = RECORDED_KEY.get(objective, "loss")
    assert losses(resumed, key)[6] == pytest.approx(losses(straight, key)[6], abs=0, rel=1e-6)


def test_a_resumed_run_replays_the_shuffled_order_of_its_epoch():
    # GRPO's and distillation's RepeatSampler shuffles with one generator advanced once per epoch: a sampler made
    # afresh for a run resumed in epoch 2 must shuffle epoch 2 as the uninterrupted run did (trainer/engine/epoch_order.py).
    from trl.trainer.utils import RepeatSampler

    from trainer.engine.epoch_order import EpochReplay

    def sampler():
        return EpochReplay(RepeatSampler(range(16), mini_repeat_count=1, batch_size=8, seed=42))

    straight = sampler()
    epochs = []
    for epoch in range(3):
        straight.set_epoch(epoch)
        epochs.append(list(straight))
    assert epochs[0] != epochs[2]
    resumed = sampler()
    resumed.set_epoch(2)
    assert list(resumed) == epochs[2]
    trl_order = list(RepeatSampler(range(16), mini_repeat_count=1, batch_size=8, seed=42))
    assert trl_order == epochs[0]  # an uninterrupted run's order is TRL's own


def test_quickstart_dpo_pairs_are_the_quickstart_with_recorded_wrong_answers():
    # experiment=quickstart_dpo's committed data (examples/quickstart_dpo/generate_pairs.py): every quickstart prompt,
    # chosen = its reference, rejected = the base model's recorded answer, never the reference.
    from trainer.data import load_examples

    cfg = compose("experiment=quickstart_dpo")
    assert (cfg.objective.name, cfg.dataset.format, cfg.dataset.validation_size) == ("dpo", "preference", 32)
    check_config(cfg)
    pairs = load_examples(cfg.dataset)
    assert (len(pairs.train), len(pairs.validation), len(pairs.skipped)) == (388, 32, 0)
    recipes = load_examples(compose("dataset.validation_size=0").dataset).train
    answer = {json.dumps(r["messages"][:-1]): r["messages"][-1:] for r in recipes}
    assert len(answer) == 420
    for pair in pairs.train + pairs.validation:
        assert pair["chosen"] == answer[json.dumps(pair["prompt"])]
        assert pair["rejected"][0]["content"] not in ("", pair["chosen"][0]["content"])
    # matched lengths: a score summed over the answer cannot prefer the chosen answer for being shorter
    for pair in pairs.train + pairs.validation:
        chosen, rejected = len(pair["chosen"][0]["content"]), len(pair["rejected"][0]["content"])
        assert abs(chosen - rejected) < 0.1 * max(chosen, rejected), pair


# ---------------------------------------------------------------- several processes

#: DeepSpeed compiles its CPU communication op once per machine into this folder (as tests/test_distributed.py does).
EXTENSIONS = Path(
    os.environ.get("HYDRATUNE_TEST_EXTENSIONS", Path.home() / ".cache" / "hydratune" / "torch_extensions")
)


@pytest.mark.slow
@pytest.mark.parametrize(("objective", "hardware"), [("dpo", "ddp")])
def test_objective_trains_in_two_processes(objective, hardware, tmp_path, cache_dir):
    # 2 gloo processes x batch 4 on this CPU, 3 steps (the first is warmup at learning rate 0): the parent prepares the
    # objective's data once, each rank trains, rank 0 reports. Every other objective x ddp / ZeRO-2 / ZeRO-3 was run
    # by hand (README "Training objectives": a ZeRO-2 run costs ~1 min of CI here, over this suite's budget).
    run_dir = tmp_path / "run"
    two = [
        f"hardware={hardware}",
        "train.per_device_train_batch_size=4",
        "train.max_steps=3",
        "eval.cache_base=false",
        f"hardware.torch_extensions_dir={EXTENSIONS}",
        f"hydra.run.dir={run_dir}",
    ]
    result = hydratune(*args(objective), *two, cache=cache_dir, env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert sorted(p.name for p in (run_dir / "logs").glob("rank*.log")) == ["rank0.log", "rank1.log"]
    curve = losses(run_dir)
    assert sorted(curve) == [1, 2, 3] and curve[3] < curve[1], curve  # one line per step (rank 0), and it trained
    metrics = json.loads((run_dir / "metrics.json").read_text())
    headline = RUNS[objective][1]
    assert 0 <= metrics["finetuned"][headline] <= 1 and metrics["finetuned"]["pairs"] == 3
    assert (run_dir / "model" / "adapter_model.safetensors").is_file()
