"""check_config: every rule a composed config must pass, in one place, at one moment (``--cfg job``, ``prepare`` and
``train`` refuse the same mistakes before anything heavy is imported). Each failure is one UserError paragraph.

The rules: unknown keys and value ranges (walked against the schema dataclasses), choices, pass-through library
arguments, combinations across groups, the distributed and provider rules. The few rules that need a launcher's own
code (a provider's limits and model dates, FSDP's) are its module's ``check(cfg)``; :func:`launchers.check` runs
this function and then that one, and it is what the CLI and every launch call."""

from __future__ import annotations

import dataclasses
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from trainer import objectives
from trainer.errors import UserError, choice_error, closest
from trainer.library_args import check_args
from trainer.plain import plain_dict
from trainer.schema import (
    DistributedHardwareSchema,
    SubmittableHardwareSchema,
    hardware_schema,
    is_cloud,
)

#: Closed choices not declared as Enums in trainer/schema.py (the Enum ones Hydra refuses when it composes).
CHOICES = {
    "serve.engine": {"transformers", "vllm"},
    "serve.device": {"auto", "cpu", "cuda"},
    "serve.dtype": {"auto", "float32", "bfloat16", "float16"},
    "export.dtype": {"auto", "float32", "bfloat16", "float16"},
}
#: Strategies whose processes hydratune starts (launchers.SUBMITTERS: where else they can start).
SUBMITTABLE_CHOICES = {
    "hardware.submit": {"local", "slurm", "skypilot"},
}
PROVIDER_MODELS = {
    "openai": "model=gpt_4o_mini, gpt_4_1_mini, gpt_4o or gpt_4_1",
    "azure_openai": "model=gpt_4o_mini, gpt_4_1_mini, gpt_4o or gpt_4_1",
    "together": "model=together_llama3_1_8b_instruct, together_llama3_2_3b_instruct or together_qwen2_5_7b_instruct",
}


#: Ranges of the library pass-through arguments hydratune's defaults set (a library's own arguments have no schema
#: to declare them in): key -> (minimum, maximum or None). The schema's own fields declare theirs beside the field.
LIBRARY_RANGES: dict[str, tuple[float, float | None]] = {
    "train.per_device_train_batch_size": (1, None),
    "train.per_device_eval_batch_size": (1, None),
    "train.gradient_accumulation_steps": (1, None),
    "train.num_train_epochs": (0, None),
    "train.max_steps": (-1, None),
    "train.learning_rate": (0, None),
    "train.weight_decay": (0, None),
    "train.warmup_steps": (0, None),
    "train.max_length": (1, None),
    "train.save_steps": (0, None),
    "train.save_total_limit": (0, None),
    "train.logging_steps": (0, None),
    "train.eval_steps": (0, None),
    "method.peft.r": (1, None),
    "method.peft.lora_alpha": (0, None),
    "method.peft.lora_dropout": (0, 1),
}


def check_config(cfg: DictConfig) -> None:
    """Every rule a composed config must pass (see the module's docstring); the first broken one raises."""
    check_schema(cfg)
    kind = hardware_schema(cfg)
    choices = dict(CHOICES)
    if issubclass(kind, SubmittableHardwareSchema):
        choices |= SUBMITTABLE_CHOICES
    for key, allowed in choices.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise choice_error(key, value, allowed)
    objectives.check(cfg)  # the dataset shape, train and objective.args against the objective's TRL config class
    for node in ("peft", "quantization"):
        value = cfg.method[node]
        if value is not None:
            check_args(f"method.{node}", plain_dict(value))
    _check_combinations(cfg)
    if issubclass(kind, DistributedHardwareSchema):
        _check_distributed(cfg)
    if is_cloud(cfg):
        _check_cloud(cfg)
    if cfg.eval.enabled:
        from trainer.endpoint_eval import configured

        configured(cfg.eval)  # every compared endpoint has a name, base_url, model, and its key variable is set


def _check_combinations(cfg: DictConfig) -> None:
    hw, method, cloud = cfg.hardware, cfg.method, is_cloud(cfg)
    if not cloud and cfg.model.source == "provider":
        raise UserError(
            f"model.name_or_path={cfg.model.name_or_path} is a provider model: it only trains through its provider's "
            f"API, but hardware={hw.name} trains locally. Use hardware=openai, azure_openai or together, or pick a "
            "local model (model=smollm2_135m, model=hf model.name_or_path=...)."
        )
    if method.quantization is not None and not cloud and hw.device == "cpu":
        raise UserError(
            f"method={method.name} quantizes the base model to 4 bits with bitsandbytes, which needs a CUDA GPU, "
            f"but hardware={hw.name} runs on the CPU. Use method=lora on the CPU, or hardware=single_gpu "
            "(or auto) on a machine with an NVIDIA GPU."
        )
    if method.peft is None and method.merge_adapter:
        raise UserError("method.merge_adapter=true needs an adapter method (lora, dora, qlora); method=full has none.")


def check_schema(cfg: DictConfig) -> None:
    """Unknown keys and out-of-range values, walking the typed nodes against their schema dataclasses."""
    _walk(cfg, "")
    for key, (low, high) in LIBRARY_RANGES.items():
        value = OmegaConf.select(cfg, key, default=None)
        _check_range(key, value, low, high, exclusive=False)


def _walk(node: Any, key: str) -> None:
    if not isinstance(node, DictConfig | ListConfig) or node._is_none() or node._is_missing():
        return
    if isinstance(node, ListConfig):
        for i, item in enumerate(node._iter_ex(resolve=False)):
            _walk(item, f"{key}[{i}]")
        return
    schema = OmegaConf.get_type(node)
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        return  # a free-form node (train, method.peft, hardware.sbatch ...): the library or its own check decides
    fields = {f.name: f for f in dataclasses.fields(schema)}
    prefix = f"{key}." if key else ""
    for name in node.keys():
        if name not in fields:
            raise _unknown_key(f"{prefix}{name!s}", str(name), list(fields), schema)
    for name, spec in fields.items():
        if OmegaConf.is_missing(node, name):
            continue
        if "min" in spec.metadata:
            meta = spec.metadata
            _check_range(f"{prefix}{name}", node[name], meta["min"], meta["max"], meta.get("exclusive", False))
        elif not OmegaConf.is_interpolation(node, name):
            _walk(node._get_node(name), f"{prefix}{name}")


def _check_range(key: str, value: Any, low: float, high: float | None, exclusive: bool) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return  # null means "off / automatic"; wrong types are the schema's or the library check's to report
    if (value <= low if exclusive else value < low) or (high is not None and value > high):
        bound = f"greater than {low:g}" if exclusive else f"at least {low:g}"
        if high is not None:
            bound += f" and at most {high:g}"
        raise UserError(
            f"{key}={value} is out of range: it must be {bound}. Fix the value in your YAML file or override."
        )


def _unknown_key(key: str, name: str, known: list[str], schema: type) -> UserError:
    parent = key[: -len(name) - 1]
    where = f"'{parent}' ({schema.__name__})" if parent else "the root config"
    return UserError(
        f"Unknown config key '{key}': {where} has no key '{name}'.{closest(name, known)} "
        f"Known keys there: {', '.join(sorted(known))}. Check the spelling (a key added with + must still be one "
        "the schema in trainer/schema.py declares)."
    )


def _check_distributed(cfg: DictConfig) -> None:
    hw, method = cfg.hardware, cfg.method
    if hw.launcher == "deepspeed" and hw.zero_stage == 0 and not hw.deepspeed_config:
        raise UserError(
            "hardware.launcher=deepspeed with hardware.zero_stage=0 and no hardware.deepspeed_config: there is no "
            "DeepSpeed config to run. Use hardware=ddp for plain data parallel, or a deepspeed_zero* option."
        )
    if method.merge_adapter and hw.zero_stage == 3:
        raise UserError(
            "method.merge_adapter=true cannot merge under ZeRO-3 (each rank holds only a shard of the base weights). "
            "Train with merge_adapter=false, then merge the saved adapter in one process: "
            "peft.AutoPeftModelForCausalLM.from_pretrained('<run dir>/model').merge_and_unload().save_pretrained(...)."
        )
    if method.quantization is not None and hw.zero_stage == 3:
        raise UserError(
            f"method={method.name} (4-bit base weights) does not combine with ZeRO-3 parameter sharding here. "
            "Use hardware=ddp or hardware=deepspeed_zero2 with QLoRA, or method=lora with ZeRO-3."
        )


def _check_cloud(cfg: DictConfig) -> None:
    hw, model = cfg.hardware, cfg.model
    if model.source != "provider":
        raise UserError(
            f"hardware={hw.name} fine-tunes a model at the provider, but model.source={model.source} "
            f"({model.name_or_path}) is a local model. Pick a provider model: "
            f"{PROVIDER_MODELS.get(hw.provider, PROVIDER_MODELS['openai'])}."
        )
    if not model.encoding:
        raise UserError(
            f"model.encoding is not set for {model.name_or_path}: hydratune needs the tiktoken encoding "
            "to count and price tokens (o200k_base for gpt-4o / gpt-4.1, cl100k_base for gpt-3.5-turbo)."
        )
    fmt = cfg.dataset.format
    if fmt == "text":
        raise UserError(
            f"dataset.format=text (raw text for continued pretraining) cannot be sent to a chat "
            f"fine-tuning API (hardware={hw.name}). Use a chat, alpaca, sharegpt, prompt_completion or "
            "template dataset."
        )


def check_generation_length(eval_cfg: DictConfig, model_config) -> None:
    """eval.generation.max_new_tokens must fit in the model's context (checked once the model's config is known)."""
    context = getattr(model_config, "max_position_embeddings", None)
    wanted = eval_cfg.generation.max_new_tokens
    if eval_cfg.enabled and isinstance(context, int) and wanted >= context:
        raise UserError(
            f"eval.generation.max_new_tokens={wanted} does not fit in the model's context of {context} tokens "
            "(max_position_embeddings in its config), which also holds the prompt. Set "
            f"eval.generation.max_new_tokens to well under {context} (the answers of the held-out split are usually "
            "far shorter), or eval=none."
        )
