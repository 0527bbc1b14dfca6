"""check_config: every rule a composed config must pass, in one place, at one moment (``--cfg job``, ``prepare`` and
``train`` refuse the same mistakes before anything heavy is imported). Each failure is one UserError paragraph.

The rules: unknown keys and value ranges (walked against the schema dataclasses), choices, pass-through library
arguments, combinations across groups, the distributed and provider rules. The few rules that need a launcher's own
code (a provider's limits and model dates, FSDP's) are its module's ``check(cfg)``; :func:`launchers.check` runs
this function and then that one, and it is what the CLI and every launch call."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from trainer.config import chat_templates, machine, method_rules, objective_rules
from trainer.config.errors import Collector, UserError, closest
from trainer.config.library_args import check_args
from trainer.config.plain import plain_dict
from trainer.config.schema import (
    SEED_MAX,
    DistributedHardwareSchema,
    hardware_schema,
    is_cloud,
)
from trainer.config.secrets import looks_like_key, remember

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
    "train.seed": (0, SEED_MAX),
    "train.data_seed": (0, SEED_MAX),
}
#: Library arguments whose recorded signature admits anything (peft's dataclass fields), but that must be numbers:
#: key -> whether it must be a whole number.
LIBRARY_NUMBERS = {"method.peft.r": True, "method.peft.lora_alpha": False, "method.peft.lora_dropout": False}
#: The fewest tokens one few-shot demonstration can take: a question token and an answer token.
MIN_DEMONSTRATION_TOKENS = 2


def check_config(cfg: DictConfig, *launcher_rules: Callable[[DictConfig], object]) -> None:
    """Every rule a composed config must pass (see the module's docstring), then the launcher's own; every broken
    rule is collected and all are raised together (one UserError, or ConfigErrors listing each)."""
    check_env_names(cfg)  # alone and first: no other rule's message may quote a key pasted into an *_env field
    found = Collector()
    check_schema(cfg, found)
    found.rule(check_eval_bounds, cfg)
    kind = hardware_schema(cfg)
    found.rule(objective_rules.check, cfg)  # the dataset shape, train and objective.args against its TRL config class
    for node in ("peft", "quantization"):
        value = cfg.method[node]
        if value is not None:
            found.rule(check_args, f"method.{node}", plain_dict(value))
    found.rule(method_rules.check, cfg)  # freeze tuning's choice, method.init_adapter's adapter, added tokens
    for rule in (_provider_model, _quantized_on_cpu, _merge_needs_adapter, _streaming):
        found.rule(rule, cfg)
    found.rule(_serve_key_off_loopback, cfg.serve)
    found.rule(chat_templates.check, cfg.model)
    if issubclass(kind, DistributedHardwareSchema):
        for rule in (_deepspeed_needs_config, _merge_under_zero3, _quantized_under_zero3):
            found.rule(rule, cfg)
    for rule in () if is_cloud(cfg) else machine.RULES:  # this machine's packages and devices, for a local run
        found.rule(rule, cfg)
    if is_cloud(cfg):
        for rule in (_cloud_model, _cloud_encoding, _cloud_format):
            found.rule(rule, cfg)
    if cfg.eval.enabled:
        from trainer.config.endpoints import configured

        found.rule(configured, cfg.eval)  # every compared endpoint has a name, base_url, model and its key variable
    for launcher_rule in launcher_rules:
        found.rule(launcher_rule, cfg)
    found.raise_any()


def _provider_model(cfg: DictConfig) -> None:
    hw = cfg.hardware
    if not is_cloud(cfg) and cfg.model.source == "provider":
        raise UserError(
            f"model.name_or_path={cfg.model.name_or_path} is a provider model: it only trains through its provider's "
            f"API, but hardware={hw.name} trains locally. Use hardware=openai, azure_openai or together, or pick a "
            "local model (model=smollm2_135m, model=hf model.name_or_path=...)."
        )


def _quantized_on_cpu(cfg: DictConfig) -> None:
    hw, method = cfg.hardware, cfg.method
    if method.quantization is not None and not is_cloud(cfg) and hw.device == "cpu":
        raise UserError(
            f"method={method.name} quantizes the base model to {8 if method.quantization.get('load_in_8bit') else 4} "
            "bits with bitsandbytes, which needs a CUDA GPU, "
            f"but hardware={hw.name} runs on the CPU. Use method=lora on the CPU, or hardware=single_gpu "
            "(or auto) on a machine with an NVIDIA GPU."
        )


def _merge_needs_adapter(cfg: DictConfig) -> None:
    method = cfg.method
    if method.peft is None and method.merge_adapter:
        raise UserError(
            f"method.merge_adapter=true needs an adapter method (lora, dora, qlora); method={method.name} has none."
        )


def _streaming(cfg: DictConfig) -> None:
    """dataset.streaming=true: an endless packed stream, trained in one process, with nothing held out."""
    if not cfg.dataset.streaming:
        return
    ds, train = cfg.dataset, cfg.train
    problems = []
    if (OmegaConf.select(cfg, "train.max_steps") or -1) <= 0:
        problems.append("a stream has no length, so epochs cannot end it: set train.max_steps")
    if cfg.objective.data != "supervised":
        problems.append(f"objective={cfg.objective.name} tokenizes its rows in TRL: streaming is for sft-shaped data")
    if not OmegaConf.select(cfg, "train.packing") or OmegaConf.select(cfg, "train.max_length") is None:
        problems.append("it packs rows on the fly into train.max_length tokens: set train.packing=true and max_length")
    if is_cloud(cfg) or issubclass(hardware_schema(cfg), DistributedHardwareSchema):
        problems.append(f"it trains in one process, and hardware={cfg.hardware.name} does not (use cpu, single_gpu)")
    if ds.mix or ds.validation_path or ds.validation_split or ds.validation_rows or ds.train_rows:
        problems.append("it reads one source in file order: drop dataset.mix, validation_* and train_rows")
    if ds.max_train_examples is not None:
        problems.append("train.max_steps bounds a stream: drop dataset.max_train_examples")
    if ds.validation_size != 0:
        problems.append(f"it holds no rows out: set dataset.validation_size=0 (it is {ds.validation_size})")
    if cfg.eval.enabled:
        problems.append("evaluation needs held-out rows, which a stream has not: set eval.enabled=false")
    if OmegaConf.select(train, "dataloader_num_workers"):
        problems.append("its position lives in the training process: drop train.dataloader_num_workers")
    if problems:
        raise UserError("dataset.streaming=true: " + "; ".join(problems) + ".")


def check_env_names(cfg: DictConfig) -> None:
    """Every ``*_env`` key (api_key_env ...) holds an environment variable's name, never a key pasted into it (the
    message does not show the value: it is redacted from every record of the run)."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    for key, value in _env_fields(plain, ""):
        if looks_like_key(value):
            remember(value)
            name = key.rsplit(".", 1)[-1].removesuffix("_env").upper()
            example = "OPENAI_API_KEY" if name == "API_KEY" else f"MY_{name}"
            raise UserError(
                f"{key} holds what looks like a key itself ({len(value)} characters, not shown), but it takes the "
                "name of the environment variable that holds the key: a key in the config would be written to "
                f"config.yaml, the logs and the trackers. Nothing was run. Export the key and give its name: "
                f"`export {example}=...` (in your shell, not in a file under version control), then "
                f"{key}={example}."
            )


def _env_fields(node: Any, prefix: str):
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(v, dict | list):
                yield from _env_fields(v, f"{prefix}{k}.")
            elif str(k).endswith("_env") and isinstance(v, str):
                yield f"{prefix}{k}", v
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _env_fields(v, f"{prefix.rstrip('.')}[{i}].")


def _serve_key_off_loopback(serve: DictConfig) -> None:
    """A server reachable from other machines needs a key: anyone who reaches it could otherwise generate."""
    if serve.api_key_env is None and not is_loopback(serve.host):
        raise UserError(
            f"serve.host={serve.host or '(all addresses)'} makes `hydratune serve` reachable from other machines, "
            "but serve.api_key_env is not set, so anyone who reaches it could use the model. Put a key in an "
            "environment variable (export HYDRATUNE_SERVE_KEY=$(openssl rand -hex 24)) and name it: "
            "serve.api_key_env=HYDRATUNE_SERVE_KEY; clients then send 'Authorization: Bearer KEY' (the OpenAI SDK's "
            "api_key). Or keep serve.host=127.0.0.1 (this machine only)."
        )


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: an address only this machine reaches."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_schema(cfg: DictConfig, found: Collector | None = None) -> None:
    """Unknown keys and out-of-range values, walking the typed nodes against their schema dataclasses: each one
    found is added to ``found`` (or, without one, all of them raised together)."""
    collector = found or Collector()
    _walk(cfg, "", collector)
    for key, whole in LIBRARY_NUMBERS.items():
        collector.rule(_check_number, key, OmegaConf.select(cfg, key, default=None), whole)
    for key, (low, high) in LIBRARY_RANGES.items():
        value = OmegaConf.select(cfg, key, default=None)
        why = "numpy's seed range, 0 <= seed < 2**32" if high == SEED_MAX else ""
        collector.rule(_check_range, key, value, low, high, False, why)
    if found is None:
        collector.raise_any()


def _check_number(key: str, value: Any, whole: bool) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if value is None or (number and not (whole and isinstance(value, float))):
        return
    shown = OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value
    raise UserError(
        f"{key}={shown!r} has the wrong type: it takes {'a whole number' if whole else 'a number'}, not "
        f"{type(shown).__name__}. Fix the value in your YAML file or override (e.g. `{key}=16`)."
    )


def _walk(node: Any, key: str, found: Collector) -> None:
    if not isinstance(node, DictConfig | ListConfig) or node._is_none() or node._is_missing():
        return
    if isinstance(node, ListConfig):
        for i, item in enumerate(node._iter_ex(resolve=False)):
            _walk(item, f"{key}[{i}]", found)
        return
    schema = OmegaConf.get_type(node)
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        return  # a free-form node (train, method.peft, hardware.sbatch ...): the library or its own check decides
    fields = {f.name: f for f in dataclasses.fields(schema)}
    prefix = f"{key}." if key else ""
    for name in node.keys():
        if name not in fields:
            found.add(_unknown_key(f"{prefix}{name!s}", str(name), list(fields), schema))
    for name, spec in fields.items():
        if OmegaConf.is_missing(node, name):
            continue
        if "min" in spec.metadata:
            meta = spec.metadata
            bounds = meta["min"], meta["max"], meta.get("exclusive", False), meta.get("why", "")
            found.rule(_check_range, f"{prefix}{name}", node[name], *bounds)
        elif not OmegaConf.is_interpolation(node, name):
            _walk(node._get_node(name), f"{prefix}{name}", found)


def _check_range(key: str, value: Any, low: float, high: float | None, exclusive: bool, why: str = "") -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return  # null means "off / automatic"; wrong types are the schema's or the library check's to report
    if (value <= low if exclusive else value < low) or (high is not None and value > high):
        bound = f"greater than {low:g}" if exclusive else f"at least {low:g}"
        if high is not None:
            bound += f" and at most {high:d}" if isinstance(high, int) else f" and at most {high:g}"
        reason = f" ({why})" if why else ""
        raise UserError(
            f"{key}={value} is out of range: it must be {bound}{reason}. Fix the value in your YAML file or override."
        )


def _unknown_key(key: str, name: str, known: list[str], schema: type) -> UserError:
    parent = key[: -len(name) - 1]
    where = f"'{parent}' ({schema.__name__})" if parent else "the root config"
    return UserError(
        f"Unknown config key '{key}': {where} has no key '{name}'.{closest(name, known)} "
        f"Known keys there: {', '.join(sorted(known))}. Check the spelling (a key added with + must still be one "
        "the schema in trainer/config/schema.py declares)."
    )


def _deepspeed_needs_config(cfg: DictConfig) -> None:
    hw = cfg.hardware
    if hw.launcher == "deepspeed" and hw.zero_stage == 0 and not hw.deepspeed_config:
        raise UserError(
            "hardware.launcher=deepspeed with hardware.zero_stage=0 and no hardware.deepspeed_config: there is no "
            "DeepSpeed config to run. Use hardware=ddp for plain data parallel, or a deepspeed_zero* option."
        )


def _merge_under_zero3(cfg: DictConfig) -> None:
    hw, method = cfg.hardware, cfg.method
    if method.merge_adapter and hw.zero_stage == 3:
        raise UserError(
            "method.merge_adapter=true cannot merge under ZeRO-3 (each rank holds only a shard of the base weights). "
            "Train with merge_adapter=false, then merge the saved adapter in one process: "
            "peft.AutoPeftModelForCausalLM.from_pretrained('<run dir>/model').merge_and_unload().save_pretrained(...)."
        )


def _quantized_under_zero3(cfg: DictConfig) -> None:
    hw, method = cfg.hardware, cfg.method
    if method.quantization is not None and hw.zero_stage == 3:
        raise UserError(
            f"method={method.name} (quantized base weights) does not combine with ZeRO-3 parameter sharding here. "
            "Use hardware=ddp or hardware=deepspeed_zero2 with QLoRA, or method=lora with ZeRO-3."
        )


def _cloud_model(cfg: DictConfig) -> None:
    hw, model = cfg.hardware, cfg.model
    if model.source != "provider":
        raise UserError(
            f"hardware={hw.name} fine-tunes a model at the provider, but model.source={model.source} "
            f"({model.name_or_path}) is a local model. Pick a provider model: "
            f"model={', '.join(hw.model_options) or '(none listed in hardware.model_options)'}."
        )


def _cloud_encoding(cfg: DictConfig) -> None:
    model = cfg.model
    if not model.encoding:
        raise UserError(
            f"model.encoding is not set for {model.name_or_path}: hydratune needs the tiktoken encoding "
            "to count and price tokens (o200k_base for gpt-4o / gpt-4.1, cl100k_base for gpt-3.5-turbo)."
        )


def _cloud_format(cfg: DictConfig) -> None:
    hw, fmt = cfg.hardware, cfg.dataset.format
    if fmt == "text":
        raise UserError(
            f"dataset.format=text (raw text for continued pretraining) cannot be sent to a chat "
            f"fine-tuning API (hardware={hw.name}). Use a chat, alpaca, sharegpt, prompt_completion or "
            "template dataset."
        )


def check_eval_bounds(cfg: DictConfig) -> None:
    """What the evaluation generates must fit in model.max_context (when the model's option declares it): the answer
    length, and eval.few_shot demonstrations of at least MIN_DEMONSTRATION_TOKENS tokens each with the question. The
    exact fit, with the real rows and tokenizer, is trainer.engine.before_weights's."""
    ev, context = cfg.eval, cfg.model.max_context
    if not ev.enabled or context is None:
        return
    check_answer_fits(ev, context, "model.max_context")
    room = context - ev.generation.max_new_tokens - 1  # the question itself takes at least one token
    most = max(room // MIN_DEMONSTRATION_TOKENS, 0)
    if ev.few_shot > most:
        raise UserError(
            f"eval.few_shot={ev.few_shot} demonstrations cannot fit in the model's context of {context} tokens "
            f"(model.max_context): each takes at least {MIN_DEMONSTRATION_TOKENS} tokens (a question and its answer), "
            f"and the context must also hold the question and eval.generation.max_new_tokens="
            f"{ev.generation.max_new_tokens} answer tokens, so at most {most} fit (far fewer with real rows). Set "
            "eval.few_shot to a small number (3 to 8 is usual), or eval.few_shot=0 for no few-shot column."
        )


def check_answer_fits(eval_cfg: DictConfig, context: int, source: str) -> None:
    wanted = eval_cfg.generation.max_new_tokens
    if wanted >= context:
        raise UserError(
            f"eval.generation.max_new_tokens={wanted} does not fit in the model's context of {context} tokens "
            f"({source}), which also holds the prompt. Set eval.generation.max_new_tokens to well under {context} "
            "(the answers of the held-out split are usually far shorter), or eval=none."
        )
