"""Training objectives (conf/objective/): which TRL trainer trains, on which dataset shape, with which extras.

An objective option names TRL's trainer and config class (``objective.trainer``, ``objective.config``) and the
dataset shape it needs (``objective.data``, one class each in trainer.engine.shapes). The engine stays one path and
asks this module for the pieces:

- :func:`prepare`: the training data in the shape the trainer reads (supervised: hydratune's own tokenized,
  cached data; otherwise TRL's conversational rows, tokenized by TRL).
- :func:`trainer_class`, :func:`training_args`, :func:`peft_config`, :func:`extras`: what the trainer is built
  from (GRPO's reward functions and the distillation teacher are the extras).
- :func:`held_out` and :func:`evaluate`: held-out queries, pairs and rewards for the report.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from trainer.config.errors import UserError
from trainer.config.plain import plain_dict
from trainer.engine import shapes
from trainer.engine.shapes import HeldOut

log = logging.getLogger(__name__)


def provider_method(cfg: DictConfig) -> str:
    """The provider's name for the configured objective (openai: supervised or dpo; hardware.objectives)."""
    return cfg.hardware.objectives[cfg.objective.name]


# ---------------------------------------------------------------- building the trainer


def _import(dotted: str):
    module, _, name = dotted.rpartition(".")
    if module.startswith("trl.experimental"):
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # we say it ourselves, once, below
    return getattr(importlib.import_module(module), name)


def trainer_class(obj: DictConfig) -> type:
    """The objective's TRL trainer class, writing its checkpoints and saved model through temporary folders that are
    renamed when complete (trainer.checkpoints.staged)."""
    from trainer.engine.checkpoints import staged

    return staged(_trainer_class(obj))


def _trainer_class(obj: DictConfig) -> type:
    if obj.experimental:
        log.warning(
            "objective=%s uses %s from trl.experimental: its API may change between TRL releases", obj.name, obj.trainer
        )
    return shapes.SHAPES[obj.data].trainer_class(_import(obj.trainer))


def training_args(cfg: DictConfig, run_dir: Path, device: str, report_to: list[str]):
    """The objective's TRL config (objective.config) from ``train`` and ``objective.args``, plus what the run
    decides: output dir, seed, device, loggers."""
    from trainer import models
    from trainer.config import secrets

    args = plain_dict(cfg.train) | plain_dict(cfg.objective.args)
    args.update(
        output_dir=str(run_dir / "checkpoints"),
        seed=cfg.seed,
        use_cpu=device == "cpu",
        report_to=report_to + list(args.get("report_to") or []),
        logging_steps=cfg.logger.logging_steps,
        run_name=cfg.run_name,
    )
    args.update(shapes.SHAPES[cfg.objective.data].training_args())
    secrets.token_to_env(args)  # hub_token: into HF_TOKEN, never into training_args.bin
    if args.get("bf16") is None:
        args["bf16"] = device == "cuda" and models.resolve_dtype("auto", device)[0] == "bfloat16"
    if device == "cpu":
        cpu_process_group(args.get("ddp_timeout"), args.get("ddp_backend"))
    if device != "cuda" and args.get("tf32"):
        raise UserError(
            "train.tf32=true enables TensorFloat-32 matrix products, which only NVIDIA Ampere (or newer) GPUs have, "
            f"and this run is on the {device}. Set train.tf32=null (or run with hardware=single_gpu on such a GPU)."
        )
    return _import(cfg.objective.config)(**args)


def cpu_process_group(timeout_s: int | None, backend: str | None) -> None:
    """Start a multi-process CPU run's process group (gloo) with ``train.ddp_timeout`` (hardware.timeout_s), where
    the TrainingArguments would start it. They pass the timeout on a GPU only; on the CPU the group would wait
    torch's default 30 minutes for a rank, whatever the config says. One process, or a group already started: a no-op."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return
    from datetime import timedelta

    import torch.distributed as dist

    if not dist.is_initialized():
        seconds = 1800 if timeout_s is None else int(timeout_s)
        dist.init_process_group(backend=backend or "gloo", timeout=timedelta(seconds=seconds))
        log.info("process group: %s, %d ranks, timeout %d s", backend or "gloo", dist.get_world_size(), seconds)


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


# ---------------------------------------------------------------- data and held-out evaluation, by data shape


def prepare(cfg: DictConfig, tokenizer, run_dir: Path | None):
    """The training and validation data in the objective's shape (data.Prepared)."""
    return shapes.of(cfg).prepare(tokenizer, run_dir)


def held_out(cfg: DictConfig, examples, limit: int | None) -> HeldOut:
    """What the report measures on the validation split for this objective."""
    return shapes.of(cfg).held_out(examples, limit)


def evaluate(trainer, tokenizer, cfg: DictConfig, held: HeldOut, label: str, reference: dict | None = None) -> dict:
    """evaluation.evaluate (loss and generation metrics), plus the objective's own numbers: pair accuracies and
    margins on held-out pairs (and, against the base model's margins in ``reference``, DPO's reward accuracy),
    and each prompt's reward of the generated answer for objectives with reward functions. The numbers are logged
    to the trackers as ``eval_<label>_<metric>`` (TensorBoard and MLflow: ``eval/<label>_<metric>``)."""
    from trainer.evaluation import local as evaluation
    from trainer.run import loggers

    result = evaluation.evaluate(trainer, tokenizer, cfg, held.queries, label, scorers=_scorers(cfg, held))
    if not shapes.of(cfg).perplexity:
        result.pop("perplexity", None)  # exp() of a preference or reward loss is no perplexity
    with evaluation.own_random_state(cfg.seed):  # never training's random streams
        result.update(_pair_section(trainer.model, tokenizer, cfg, held, reference))
    loggers.log_eval(trainer, label, result)
    return result


def _scorers(cfg: DictConfig, held: HeldOut) -> dict:
    from trainer.evaluation import pairs as pair_eval

    if not held.rows:
        return {}
    funcs = reward_funcs(cfg)
    return {"reward": lambda predictions: pair_eval.rewards(funcs, held.rows, predictions)}


def _pair_section(model, tokenizer, cfg: DictConfig, held: HeldOut, reference: dict | None = None) -> dict:
    from trainer.evaluation import pairs as pair_eval

    if not held.pairs:
        return {}
    return pair_eval.pair_metrics(model, tokenizer, held.pairs, cfg.eval.batch_size, cfg.objective.head, reference)


#: Seed of the control's random weights (a model other than tiny_random's own seed 0).
CONTROL_SEED = 1729


def control_sections(cfg: DictConfig, trainer, tokenizer, held: HeldOut, model_path: str, dataset_key: str, main=True):
    """The validity probe of a preference, reward or prompt objective's headline: the same held-out evaluation (pairs,
    generated answers, rewards) of a 2-layer model with random weights and the run's tokenizer, which knows nothing
    of the task. A metric it scores well (a pair accuracy off chance, a reward at the fine-tuned model's) measures
    something else on this data (length, format), and the report says so. ``{"control": section}``, cached like the
    base evaluation; ``{}`` for supervised fine-tuning (its metrics compare with reference answers)."""
    from trainer.evaluation import local as evaluation

    if not shapes.of(cfg).control or not (held.pairs or held.queries):
        return {}
    file = evaluation.base_cache_file(cfg, model_path, held.queries, dataset_key, "control")

    def compute() -> dict:
        import torch

        from trainer import models

        with torch.random.fork_rng(devices=[]):  # the control's random weights leave the run's RNG as it was
            model = models.tiny_model(tokenizer, CONTROL_SEED, cfg.objective.head).to(trainer.model.device)
        result = evaluation.answer_metrics(model, tokenizer, cfg, held.queries, "control", _scorers(cfg, held))
        result.update(_pair_section(model, tokenizer, cfg, held))
        result["model"] = f"random weights (seed {CONTROL_SEED}), the run's tokenizer"
        return result

    return {"control": evaluation.cached(file, compute, cfg.eval.cache_base and (main or file.exists()))}


def reward_funcs(cfg: DictConfig) -> list:
    from hydra.utils import instantiate

    return [instantiate(f, _convert_="all") for f in cfg.objective.reward_funcs]
