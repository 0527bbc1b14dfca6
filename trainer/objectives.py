"""Training objectives (conf/objective/): which TRL trainer trains, on which dataset shape, with which extras.

An objective option names TRL's trainer and config class (``objective.trainer``, ``objective.config``) and the
dataset shape it needs (``objective.data``). The engine stays one path and asks this module for the pieces:

- :func:`check`: compose-time checks (dataset shape, arguments against the config class, reward functions,
  teacher, provider support); no torch.
- :func:`prepare`: the training data in the shape the trainer reads (supervised: hydratune's own tokenized,
  cached data; otherwise TRL's conversational rows, tokenized by TRL).
- :func:`trainer_class`, :func:`training_args`, :func:`peft_config`, :func:`extras`: what the trainer is built
  from (GRPO's reward functions and the distillation teacher are the extras).
- :func:`held_out` and :func:`evaluate`: held-out queries, pairs and rewards for the report.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from trainer.errors import UserError, choice_error
from trainer.library_args import OBJECTIVE_CONFIGS, check_args
from trainer.plain import plain_dict

log = logging.getLogger(__name__)

HEADS = ("causal_lm", "sequence_classification")


@dataclass(frozen=True)
class Shape:
    formats: tuple[str, ...]  # dataset.format values that provide it
    needs: str  # what it is, for error messages


SHAPES = {
    "supervised": Shape(
        ("chat", "alpaca", "sharegpt", "prompt_completion", "text", "template"),
        "supervised examples (chat, alpaca, sharegpt, prompt_completion, text or template rows)",
    ),
    "preference": Shape(("preference",), "preference pairs (dataset.format=preference: prompt, chosen, rejected)"),
    "unpaired": Shape(
        ("unpaired", "preference"),
        "answers labelled good or bad (dataset.format=unpaired: prompt, completion, label), or preference pairs, "
        "which are unpaired",
    ),
    "prompts": Shape(
        ("prompt", "chat", "alpaca", "sharegpt", "template", "prompt_completion", "preference"),
        "prompts (dataset.format=prompt, or the prompts of chat, alpaca, sharegpt, template, prompt_completion or "
        "preference rows, whose answers become the `reference` column)",
    ),
}


# ---------------------------------------------------------------- compose-time checks (no torch)


@cache
def dataset_formats() -> dict[str, str]:
    """dataset= option -> its format, read from the shipped conf/dataset/*.yaml."""
    out = {}
    for file in sorted((resources.files("conf") / "dataset").iterdir(), key=lambda f: f.name):
        if file.name.endswith(".yaml"):
            out[file.name.removesuffix(".yaml")] = str((yaml.safe_load(file.read_text()) or {}).get("format", "chat"))
    return out


def providing(shape: Shape) -> list[str]:
    return [f"dataset={name}" for name, fmt in dataset_formats().items() if fmt in shape.formats]


def check(cfg: DictConfig) -> None:
    """Raise UserError for an objective that cannot train on this config; every message names the objective."""
    obj = cfg.objective
    if obj.data not in SHAPES:
        raise choice_error("objective.data", obj.data, SHAPES)
    if obj.head not in HEADS:
        raise choice_error("objective.head", obj.head, HEADS)
    if obj.config not in OBJECTIVE_CONFIGS:
        raise choice_error("objective.config", obj.config, OBJECTIVE_CONFIGS)
    shape = SHAPES[obj.data]
    sources = [cfg.dataset, *cfg.dataset.mix]
    for fmt in (s.format for s in sources):
        if fmt not in shape.formats:
            raise UserError(
                f"objective={obj.name} trains on {shape.needs}, but dataset={cfg.dataset.name} has "
                f"dataset.format={fmt}. Datasets that provide it: {', '.join(providing(shape)) or 'none shipped'} "
                f"(or your own file with dataset.format={shape.formats[0]}); or pick an objective for this data"
                f"{' (objective=sft)' if fmt in SHAPES['supervised'].formats else ''}."
            )
    check_args("train", plain_dict(cfg.train), obj.config)
    check_args("objective.args", plain_dict(obj.args), obj.config)
    if "reward_funcs" in obj:
        _check_rewards(obj)
    if "teacher" in obj and OmegaConf.is_missing(obj.teacher, "name_or_path"):
        raise UserError(
            f"objective={obj.name} needs a teacher model: set objective.teacher.name_or_path (and "
            "objective.teacher.source: hf for a hub id or folder, gguf_wheel, tiny_random). The teacher must share "
            "the model's tokenizer."
        )


def check_provider(cfg: DictConfig) -> None:
    """Cloud hardware (a known provider): the provider must offer the objective."""
    obj = cfg.objective
    if cfg.hardware.provider not in obj.providers:
        offered = [name for name, o in _provider_objectives().items() if cfg.hardware.provider in o] or ["none"]
        raise UserError(
            f"objective={obj.name} is not offered by the provider {cfg.hardware.provider} (hardware="
            f"{cfg.hardware.name}): it trains objective={', '.join(offered)}. Train objective={obj.name} locally "
            "(hardware=auto, cpu, ddp ...) or pick an objective the provider offers."
        )


def _check_rewards(obj: DictConfig) -> None:
    if not obj.reward_funcs:
        raise UserError(
            f"objective={obj.name} needs reward functions and objective.reward_funcs is empty. Give one or more "
            "`_target_` callables, e.g. 'objective.reward_funcs=[{_target_: trainer.rewards.TokenF1}, "
            "{_target_: trainer.rewards.JsonValid}]'. Shipped: trainer.rewards.ExactMatch, TokenF1 (against the "
            "data's reference answer), JsonValid, RegexFormat (pattern=...) and LengthPenalty (max_chars=...)."
        )
    for i, func in enumerate(obj.reward_funcs):
        if not isinstance(func, DictConfig) or "_target_" not in func:
            raise UserError(
                f"objective.reward_funcs[{i}]={func!r} is not a `_target_` callable: write "
                "{_target_: trainer.rewards.TokenF1} (or your own module.Class / module.function)."
            )


@cache
def _provider_objectives() -> dict[str, frozenset[str]]:
    out = {}
    for file in (resources.files("conf") / "objective").iterdir():
        if file.name.endswith(".yaml"):
            node = yaml.safe_load(file.read_text()) or {}
            out[file.name.removesuffix(".yaml")] = frozenset(node.get("providers") or {})
    return dict(sorted(out.items()))


def provider_method(cfg: DictConfig) -> str:
    """The provider's name for the configured objective (openai: supervised or dpo)."""
    return cfg.objective.providers[cfg.hardware.provider]


# ---------------------------------------------------------------- building the trainer


def _import(dotted: str):
    module, _, name = dotted.rpartition(".")
    if module.startswith("trl.experimental"):
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # we say it ourselves, once, below
    return getattr(importlib.import_module(module), name)


def trainer_class(obj: DictConfig) -> type:
    if obj.data == "supervised":  # SFTTrainer's fused LM head: on the CPU too, score the labelled positions only
        from trainer import lm_head

        lm_head.score_labelled_positions_only()
    if obj.experimental:
        log.warning(
            "objective=%s uses %s from trl.experimental: its API may change between TRL releases", obj.name, obj.trainer
        )
    if obj.data == "prompts":  # GRPO, distillation: TRL's RepeatSampler, whose order a resumed run must replay
        from trainer.epoch_order import resumable

        return resumable(_import(obj.trainer))
    return _import(obj.trainer)


def training_args(cfg: DictConfig, run_dir: Path, device: str, report_to: list[str]):
    """The objective's TRL config (objective.config) from ``train`` and ``objective.args``, plus what the run
    decides: output dir, seed, device, loggers."""
    from trainer import models, secrets

    args = plain_dict(cfg.train) | plain_dict(cfg.objective.args)
    args.update(
        output_dir=str(run_dir / "checkpoints"),
        seed=cfg.seed,
        use_cpu=device == "cpu",
        report_to=report_to + list(args.get("report_to") or []),
        logging_steps=cfg.logger.logging_steps,
        run_name=cfg.run_name,
    )
    if cfg.objective.data == "supervised":
        args["dataset_kwargs"] = {"skip_prepare_dataset": True}  # trainer.data already tokenized, truncated, packed
    secrets.token_to_env(args)  # hub_token: into HF_TOKEN, never into training_args.bin
    if args.get("bf16") is None:
        args["bf16"] = device == "cuda" and models.resolve_dtype("auto", device)[0] == "bfloat16"
    if device != "cuda" and args.get("tf32"):
        raise UserError(
            "train.tf32=true enables TensorFloat-32 matrix products, which only NVIDIA Ampere (or newer) GPUs have, "
            f"and this run is on the {device}. Set train.tf32=null (or run with hardware=single_gpu on such a GPU)."
        )
    return _import(cfg.objective.config)(**args)


def peft_config(cfg: DictConfig, added_tokens: int):
    """``method.peft``; a reward model's adapter is a sequence-classification one (its score head trains too)."""
    from trainer import models

    config = models.peft_config(cfg.method, added_tokens)
    if config is not None and cfg.objective.head == "sequence_classification":
        config.task_type = "SEQ_CLS"
    return config


def extras(cfg: DictConfig, tokenizer, device: str) -> dict:
    """The trainer's objective-specific arguments: GRPO's reward functions, the distillation teacher."""
    obj, out = cfg.objective, {}
    if "reward_funcs" in obj:
        out["reward_funcs"] = reward_funcs(cfg)
    if "teacher" in obj:
        from trainer import models

        path = models.resolve_path(obj.teacher, cfg.cache_dir)
        dtype, _ = models.resolve_dtype(obj.teacher.dtype, device, full_weights=True)
        no_quantization = OmegaConf.create({"quantization": None})
        teacher = models.load_model(obj.teacher, no_quantization, path, tokenizer, device, dtype)
        log.info("teacher %s (%s, %.1fM parameters)", obj.teacher.name_or_path, path, teacher.num_parameters() / 1e6)
        out["teacher_model"] = teacher.eval()
    return out


# ---------------------------------------------------------------- data in the objective's shape


def _messages(value) -> list[dict] | str:
    if isinstance(value, str):
        return value
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _text(value) -> str:
    return value if isinstance(value, str) else value[-1]["content"]


def _prompt_row(row: dict) -> dict | None:
    """A canonical row -> {prompt, reference}: the prompt before the last answer, the answer as the reference."""
    if "messages" in row:
        messages = row["messages"]
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None or last == 0:
            return None
        return {"prompt": _messages(messages[:last]), "reference": messages[last]["content"]}
    if "chosen" in row:
        return {"prompt": _messages(row["prompt"]), "reference": _text(row["chosen"])}
    if "completion" in row:  # prompt_completion, or unpaired (only a desirable answer is a reference)
        if row.get("label") is False:
            return None
        return {"prompt": _messages(row["prompt"]), "reference": _text(row["completion"])}
    return {"prompt": _messages(row["prompt"]), "reference": row.get("reference")}


def _unpaired_rows(row: dict) -> list[dict]:
    if "chosen" in row:
        prompt = _messages(row["prompt"])
        return [
            {"prompt": prompt, "completion": _messages(row["chosen"]), "label": True},
            {"prompt": prompt, "completion": _messages(row["rejected"]), "label": False},
        ]
    return [{"prompt": _messages(row["prompt"]), "completion": _messages(row["completion"]), "label": row["label"]}]


def _preference_rows(row: dict) -> list[dict]:
    return [{k: _messages(row[k]) for k in ("prompt", "chosen", "rejected")}]


CONVERT = {
    "preference": _preference_rows,
    "unpaired": _unpaired_rows,
    "prompts": lambda row: [r] if (r := _prompt_row(row)) is not None else [],
}


def prepare(cfg: DictConfig, tokenizer, run_dir: Path | None):
    """The training and validation data in the objective's shape (data.Prepared)."""
    from trainer import data

    if cfg.objective.data == "supervised":
        return data.prepare(cfg, tokenizer, run_dir)
    import datasets

    examples = data.load_examples(cfg.dataset, run_dir)
    convert = CONVERT[cfg.objective.data]
    train = [r for row in examples.train for r in convert(row)]
    validation = [r for row in examples.validation for r in convert(row)]
    if cfg.objective.data == "prompts":
        train = _reference_column(train)
        validation = []  # GRPO and distillation evaluate by generating (objectives.evaluate), not with TRL's loss
    key_source = {"dataset": OmegaConf.to_container(cfg.dataset, resolve=True), "rows": [train, validation]}
    key = hashlib.sha256(json.dumps(key_source, sort_keys=True, default=str).encode()).hexdigest()[:16]
    stats = {
        "name": cfg.dataset.name,
        "objective_data": cfg.objective.data,
        "train": {"examples": len(train)},
        "validation": {"examples": len(validation)},
        "skipped": len(examples.skipped),
        "warnings": examples.warnings,
    }
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "data_stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return data.Prepared(
        datasets.Dataset.from_list(train), datasets.Dataset.from_list(validation), examples, stats, key, False
    )


def _reference_column(rows: list[dict]) -> list[dict]:
    """Keep ``reference`` only when every row has one (Arrow wants one type per column)."""
    if all(isinstance(r["reference"], str) for r in rows):
        return rows
    return [{"prompt": r["prompt"]} for r in rows]


# ---------------------------------------------------------------- held-out evaluation for the report


@dataclass
class HeldOut:
    queries: list  # evaluation.Query: generated for, scored with eval.metrics (and rewards)
    pairs: list[dict] = field(default_factory=list)  # {prompt, chosen, rejected}: scored without generating
    rows: list[dict] = field(default_factory=list)  # prompt rows for the reward functions (same order as queries)


def held_out(cfg: DictConfig, examples, limit: int | None) -> HeldOut:
    """What the report measures on the validation split for this objective."""
    from trainer import evaluation

    if cfg.objective.data == "supervised":
        return HeldOut(evaluation.queries(examples.validation, limit))
    rows = examples.validation[:limit] if limit is not None else examples.validation
    pairs = [_preference_rows(r)[0] for r in rows if "chosen" in r]
    if cfg.objective.head != "causal_lm":  # a reward model scores, it does not generate
        return HeldOut([], pairs)
    prompt_rows = [r for row in rows if (r := _prompt_row(row)) is not None]
    queries = [evaluation.Query(r["prompt"], r["reference"] or "") for r in prompt_rows]
    return HeldOut(queries, pairs, prompt_rows if "reward_funcs" in cfg.objective else [])


def evaluate(trainer, tokenizer, cfg: DictConfig, held: HeldOut, label: str, reference: dict | None = None) -> dict:
    """evaluation.evaluate (loss and generation metrics), plus the objective's own numbers: pair accuracy and
    margins on held-out pairs (and, against the base model's margins in ``reference``, DPO's reward accuracy),
    and the mean reward of the generated answers for objectives with reward functions."""
    from trainer import evaluation, pair_eval

    scorers = {}
    if held.rows:
        rewards = reward_funcs(cfg)
        scorers["reward"] = lambda predictions: pair_eval.mean_reward(rewards, held.rows, predictions)
    result = evaluation.evaluate(trainer, tokenizer, cfg, held.queries, label, scorers=scorers)
    if cfg.objective.data != "supervised":
        result.pop("perplexity", None)  # exp() of a preference or reward loss is no perplexity
    if held.pairs:
        batch = cfg.eval.batch_size
        result.update(
            pair_eval.pair_metrics(trainer.model, tokenizer, held.pairs, batch, cfg.objective.head, reference)
        )
    return result


def reward_funcs(cfg: DictConfig) -> list:
    from hydra.utils import instantiate

    return [instantiate(f, _convert_="all") for f in cfg.objective.reward_funcs]
