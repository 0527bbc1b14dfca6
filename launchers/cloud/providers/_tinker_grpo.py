"""GRPO at Tinker (``objective=grpo hardware=tinker``): one step of hydratune's loop, with the sampling and the
gradient at Tinker and the rewards here.

Each step publishes the current weights to a sampler (``save_weights_and_get_sampling_client``: the SDK's
``save_weights_for_sampler`` without a name, so no checkpoint is kept per step), samples
``objective.args.num_generations`` answers to each of the step's prompts (``sample``, seeded per step and prompt, so a
resumed run samples what the interrupted one would have), scores them with the objective's reward functions
(trainer.engine.rewards, called the way TRL's GRPOTrainer calls them, ``objective.args.reward_weights`` included) and
turns each group's rewards into advantages as TRL does (``scale_rewards``: group, batch or none). The update is one
``forward_backward`` with Tinker's built-in ``importance_sampling`` loss, ``-sum(exp(logp - logp_sampler) * A)``: the
advantage of each answer token is the answer's advantage divided by TRL's normaliser for ``loss_type`` (dapo, bnpo:
the step's answer tokens; grpo: the answer's length times the answers; dr_grpo: the answers times
max_completion_length), prompt tokens get 0. With the sampler's weights equal to the learner's the ratio is 1 and the
gradient is TRL's GRPO gradient (beta=0, num_iterations=1). At temperature != 1 the sampler draws from the tempered
distribution while the learner's logprobs are the model's own (Tinker's objective; TRL tempers both).

The step's metrics carry TRL's names: reward, reward_std, rewards/<function>/mean and /std, frac_reward_zero_std,
completions/mean_length, min_length, max_length, clipped_ratio.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from trainer.config.errors import UserError

#: objective.args this loop reads (TRL's names); any other GRPOConfig argument is refused rather than ignored.
ARGS = ("num_generations", "max_completion_length", "temperature", "top_p", "top_k", "scale_rewards",
        "reward_weights", "loss_type", "beta", "num_iterations")  # fmt: skip
LOSS_TYPES = ("dapo", "bnpo", "grpo", "dr_grpo")
SCALES = {"group": "group", "batch": "batch", "none": "none", True: "group", False: "none"}


@dataclass(frozen=True)
class Settings:
    """GRPO's settings from objective.args, with TRL's defaults."""

    generations: int
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    scale: str
    loss_type: str
    reward_weights: list[float] | None

    @classmethod
    def from_cfg(cls, cfg: Any) -> Settings:
        args = OmegaConf.to_container(cfg.objective.args, resolve=True) or {}
        assert isinstance(args, dict)
        weights = args.get("reward_weights")
        return cls(
            generations=int(args.get("num_generations", 8)),
            max_tokens=int(args.get("max_completion_length", 512)),
            temperature=float(args.get("temperature", 1.0)),
            top_p=float(args.get("top_p", 1.0)),
            top_k=int(args.get("top_k") or 0),
            scale=SCALES[args.get("scale_rewards", "group")],
            loss_type=str(args.get("loss_type", "dapo")),
            reward_weights=None if weights is None else [float(w) for w in weights],
        )


def check(cfg: Any) -> None:
    """The objective.args hardware=tinker's GRPO cannot honour, as one paragraph each."""
    args = OmegaConf.to_container(cfg.objective.args, resolve=True) or {}
    assert isinstance(args, dict)
    unknown = sorted(set(args) - set(ARGS))
    if unknown:
        raise UserError(
            f"objective.args.{unknown[0]} is a TRL GRPOTrainer argument that hardware=tinker's GRPO loop does not "
            f"implement (it reads {', '.join(ARGS)}). Remove it, or train objective=grpo locally."
        )
    if float(args.get("beta", 0.0)) != 0.0 or int(args.get("num_iterations", 1)) != 1:
        raise UserError(
            "hardware=tinker's GRPO takes one policy-gradient step per batch of answers without a KL term: "
            "objective.args.beta must be 0 and num_iterations 1 (TRL's defaults). Train locally for either."
        )
    if str(args.get("loss_type", "dapo")) not in LOSS_TYPES:
        raise UserError(
            f"objective.args.loss_type={args['loss_type']} is not offered by hardware=tinker's GRPO: use one of "
            f"{', '.join(LOSS_TYPES)} (TRL's token normalisations; dapo is TRL's default)."
        )
    if args.get("scale_rewards", "group") not in SCALES:
        raise UserError(
            f"objective.args.scale_rewards={args['scale_rewards']} is not one of group, batch, none (TRL's choices)."
        )
    settings = Settings.from_cfg(cfg)
    per_step = int(cfg.train.per_device_train_batch_size) * int(
        OmegaConf.select(cfg, "train.gradient_accumulation_steps", default=1)
    )
    if settings.generations < 2 or per_step % settings.generations:
        raise UserError(
            f"objective=grpo samples objective.args.num_generations={settings.generations} answers per prompt, and "
            f"each step's answers (train.per_device_train_batch_size x gradient_accumulation_steps = {per_step}) "
            "must be a whole number of such groups, of at least 2 answers each: make the batch a multiple of "
            "num_generations."
        )
    if settings.reward_weights is not None and len(settings.reward_weights) != len(cfg.objective.reward_funcs):
        raise UserError(
            f"objective.args.reward_weights has {len(settings.reward_weights)} weight(s) for "
            f"{len(cfg.objective.reward_funcs)} reward function(s) (objective.reward_funcs): give one per function."
        )


@dataclass
class Prompt:
    """One training prompt: its tokens (the chat template with the generation prompt, as TRL renders it) and its
    row (prompt, and the reference answer when the data has one: the reward functions' columns)."""

    ids: list[int]
    row: dict[str, Any]


def prompts(cfg: Any, tokenizer: Any) -> list[Prompt]:
    """The training prompts of a local-model config (model.* the base model), in the data's order."""
    from trainer.engine import objectives

    rows = [dict(r) for r in objectives.prepare(cfg, tokenizer, None).train]
    if not rows:
        raise UserError(f"dataset={cfg.dataset.name} has no training prompts for objective=grpo.")
    if isinstance(rows[0]["prompt"], str):
        ids = tokenizer([r["prompt"] for r in rows])["input_ids"]
    else:
        rendered = tokenizer.apply_chat_template(
            [r["prompt"] for r in rows], add_generation_prompt=True, tokenize=True, return_dict=True
        )
        ids = rendered["input_ids"]
    return [Prompt(list(i), r) for i, r in zip(ids, rows, strict=True)]


@dataclass
class Answer:
    """One sampled answer: its tokens up to and including the first end-of-sequence token, and their logprobs."""

    tokens: list[int]
    logprobs: list[float]
    truncated: bool  # no end-of-sequence token within max_completion_length


class GRPO:
    """GRPO's step at Tinker for one run: its settings, reward functions and tokenizer."""

    def __init__(self, cfg: Any, tokenizer: Any) -> None:
        from trainer.engine import objectives

        self.settings = Settings.from_cfg(cfg)
        self.funcs = objectives.reward_funcs(cfg)
        self.names = [getattr(f, "__name__", type(f).__name__) for f in self.funcs]
        self.tokenizer = tokenizer
        self.eos = [int(tokenizer.eos_token_id)]
        self.seed = int(cfg.seed)

    def step(self, tinker: Any, training: Any, batch: list[Prompt], step: int) -> tuple[float, dict[str, float], int]:
        """Sample, score, update: (the loss, the step's metrics, the tokens trained)."""
        sampler = training.save_weights_and_get_sampling_client().result()
        groups = self.sample(tinker, sampler, batch, step)
        answers = [a for group in groups for a in group]
        texts = [self.tokenizer.decode(a.tokens, skip_special_tokens=True) for a in answers]
        per_func = self.score(batch, answers, texts)
        rewards, adv, zero_std = advantages(per_func, self.settings, self.weights())
        data = datums(tinker, batch, groups, adv.tolist(), self.settings)
        out = training.forward_backward(data, "importance_sampling").result()
        loss = float(out.metrics["loss:sum"])
        trained = sum(len(p.ids) + len(a.tokens) - 1 for p, g in zip(batch, groups, strict=True) for a in g)
        return loss, step_metrics(self.names, per_func, rewards, zero_std, answers), trained

    def weights(self) -> list[float]:
        return self.settings.reward_weights or [1.0] * len(self.funcs)

    def sample(self, tinker: Any, sampler: Any, batch: list[Prompt], step: int) -> list[list[Answer]]:
        """num_generations answers to each prompt, all requests in flight at once; seeded by (seed, step, prompt)."""
        s = self.settings
        futures = []
        for i, prompt in enumerate(batch):
            params = tinker.SamplingParams(
                max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or -1,
                seed=random.Random(f"{self.seed}:{step}:{i}").getrandbits(31), stop=self.eos,
            )  # fmt: skip
            futures.append(sampler.sample(tinker.ModelInput.from_ints(prompt.ids), s.generations, params))
        groups = []
        for future in futures:
            sequences = future.result().sequences
            if len(sequences) != s.generations:
                raise UserError(f"Tinker's sampler returned {len(sequences)} answers for {s.generations} asked.")
            groups.append([self.answer(list(q.tokens), list(q.logprobs or [])) for q in sequences])
        return groups

    def answer(self, tokens: list[int], logprobs: list[float]) -> Answer:
        if len(logprobs) != len(tokens):
            raise UserError("Tinker's sampler returned answers without their logprobs, which GRPO's update needs.")
        ends = [i for i, t in enumerate(tokens) if t in self.eos]
        if ends:
            return Answer(tokens[: ends[0] + 1], logprobs[: ends[0] + 1], False)
        return Answer(tokens, logprobs, True)

    def score(self, batch: list[Prompt], answers: list[Answer], texts: list[str]) -> Any:
        """Each answer's reward from each function, shape (answers, functions); None (unscorable) -> NaN."""
        import torch

        g = self.settings.generations
        rows = [p.row for p in batch for _ in range(g)]
        chat = not isinstance(rows[0]["prompt"], str)
        completions = [[{"role": "assistant", "content": t}] if chat else t for t in texts]
        columns = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"}
        columns["completion_ids"] = [a.tokens for a in answers]
        out = torch.full((len(answers), len(self.funcs)), float("nan"))
        for j, func in enumerate(self.funcs):
            values = func(prompts=[r["prompt"] for r in rows], completions=completions, **columns)
            out[:, j] = torch.tensor([float("nan") if v is None else float(v) for v in values])
        return out


def advantages(per_func: Any, settings: Settings, weights: list[float]) -> tuple[Any, Any, Any]:
    """(rewards, advantages, zero-std flags) per answer, as TRL's GRPOTrainer computes them (sum_then_normalize):
    the weighted sum of the functions' rewards, minus its group's mean, over the group's (or batch's) standard
    deviation + 1e-4 unless scale_rewards=none; unscorable answers get advantage 0."""
    import torch

    g = settings.generations
    unscorable = torch.isnan(per_func).all(dim=1)
    rewards = (per_func * torch.tensor(weights).unsqueeze(0)).nansum(dim=1)
    rewards[unscorable] = float("nan")
    mean = torch.nanmean(rewards.view(-1, g), dim=1).repeat_interleave(g)
    if settings.scale == "batch":
        std = nanstd(rewards).expand_as(rewards)
    else:
        std = nanstd(rewards.view(-1, g), dim=1).repeat_interleave(g)
    adv = rewards - mean
    if settings.scale != "none":
        adv = adv / (std + 1e-4)
    return rewards, torch.nan_to_num(adv, nan=0.0), torch.isclose(std, torch.zeros_like(std))


def nanstd(values: Any, dim: int | None = None) -> Any:
    """The sample standard deviation ignoring NaNs (trl.trainer.utils.nanstd's definition, without importing TRL,
    which costs seconds)."""
    import torch

    mean = torch.nanmean(values, dim=dim, keepdim=True)
    variance = torch.nanmean((values - mean) ** 2, dim=dim)
    count = (~torch.isnan(values)).sum(dim=dim)
    return torch.sqrt(variance * count / (count - 1))


def token_scales(lengths: list[int], settings: Settings) -> list[float]:
    """What each answer's advantage is divided by on its tokens, so that the summed loss is TRL's loss_type."""
    n = len(lengths)
    if settings.loss_type == "grpo":
        return [1.0 / (length * n) for length in lengths]
    if settings.loss_type == "dr_grpo":
        return [1.0 / (n * settings.max_tokens)] * n
    return [1.0 / max(sum(lengths), 1)] * n  # dapo, bnpo: the step's answer tokens


def datums(tinker: Any, batch: list[Prompt], groups: list[list[Answer]], adv: list[float], settings: Settings) -> list:
    """One Datum per answer for ``importance_sampling``: prompt + answer, targets shifted by one; the sampler's
    logprobs and the scaled advantage on the answer's tokens, 0 on the prompt's."""
    import numpy as np

    pairs = [(p, a) for p, group in zip(batch, groups, strict=True) for a in group]
    scales = token_scales([len(a.tokens) for _, a in pairs], settings)
    out = []
    for (prompt, answer), a, scale in zip(pairs, adv, scales, strict=True):
        ids = prompt.ids + answer.tokens
        pad = [0.0] * (len(prompt.ids) - 1)
        out.append(
            tinker.Datum(
                model_input=tinker.ModelInput.from_ints(ids[:-1]),
                loss_fn_inputs={
                    "target_tokens": np.asarray(ids[1:], dtype=np.int64),
                    "logprobs": np.asarray(pad + answer.logprobs, dtype=np.float32),
                    "advantages": np.asarray(pad + [a * scale] * len(answer.tokens), dtype=np.float32),
                },
            )
        )
    return out


def step_metrics(names: list[str], per_func: Any, rewards: Any, zero_std: Any, answers: list[Answer]) -> dict:
    """The step's GRPO metrics under TRL's names."""
    import torch

    out: dict[str, float] = {}
    for j, name in enumerate(names):
        out[f"rewards/{name}/mean"] = torch.nanmean(per_func[:, j]).item()
        out[f"rewards/{name}/std"] = nanstd(per_func[:, j]).item()
    lengths = torch.tensor([float(len(a.tokens)) for a in answers])
    out.update({
        "reward": torch.nanmean(rewards).item(),
        "reward_std": nanstd(rewards).item(),
        "frac_reward_zero_std": zero_std.float().mean().item(),
        "completions/mean_length": lengths.mean().item(),
        "completions/min_length": lengths.min().item(),
        "completions/max_length": lengths.max().item(),
        "completions/clipped_ratio": sum(a.truncated for a in answers) / len(answers),
    })  # fmt: skip
    return out
