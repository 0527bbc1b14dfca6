"""LLaMA-Factory training YAML (``llamafactory-cli train CONFIG.yaml``) -> hydratune experiment overlay, for
``hydratune import`` (trainer/tools/importer.py). Every key is either mapped (the header lists source -> hydratune
key), skipped with its reason (the run still trains as its source would), or refused (it would train differently:
a PPO stage, multimodal inputs, a quantization backend other than bitsandbytes, freeze tuning of parts of layers)."""

from __future__ import annotations

from typing import Any

from trainer.config import chat_templates
from trainer.tools.overlay import Overlay, blank, targets

STAGES = {"sft": "sft", "pt": "sft", "dpo": "dpo", "kto": "kto", "rm": "reward"}
REPORTERS: dict[str, str | None] = {"none": None, "wandb": "wandb", "tensorboard": "tensorboard", "mlflow": "mlflow"}
#: LLaMA-Factory keys with a plain hydratune key.
DIRECT = {
    "trust_remote_code": "model.trust_remote_code",
    "lora_rank": "method.peft.r",
    "lora_alpha": "method.peft.lora_alpha",
    "lora_dropout": "method.peft.lora_dropout",
    "cutoff_len": "train.max_length",
    "max_samples": "dataset.max_train_examples",
    "val_size": "dataset.validation_size",
    "logging_steps": "logger.logging_steps",
    "warmup_ratio": "train.warmup_steps",  # transformers reads a warmup_steps below 1 as a ratio
    "pref_beta": "objective.args.beta",
    "pref_loss": "objective.args.loss_type",
    "flash_attn": "model.attn_implementation",
}
#: Keys with no hydratune counterpart that change nothing about what trains, and why.
SKIPPED = {
    "do_train": "hydratune train trains (and evaluates when eval is on)",
    "output_dir": "each run writes its own dir (hydra.run.dir, outputs/<run>/<time>)",
    "overwrite_output_dir": "each run writes its own dir; nothing is overwritten",
    "plot_loss": "the run's report plots the loss",
    "preprocessing_num_workers": "hydratune tokenizes in its own process (and caches the result)",
    "ddp_timeout": "hydratune's distributed launchers set their own timeouts",
    "dataset_dir": "the folder of dataset_info.json, which `hydratune import` turns into conf/dataset options",
}
#: Keys that would make the run train differently from its source.
REFUSED_PREFIXES = ("image_", "video_", "audio_", "freeze_", "ppo_", "galore_", "badam_", "apollo_")
#: finetuning_type: freeze's keys (LLaMA-Factory's defaults: the last 2 layers, all of each).
FREEZE_KEYS = ("freeze_trainable_layers", "freeze_trainable_modules", "freeze_extra_modules")


def convert(spec: dict[str, Any], source: str) -> str:
    out = Overlay(source, "LLaMA-Factory")
    stage = spec.get("stage", "sft")
    if stage not in STAGES:
        out.refuse("stage", f"stage {stage} has no hydratune objective (sft, pt, dpo, kto and rm do)")
    else:
        out.objective("stage", STAGES[stage])
        if stage != "sft":  # the shape of data the objective trains on (its path: see the dataset key's note)
            out.group("stage", "dataset", "text" if stage == "pt" else "preference")
    _method(spec, out)
    for key, value in spec.items():
        frozen = key in FREEZE_KEYS and spec.get("finetuning_type") == "freeze"  # read by _method
        if key in ("stage", "lora_target", "quantization_bit", "quantization_method", "finetuning_type") or frozen:
            continue
        if blank(value):
            continue
        if key in FREEZE_KEYS:
            out.skip(key, "read only with finetuning_type: freeze")
            continue
        if key == "model_name_or_path":
            out.group(key, "model", "hf")
            out.set(key, "model.name_or_path", value)
        elif key == "template":
            _template(value, out)
        elif key == "dataset":
            out.skip(key, f"'{value}' names entries of LLaMA-Factory's {spec.get('dataset_dir', 'data')}/dataset_info.json: "
                     "import them with `hydratune import data/dataset_info.json --out conf/dataset`, then "
                     "dataset=NAME (the run trains on the default dataset until then)")  # fmt: skip
        elif key == "new_special_tokens":
            out.set(key, "model.add_special_tokens", _names(value))
        elif key == "resize_vocab":
            out.skip(key, "the embeddings are resized to the tokenizer's size whenever tokens are added")
        elif key == "adapter_name_or_path":
            if len(_names(value)) > 1:
                out.refuse(
                    key, "several adapters merged before training: hydratune continues one (method.init_adapter)"
                )
            else:
                out.set(key, "method.init_adapter", str(value))
        elif key == "eval_dataset":
            out.skip(key, "a dataset_info.json name: set dataset.validation_path=FILE")
        elif key == "report_to":
            logger = REPORTERS.get(str(value), "")
            if logger == "":
                out.skip(key, f"no hydratune logger for {value} (logger=wandb, tensorboard, mlflow or jsonl)")
            elif logger:
                out.group(key, "logger", logger)
            else:
                out.mapped.append((key, "logger=none (the default logs to a JSONL file only)"))
        elif key == "deepspeed":
            _deepspeed(str(value), out)
        elif key in DIRECT:
            out.set(key, DIRECT[key], _value(key, value))
        elif key in SKIPPED:
            out.skip(key, SKIPPED[key])
        elif key.startswith(REFUSED_PREFIXES) or key in ("use_galore", "use_badam", "use_apollo", "mask_history"):
            out.refuse(key, "a multimodal or optimizer-specific LLaMA-Factory feature hydratune does not have")
        elif key == "resume_from_checkpoint":
            out.skip(key, "hydratune resumes a run from its own run dir (run the same command again)")
        elif not out.library(key, key, value):
            out.skip(key, "a LLaMA-Factory setting with no hydratune or TRL equivalent")
    return out.render()


def _value(key: str, value: Any) -> Any:
    if key == "flash_attn":
        return {"fa2": "flash_attention_2", "sdpa": "sdpa", "disabled": "eager", "auto": None}.get(str(value), value)
    return value


def _method(spec: dict, out: Overlay) -> None:
    kind = spec.get("finetuning_type", "lora")
    if kind == "full":
        out.group("finetuning_type", "method", "full")
        return
    if kind == "freeze":
        _freeze(spec, out)
        return
    if kind != "lora":
        out.refuse("finetuning_type", f"finetuning_type {kind} is not in hydratune; lora, freeze and full are")
        return
    bits, backend = spec.get("quantization_bit"), spec.get("quantization_method", "bnb")
    if bits is None:
        out.group("finetuning_type", "method", "lora")
    elif backend != "bnb" or int(bits) not in (4, 8):
        out.refuse(
            "quantization_bit", f"{bits}-bit {backend} quantization: hydratune quantizes with bitsandbytes, 4 or 8 bits"
        )
    else:
        out.group("quantization_bit", "method", "qlora" if int(bits) == 4 else "lora_int8")
        out.mapped.append(("finetuning_type", f"method=lora on {bits}-bit base weights"))
        if "quantization_method" in spec:
            out.mapped.append(("quantization_method", "bitsandbytes, the quantizer of method=qlora / lora_int8"))
    if not blank(spec.get("lora_target")):
        out.set("lora_target", "method.peft.target_modules", targets(spec["lora_target"]))


def _freeze(spec: dict, out: Overlay) -> None:
    out.group("finetuning_type", "method", "freeze")
    if "freeze_trainable_layers" in spec:  # LLaMA-Factory's default, 2, is method=freeze's too
        out.set("freeze_trainable_layers", "method.freeze.trainable_layers", int(spec["freeze_trainable_layers"]))
    inside = _names(spec.get("freeze_trainable_modules", "all"))
    if inside == ["all"]:
        if "freeze_trainable_modules" in spec:
            out.mapped.append(("freeze_trainable_modules", "all: the chosen layers train whole"))
    else:
        out.refuse("freeze_trainable_modules", f"{','.join(inside)} trains part of each chosen layer; hydratune's "
                   "method=freeze trains whole layers plus named modules (method.freeze.trainable_modules)")  # fmt: skip
    if not blank(spec.get("freeze_extra_modules")):
        out.set("freeze_extra_modules", "method.freeze.trainable_modules", _names(spec["freeze_extra_modules"]))


def _names(value: Any) -> list[str]:
    """A LLaMA-Factory list: comma-separated text (``a,b``) or a YAML list."""
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def _template(value: Any, out: Overlay) -> None:
    name = str(value)
    if name in chat_templates.names():
        out.set("template", "model.chat_template", name)
    else:
        out.skip("template", f"LLaMA-Factory's '{name}' template is not in hydratune's registry "
                 f"({', '.join(chat_templates.names())}): the tokenizer's own template is used")  # fmt: skip


def _deepspeed(path: str, out: Overlay) -> None:
    stage = "3" if "z3" in path or "zero3" in path else "2" if "z2" in path or "zero2" in path else None
    if stage is None:
        out.skip("deepspeed", f"{path}: pick hardware=deepspeed_zero2 or deepspeed_zero3")
    else:
        out.group("deepspeed", "hardware", f"deepspeed_zero{stage}")
