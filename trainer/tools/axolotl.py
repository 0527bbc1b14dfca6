"""Axolotl YAML (``axolotl train CONFIG.yml``) -> hydratune experiment overlay, for ``hydratune import``
(trainer/tools/importer.py). Every key is either mapped (the header lists source -> hydratune key), skipped with its
reason (the run still trains as its source would), or refused (it would train differently: an RL method hydratune
has no objective for, multimodal inputs, ReLoRA / LISA schedules, parameters unfrozen by pattern)."""

from __future__ import annotations

from typing import Any

from trainer.config import chat_templates
from trainer.tools.overlay import Overlay, blank, targets

RL = {"dpo": "dpo", "kto": "kto", "orpo": "orpo", "grpo": "grpo"}
#: Axolotl dataset types and the hydratune dataset option that reads such rows.
DATASET_TYPES = {"alpaca": "alpaca", "chat_template": "chat_jsonl", "sharegpt": "sharegpt", "completion": "text"}
DIRECT = {
    "sequence_len": "train.max_length",
    "sample_packing": "train.packing",
    "micro_batch_size": "train.per_device_train_batch_size",
    "eval_batch_size": "train.per_device_eval_batch_size",
    "num_epochs": "train.num_train_epochs",
    "optimizer": "train.optim",
    "lr_scheduler": "train.lr_scheduler_type",
    "warmup_ratio": "train.warmup_steps",  # transformers reads a warmup_steps below 1 as a ratio
    "lora_r": "method.peft.r",
    "lora_alpha": "method.peft.lora_alpha",
    "lora_dropout": "method.peft.lora_dropout",
    "val_set_size": "dataset.validation_size",
    "logging_steps": "logger.logging_steps",
    "trust_remote_code": "model.trust_remote_code",
    "attn_implementation": "model.attn_implementation",
    "wandb_project": "logger.project",
    "dpo_beta": "objective.args.beta",
    "lora_model_dir": "method.init_adapter",
    "tokens": "model.add_special_tokens",
}
SKIPPED = {
    "output_dir": "each run writes its own dir (hydra.run.dir, outputs/<run>/<time>)",
    "dataset_prepared_path": "hydratune caches tokenized data under HYDRATUNE_CACHE itself",
    "model_type": "hydratune loads with AutoModelForCausalLM",
    "tokenizer_type": "hydratune loads with AutoTokenizer",
    "eval_sample_packing": "hydratune evaluates unpacked rows",
    "loss_watchdog_threshold": "no loss watchdog in hydratune",
    "loss_watchdog_patience": "no loss watchdog in hydratune",
    "evals_per_epoch": "set train.eval_strategy=steps train.eval_steps=N for that many evaluations",
    "saves_per_epoch": "set train.save_strategy=steps train.save_steps=N for that many checkpoints",
    "resume_from_checkpoint": "hydratune resumes a run from its own run dir (run the same command again)",
    "special_tokens": "the tokenizer keeps its own bos/eos/pad tokens (the pad token defaults to the end-of-sequence "
    "token); new tokens are Axolotl's `tokens` key (model.add_special_tokens)",
    "eot_tokens": "the end of an assistant turn is the chat template's (model.chat_template)",
    "wandb_entity": "set WANDB_ENTITY in the environment",
    "wandb_watch": "no gradient watching in hydratune",
    "wandb_name": "the run is named by run_name",
    "wandb_log_model": "hydratune never uploads weights to a tracker",
    "strict": "Axolotl's own config validation",
    "debug": "Axolotl's own debugging",
    "deepspeed": "pick hardware=deepspeed_zero2 or deepspeed_zero3",
    "fsdp_config": "hardware=fsdp takes its settings from hydratune's hardware option",
    "eval_table_size": "hydratune's eval writes its own samples table",
    "eval_max_new_tokens": "set eval.max_new_tokens",
    "do_causal_lm_eval": "hydratune's eval runs when eval is on",
    "eval_causal_lm_metrics": "hydratune's eval has its own metrics (eval.*)",
    "resize_token_embeddings_to_32x": "embeddings are resized to the tokenizer's size only",
    "early_stopping_patience": "no early stopping in hydratune",
    "gradient_checkpointing_kwargs": "hydratune sets gradient checkpointing's arguments itself",
    "load_in_8bit": "read with adapter",
    "load_in_4bit": "read with adapter",
    "lora_target_linear": "read with lora_target_modules",
}
REFUSED = {
    "relora_steps": "ReLoRA restarts are not in hydratune",
    "lisa_n_layers": "LISA layer sampling is not in hydratune",
    "unfrozen_parameters": "patterns over parameter names; hydratune's method=freeze takes a layer count and module "
    "names (method.freeze.trainable_layers, trainable_modules): write those",
    "processor_type": "multimodal (image) training is not in hydratune",
    "peft_use_dora": None,  # mapped below: method=dora
}


def convert(spec: dict[str, Any], source: str) -> str:
    out = Overlay(source, "Axolotl")
    _objective(spec, out)
    _method(spec, out)
    for key, value in spec.items():
        if key in ("rl", "adapter", "lora_target_modules", "peft_use_dora") or blank(value):
            continue
        if key == "base_model":
            out.group(key, "model", "hf")
            out.set(key, "model.name_or_path", value)
        elif key in ("datasets", "pretraining_dataset"):
            _datasets(key, value, out)
        elif key == "test_datasets":
            out.skip(key, "set dataset.validation_path=FILE (hydratune reads one validation file)")
        elif key == "chat_template":
            _template(value, out)
        elif key == "wandb_project":
            out.group(key, "logger", "wandb")
            out.set(key, "logger.project", value)
        elif key in ("bf16", "fp16"):
            auto = value == "auto"
            out.set(key, f"train.{key}", True if auto else bool(value))
            if auto:
                out.skip(key, f"{key}: auto is written as true; set train.{key}=false where the GPU lacks it")
        elif key in ("fsdp", "fsdp_version"):
            out.group(key, "hardware", "fsdp")
        elif key == "flash_attention":
            if value:
                out.set(key, "model.attn_implementation", "flash_attention_2")
        elif key in DIRECT:
            out.set(key, DIRECT[key], value)
        elif key in SKIPPED:
            out.skip(key, SKIPPED[key])
        elif REFUSED.get(key):
            out.refuse(key, str(REFUSED[key]))
        elif not out.library(key, key, value):
            out.skip(key, "an Axolotl setting with no hydratune or TRL equivalent")
    return out.render()


def _objective(spec: dict, out: Overlay) -> None:
    rl = spec.get("rl")
    if blank(rl):
        return
    if str(rl) not in RL:
        out.refuse("rl", f"rl: {rl} has no hydratune objective ({', '.join(RL)} do)")
        return
    out.objective("rl", RL[str(rl)])


def _method(spec: dict, out: Overlay) -> None:
    adapter = spec.get("adapter")
    if blank(adapter):
        out.group("adapter", "method", "full")
        return
    if adapter not in ("lora", "qlora"):
        out.refuse("adapter", f"adapter: {adapter} is not in hydratune (lora, qlora and full fine-tuning are)")
        return
    if adapter == "qlora" or spec.get("load_in_4bit"):
        option = "qlora"
    elif spec.get("load_in_8bit"):
        option = "lora_int8"
    else:
        option = "dora" if spec.get("peft_use_dora") else "lora"
    out.group("adapter", "method", option)
    modules = spec.get("lora_target_modules")
    if spec.get("lora_target_linear") or (blank(modules) and adapter):
        out.set("lora_target_linear", "method.peft.target_modules", "all-linear")
        if not blank(modules):
            out.skip("lora_target_modules", "lora_target_linear: true targets every linear layer, these included")
    elif not blank(modules):
        out.set("lora_target_modules", "method.peft.target_modules", targets(modules))


def _datasets(key: str, value: Any, out: Overlay) -> None:
    entries = value if isinstance(value, list) else [value]
    first, rest = entries[0], entries[1:]
    if isinstance(first, str):
        first = {"path": first, "type": "completion"}
    kind = str(first.get("type") or ("completion" if key == "pretraining_dataset" else ""))
    option = DATASET_TYPES.get(kind.split(".")[0])
    if out.config_class != "trl.SFTConfig":  # a preference objective: Axolotl's prompt strategies name the columns
        option = "preference"
    if option is None or not first.get("path"):
        out.skip(key, f"dataset type {kind or '(none)'}: set dataset=<format> dataset.path=FILE by hand "
                 f"(hydratune reads {', '.join(DATASET_TYPES)} as dataset={', '.join(DATASET_TYPES.values())})")  # fmt: skip
        return
    out.group(f"{key}[0].type", "dataset", option)
    out.set(f"{key}[0].path", "dataset.path", first["path"])
    extra = sorted(set(first) - {"path", "type", "split"})
    if extra:
        out.skip(f"{key}[0]", f"{', '.join(extra)}: map the columns by hand (dataset.columns.*)")
    if rest:
        out.skip(f"{key}[1:]", f"{len(rest)} more dataset(s): hydratune trains on one (dataset.path); concatenate them")


def _template(value: Any, out: Overlay) -> None:
    name = str(value)
    if name in chat_templates.names():
        out.set("chat_template", "model.chat_template", name)
    elif name == "tokenizer_default":
        out.mapped.append(("chat_template", "model.chat_template=null (the tokenizer's own)"))
    else:
        out.skip("chat_template", f"Axolotl's '{name}' template is not in hydratune's registry "
                 f"({', '.join(chat_templates.names())}): the tokenizer's own template is used")  # fmt: skip
