"""hardware=tinker against a fake Tinker server (tests/fake_tinker.py) that the real `tinker` SDK talks to over
127.0.0.1 and that really trains a LoRA on the tiny model: estimate, steps, saved states, the LoRA downloaded and
loaded with peft, local evaluation, report; the loss curve against the same config trained locally; kill -9 and
rerun; 429/5xx; secrets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from launchers import cloud
from tests.fake_provider import files_containing
from tests.fake_tinker import FakeTinker
from tests.helpers import REPO, compose, run_to_end, start

API_KEY = "tml-test-KEY-0123456789abcdef"
TINY = ["model.weights.source=tiny_random", "model.weights.name_or_path=tiny-random-llama"]
EVAL = ["eval.max_examples=4", "eval.generation.max_new_tokens=4", "eval.batch_size=4"]
#: The same training config for the Tinker run and the local one (no dropout: the fake's LoRA has none).
TRAIN = ["++train.max_steps=6", "train.per_device_train_batch_size=4", "train.save_steps=2", "train.learning_rate=1e-3",
         "method.peft.r=4", "method.peft.lora_alpha=32", "method.peft.lora_dropout=0.0"]  # fmt: skip


def base_dir(cache_dir: Path) -> str:
    from trainer.models import resolve_path

    return resolve_path(compose("model=tiny_random").model, cache_dir)


@pytest.fixture
def fake(monkeypatch, tmp_path, cache_dir):
    for var in ("TINKER_API_KEY", "TINKER_BASE_URL", "TINKER_PROJECT_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    with FakeTinker(base_dir(cache_dir), api_key=API_KEY) as server:
        monkeypatch.setenv("TINKER_API_KEY", API_KEY)
        monkeypatch.setenv("TINKER_BASE_URL", server.url)
        yield server


def overrides(*extra: str) -> list[str]:
    return ["hardware=tinker", "model=tinker_llama3_2_1b", *TINY, "dataset=quickstart", *TRAIN, *EVAL, *extra]


def tinker_cfg(tmp_path: Path, cache_dir: Path, *extra: str):
    cfg = compose(*overrides(*extra), f"cache_dir={cache_dir}")
    cfg.output_dir = str(tmp_path / "run")
    return cfg


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r and "step" in r]


def test_prepare_estimates_before_anything_is_sent(fake, tmp_path, cache_dir, capsys):
    cfg = tinker_cfg(tmp_path, cache_dir)
    cloud.run(cfg, "prepare")
    assert "tinker meta-llama/Llama-3.2-1B:" in capsys.readouterr().out
    assert fake.requests == []
    estimate = json.loads((Path(cfg.output_dir) / "cloud_estimate.json").read_text())["estimate"]
    assert estimate["usd"] == round(estimate["billed_tokens"] / 1e6 * 0.09, 4)


def test_a_missing_key_is_one_paragraph(monkeypatch, tmp_path, cache_dir):
    from trainer.config.errors import UserError

    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    with pytest.raises(UserError, match="set the environment variable TINKER_API_KEY"):
        cloud.run(tinker_cfg(tmp_path, cache_dir), "train")


@pytest.mark.slow  # trains the tiny model (at the fake and locally) and evaluates it
def test_end_to_end_matches_the_local_loss_curve(fake, tmp_path, cache_dir, capsys, caplog):
    caplog.set_level("DEBUG")
    cfg = tinker_cfg(tmp_path, cache_dir)
    cloud.run(cfg, "train")
    run_dir = Path(cfg.output_dir)
    assert len(fake.trained_steps) == 6 and [s for _, s in fake.trained_steps] == [1, 2, 3, 4, 5, 6]
    state = json.loads((run_dir / "cloud_state.json").read_text())
    assert state["tinker"]["step"] == 6 and state["tinker"]["path"].startswith("tinker://")
    assert len(fake.checkpoints) == 3  # save_state at steps 2, 4 and 6
    # every session was finished (training, then the export), so no heartbeat thread outlives the run
    assert fake.sessions == len(fake.finished) >= 2 and set(fake.finished.values()) == {"success"}

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (run_dir / "model").iterdir()}
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir(cache_dir)), str(run_dir / "model"))
    assert tuned.peft_config["default"].r == 4
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["job"]["provider"] == "tinker" and metrics["job"]["weights_kind"] == "adapter"
    assert set(metrics["base"]) >= {"eval_loss", "exact_match"} and metrics["finetuned"]["examples"] == 4
    assert metrics["base"]["eval_loss"] != metrics["finetuned"]["eval_loss"]
    assert "fine-tuned" in (run_dir / "report.md").read_text()
    remote = losses(run_dir)
    assert remote == pytest.approx(fake.losses, rel=1e-5) and len(remote) == 6

    local_dir = tmp_path / "local"
    local = compose("model=tiny_random", "hardware=cpu", "dataset=quickstart", *TRAIN, "eval.enabled=false",
                    f"cache_dir={cache_dir}", f"hydra.run.dir={local_dir}")  # fmt: skip
    local.output_dir = str(local_dir)
    from launchers import local as local_launcher

    local_launcher.run(local, "train")
    assert remote == pytest.approx(losses(local_dir), rel=1e-5), (remote, losses(local_dir))  # float noise only
    assert files_containing(run_dir, API_KEY) == []
    assert API_KEY not in caplog.text + "".join(capsys.readouterr())


@pytest.mark.slow  # trains the tiny model at the fake
def test_429_and_5xx_are_survived_on_an_endpoint_named_by_hardware_base_url(fake, tmp_path, cache_dir, monkeypatch):
    """hardware.base_url: any Tinker-compatible endpoint (here the fake, with TINKER_BASE_URL unset)."""
    monkeypatch.delenv("TINKER_BASE_URL")
    for route in ("forward_backward", "optim_step", "retrieve_future", "save_weights"):
        fake.inject(route, 429, 500, 503)
    cfg = tinker_cfg(tmp_path, cache_dir, "eval.enabled=false", f"hardware.base_url={fake.url}")
    cloud.run(cfg, "train")
    assert fake.pending_injections() == {} and fake.sessions >= 1
    assert [s for _, s in fake.trained_steps] == [1, 2, 3, 4, 5, 6]  # no step trained twice
    assert (Path(cfg.output_dir) / "model" / "adapter_config.json").is_file()


@pytest.mark.slow  # kills a hydratune run and reruns it
def test_sigkill_then_rerun_resumes_from_the_last_saved_state(fake, tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    command = [*overrides("eval.enabled=false", "++train.max_steps=10"), f"cache_dir={cache_dir}",
               f"hydra.run.dir={run_dir}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = start(command, env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(fake.checkpoints) < 2:  # killed after the state of step 4
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = json.loads((run_dir / "cloud_state.json").read_text())["tinker"]
    before = list(fake.trained_steps)
    assert saved["step"] in (2, 4) and len(before) >= saved["step"]
    done = run_to_end(command, env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    after = [s for _, s in fake.trained_steps[len(before) :]]
    assert after == list(range(saved["step"] + 1, 11))  # resumed right after the saved state, nothing before it
    assert (run_dir / "model" / "adapter_config.json").is_file()
    assert files_containing(run_dir, API_KEY) == []


@pytest.mark.slow  # trains the tiny model with DPO at the fake and evaluates it
def test_dpo_through_tinker_from_the_fakes_logprobs(fake, tmp_path, cache_dir):
    """objective=dpo: hydratune computes DPO's loss from the logprobs Tinker returns (forward_backward_custom), the
    frozen reference being the base model's forward; the downloaded LoRA gets DPO's pair metrics here."""
    import math

    cfg = tinker_cfg(tmp_path, cache_dir, "objective=dpo", "dataset=quickstart_pairs", "++train.max_steps=3")
    cloud.run(cfg, "train")
    run_dir = Path(cfg.output_dir)
    curve = losses(run_dir)
    assert len(curve) == 3 and curve[0] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at step 1
    assert curve[-1] != pytest.approx(curve[0], abs=1e-6)  # the policy moved away from the reference
    assert [s for _, s in fake.trained_steps] == [1, 2, 3]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "pair_accuracy" in metrics["finetuned"] and metrics["objective"]["name"] == "dpo"


# ---------------------------------------------------------------- GRPO

#: GRPO on the fake: 2 prompts per step, 4 answers each, of at most 6 tokens; a reward that tells answers apart (the
#: tiny model's answers differ in length) and one that cannot.
LENGTH = {"max_chars": 4, "per_char": 0.05}
GRPO = ["objective=grpo", "objective.args.num_generations=4", "objective.args.max_completion_length=6",
        "train.per_device_train_batch_size=8", "train.learning_rate=1e-2", "++train.max_steps=2",
        "objective.reward_funcs=[{_target_: trainer.engine.rewards.LengthPenalty, max_chars: 4, per_char: 0.05}]"]  # fmt: skip
#: The fine-tuned column only (no base or control columns: each generates again), on one held-out prompt.
GRPO_EVAL = ["eval.max_examples=1", "eval.compare_base=false"]
CONSTANT = "objective.reward_funcs=[{_target_: trainer.engine.rewards.RegexFormat, pattern: '.*'}]"


def metric_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def in_datum_order(requests: list[dict], inputs: list[dict]) -> list[dict]:
    """A step's sample requests (sent at once, so served in any order) in the order of the datums sent after them."""
    starts = [d["target_tokens"].tolist() for d in inputs[::4]]
    return sorted(requests, key=lambda r: [s[: len(r["prompt"]) - 1] for s in starts].index(r["prompt"][1:]))


def group_advantages(rewards: list[float], size: int) -> list[float]:
    """TRL's GRPO advantages, written out: (reward - its group's mean) / (the group's sample std + 1e-4)."""
    import statistics

    out = []
    for i in range(0, len(rewards), size):
        group = rewards[i : i + size]
        mean, std = statistics.fmean(group), statistics.stdev(group)
        out += [(r - mean) / (std + 1e-4) for r in group]
    return out


@pytest.fixture(scope="module")
def grpo_config():
    return compose(*overrides(*GRPO))


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("objective.args.num_generations", 3, "must be a whole number of such groups"),
        ("objective.args.use_vllm", True, "objective.args.use_vllm is a TRL GRPOTrainer argument"),
        ("objective.args.beta", 0.04, "objective.args.beta must be 0 and num_iterations 1"),
        ("objective.args.loss_type", "cispo", "objective.args.loss_type=cispo is not offered"),
        ("objective.args.reward_weights", [1.0, 2.0], "has 2 weight(s) for 1 reward function(s)"),
    ],
)
def test_grpo_settings_tinker_cannot_honour_are_one_paragraph(grpo_config, key, value, expected):
    import copy

    from omegaconf import OmegaConf

    from launchers import check
    from trainer.config.errors import UserError

    check(grpo_config)  # the config without it passes
    cfg = copy.deepcopy(grpo_config)
    OmegaConf.update(cfg, key, value, force_add=True)
    with pytest.raises(UserError, match=re.escape(expected)):
        check(cfg)


def test_grpo_advantages_are_trls_and_a_constant_reward_gives_none():
    """TRL's group normalisation (sample std + 1e-4; batch and none), weighted sums, unscorable answers; a group
    whose answers all score the same has advantage 0, so its answers push nothing."""
    import statistics

    import torch

    from launchers.cloud.providers import _tinker_grpo as grpo

    settings = grpo.Settings(4, 8, 1.0, 1.0, 0, "group", "dapo", None)
    per_func = torch.tensor([[0.0], [1.0], [1.0], [2.0], [3.0], [3.0], [3.0], [3.0]])
    rewards, adv, zero = grpo.advantages(per_func, settings, [1.0])
    assert adv[:4].tolist() == pytest.approx(group_advantages([0.0, 1.0, 1.0, 2.0], 4), abs=1e-6)
    assert adv[4:].tolist() == [0.0] * 4 and zero.tolist() == [False] * 4 + [True] * 4
    weighted = grpo.advantages(torch.cat([per_func, per_func], 1), settings, [0.5, 0.5])[1]
    assert weighted.tolist() == pytest.approx(adv.tolist(), abs=1e-6)
    batch = grpo.advantages(per_func, grpo.Settings(4, 8, 1.0, 1.0, 0, "batch", "dapo", None), [1.0])[1]
    values = per_func[:, 0].tolist()
    means = [sum(values[:4]) / 4] * 4 + [sum(values[4:]) / 4] * 4
    std = statistics.stdev(values)  # scale_rewards=batch: the batch's std; the mean is still each group's
    assert batch.tolist() == pytest.approx(
        [(r - m) / (std + 1e-4) for r, m in zip(values, means, strict=True)], abs=1e-5
    )
    nan = torch.tensor([[float("nan")], [1.0], [0.0], [1.0]])
    assert grpo.advantages(nan, grpo.Settings(4, 8, 1.0, 1.0, 0, "none", "dapo", None), [1.0])[1][0] == 0.0
    assert grpo.token_scales([2, 6], settings) == [1 / 8, 1 / 8]  # dapo: the step's answer tokens
    assert grpo.token_scales([2, 6], grpo.Settings(4, 8, 1.0, 1.0, 0, "group", "grpo", None)) == [1 / 4, 1 / 12]
    assert grpo.token_scales([2, 6], grpo.Settings(4, 8, 1.0, 1.0, 0, "group", "dr_grpo", None)) == [1 / 16] * 2


@pytest.mark.slow  # samples and trains the tiny model at the fake, then evaluates the LoRA here
def test_grpo_advantages_and_gradient_are_grpos_on_the_sampled_answers(fake, tmp_path, cache_dir):
    """objective=grpo: answers sampled at the fake (the SDK's sampler), rewarded here by the objective's reward
    function, group-normalised advantages sent with Tinker's importance_sampling loss. Recomputed from what the fake
    sampled: the rewards, the advantages each answer token got, and the gradient of TRL's GRPO loss (dapo) on those
    answers at the first step's weights, which must equal the gradient the fake applied."""
    import torch

    from tests.fake_tinker import Trained
    from trainer.models import load_tokenizer

    cfg = tinker_cfg(tmp_path, cache_dir, *GRPO, "eval.enabled=false")
    cloud.run(cfg, "train")
    run_dir = Path(cfg.output_dir)
    assert [s for _, s in fake.trained_steps] == [1, 2]
    assert len(fake.samples) == 4 and {len(s["answers"]) for s in fake.samples} == {4}  # 2 steps x 2 prompts x 4
    tokenizer, _ = load_tokenizer(compose("model=tiny_random").model, base_dir(cache_dir))
    eos = tokenizer.eos_token_id
    rows = [r for r in metric_rows(run_dir) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for step, (row, inputs) in enumerate(zip(rows, fake.rl_inputs, strict=True)):
        requests = in_datum_order(fake.samples[2 * step : 2 * step + 2], inputs)
        answers = [(r["prompt"], a) for r in requests for a in r["answers"]]
        texts = [tokenizer.decode(tokens, skip_special_tokens=True) for _, (tokens, _, _) in answers]
        rewards = [-min(1.0, max(0, len(t) - LENGTH["max_chars"]) * LENGTH["per_char"]) for t in texts]
        assert row["reward"] == pytest.approx(sum(rewards) / len(rewards), abs=1e-6)
        assert row["rewards/length_penalty/mean"] == pytest.approx(row["reward"], abs=1e-6)
        advantages = group_advantages(rewards, 4)
        answer_tokens = sum(len(tokens) for _, (tokens, _, _) in answers)
        assert len(inputs) == 8
        for (prompt, (tokens, logprobs, stopped)), sent, advantage in zip(answers, inputs, advantages, strict=True):
            assert stopped == (tokens[-1] == eos)
            assert sent["target_tokens"].tolist() == (prompt + tokens)[1:]
            assert sent["logprobs"].tolist() == pytest.approx([0.0] * (len(prompt) - 1) + logprobs, abs=1e-6)
            expected = [0.0] * (len(prompt) - 1) + [advantage / answer_tokens] * len(tokens)
            assert sent["advantages"].tolist() == pytest.approx(expected, abs=1e-6)
    assert any(abs(a) > 0.1 for a in group_advantages(rewards, 4))  # the reward told the answers apart

    # TRL's GRPO loss (loss_type dapo, beta 0, one iteration) on step 1's answers, at step 1's weights (the seeded
    # fresh LoRA): -sum_i sum_t exp(logp - logp.detach()) * A_i / (answer tokens), differentiated here.
    policy = Trained(base_dir(cache_dir), 4, 32.0, int(cfg.seed))
    first = [(r["prompt"], a) for r in in_datum_order(fake.samples[:2], fake.rl_inputs[0]) for a in r["answers"]]
    texts = [tokenizer.decode(tokens, skip_special_tokens=True) for _, (tokens, _, _) in first]
    advantages = group_advantages([-min(1.0, max(0, len(t) - 4) * 0.05) for t in texts], 4)
    total_tokens = sum(len(tokens) for _, (tokens, _, _) in first)
    loss = torch.zeros(())
    for (prompt, (tokens, logprobs, _)), advantage in zip(first, advantages, strict=True):
        ids = torch.tensor(prompt + tokens)[None]
        logp = torch.log_softmax(policy.model(input_ids=ids[:, :-1]).logits[0].float(), -1)
        logp = logp[len(prompt) - 1 :].gather(-1, torch.tensor(tokens)[:, None])[:, 0]
        assert logp.tolist() == pytest.approx(logprobs, abs=1e-4)  # the sampler's logprobs are the policy's
        loss = loss - (torch.exp(logp - logp.detach()) * advantage).sum() / total_tokens
    loss.backward()
    gradient = torch.cat([p.grad.flatten() for p in policy.params])
    assert gradient.abs().max() > 0
    torch.testing.assert_close(fake.gradients[0], gradient, rtol=1e-4, atol=1e-7)
    assert rows[0]["loss"] == pytest.approx(float(loss), abs=1e-6)


@pytest.mark.slow  # samples and trains the tiny model at the fake
def test_grpo_a_constant_reward_gives_zero_advantage_and_no_update(fake, tmp_path, cache_dir):
    cfg = tinker_cfg(tmp_path, cache_dir, *GRPO, CONSTANT, "++train.max_steps=1", "eval.enabled=false")
    cloud.run(cfg, "train")
    (row,) = [r for r in metric_rows(Path(cfg.output_dir)) if "loss" in r]
    assert row["reward"] == 1.0 and row["reward_std"] == 0.0 and row["frac_reward_zero_std"] == 1.0
    assert row["loss"] == 0.0
    assert all(not d["advantages"].any() for d in fake.rl_inputs[0]) and len(fake.rl_inputs[0]) == 8
    assert not fake.gradients[0].any()  # nothing to learn from: the weights stay where they were


@pytest.mark.slow  # kills a hydratune GRPO run, reruns it here and evaluates the LoRA
def test_grpo_sigkill_then_rerun_resumes_from_the_last_saved_state(fake, tmp_path, cache_dir):
    """Killed once the state of step 1 is recorded; the rerun (in this process: the run dir is all it shares with the
    killed one) samples and trains from step 2 on, then evaluates the downloaded LoRA with the reward function."""
    run_dir = tmp_path / "run"
    args = overrides(*GRPO, "train.save_steps=1", *GRPO_EVAL)
    command = [*args, f"cache_dir={cache_dir}", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = start(command, env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, state_file = time.monotonic() + 240, run_dir / "cloud_state.json"
    while time.monotonic() < deadline and not (state_file.is_file() and "tinker" in json.loads(state_file.read_text())):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.05)  # killed once the state of step 1 is recorded
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = json.loads(state_file.read_text())["tinker"]
    before = list(fake.trained_steps)
    assert saved["step"] == 1 and saved["tokens"] > 0
    cfg = tinker_cfg(tmp_path, cache_dir, *GRPO, "train.save_steps=1", *GRPO_EVAL)
    cloud.run(cfg, "train")
    assert [s for _, s in fake.trained_steps[len(before) :]] == [2]  # nothing before the saved state again
    rows = [r for r in metric_rows(run_dir) if "loss" in r]
    assert sorted({r["step"] for r in rows}) == [1, 2] and all("reward" in r for r in rows)
    state = json.loads(state_file.read_text())
    assert state["tinker"]["step"] == 2 and state["job"]["trained_tokens"] > saved["tokens"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["objective"]["name"] == "grpo" and "reward" in metrics["finetuned"]
    assert (run_dir / "model" / "adapter_config.json").is_file()
    assert files_containing(run_dir, API_KEY) == []
