"""AutoTrain Advanced config -> hydratune experiment: ``hydratune import PATH [--out FILE]`` (trainer/tools/importer.py
detects the format; ``hydratune convert-autotrain`` is the same for AutoTrain files).

Reads an AutoTrain YAML (task, base_model, project_name, log, backend, data, params, hub) and writes the equivalent
experiment overlay: llm-sft and llm-generic train objective=sft, llm-dpo, llm-orpo and llm-reward train objective=dpo,
orpo and reward on dataset=preference (AutoTrain's text_column is the chosen answer). Parameters the file leaves out take AutoTrain's own defaults (its ``LLMTrainingParams``), so the
converted run trains the way AutoTrain would; every AutoTrain value is written out, so the file reads on its own.
Anything that has no hydratune equivalent stops the conversion with one paragraph naming the key. The hub token is
never written: pushing reads HF_TOKEN from the environment.

    hydratune convert-autotrain autotrain.yml --out conf/experiment/my_sft.yaml
    hydratune experiment=my_sft
"""

from __future__ import annotations

import re
import textwrap
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from trainer.config.errors import UserError, closest

#: AutoTrain's LLM trainers (task llm-<trainer>, or task llm with params.trainer) that hydratune can run, and the
#: hydratune objective each trains.
TRAINERS = {"sft": "sft", "generic": "sft", "default": "sft", "dpo": "dpo", "orpo": "orpo", "reward": "reward"}
PREFERENCE = ("dpo", "orpo", "reward")
#: AutoTrain's LLMTrainingParams defaults for the keys this converter maps.
DEFAULTS: dict[str, Any] = {
    "block_size": -1, "model_max_length": 2048, "padding": "right", "add_eos_token": True, "trainer": None,
    "use_flash_attention_2": False, "disable_gradient_checkpointing": False, "logging_steps": -1,
    "eval_strategy": "epoch", "save_total_limit": 1, "auto_find_batch_size": False, "mixed_precision": None,
    "lr": 3e-5, "epochs": 1, "batch_size": 2, "warmup_ratio": 0.1, "gradient_accumulation": 4,
    "optimizer": "adamw_torch", "scheduler": "linear", "weight_decay": 0.0, "max_grad_norm": 1.0, "seed": 42,
    "chat_template": None, "quantization": "int4", "target_modules": "all-linear", "merge_adapter": False,
    "peft": False, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "unsloth": False,
    "distributed_backend": None, "text_column": "text", "prompt_text_column": None, "rejected_text_column": None,
    "push_to_hub": False, "username": None, "token": None, "log": None,
    # preference settings (DPO / ORPO)
    "model_ref": None, "dpo_beta": 0.1, "max_prompt_length": 128, "max_completion_length": None,
}  # fmt: skip
ALIASES = {"evaluation_strategy": "eval_strategy"}
PREFERENCE_ONLY = ("model_ref", "dpo_beta", "max_prompt_length", "max_completion_length")
TOP_LEVEL = ("task", "base_model", "project_name", "log", "backend", "data", "params", "hub")
DATA_KEYS = ("path", "train_split", "valid_split", "chat_template", "column_mapping")
COLUMN_KEYS = ("text_column", "rejected_text_column", "prompt_text_column")
HUB_KEYS = ("username", "token", "push_to_hub")
LOGGERS = {None: None, "none": None, "tensorboard": "tensorboard", "wandb": "wandb"}
BACKENDS = (None, "local", "local-cli")
DISTRIBUTED = {None: None, "ddp": "ddp", "deepspeed": "deepspeed_zero3"}
CHAT_TEMPLATES = (None, "tokenizer", "chatml", "zephyr")


def convert(spec: Any, source: str = "autotrain.yml") -> str:
    """The text of the hydratune experiment file equivalent to the AutoTrain config ``spec``."""
    if not isinstance(spec, dict):
        raise UserError(f"{source}: an AutoTrain config is a YAML mapping (task, base_model, data, params ...).")
    _known(spec, TOP_LEVEL, source, "")
    data = spec.get("data") or {}
    _known(data, DATA_KEYS, source, "data.")
    columns = data.get("column_mapping") or {}
    _known(columns, COLUMN_KEYS, source, "data.column_mapping.")
    hub = spec.get("hub") or {}
    _known(hub, HUB_KEYS, source, "hub.")
    given = {ALIASES.get(k, k): v for k, v in (spec.get("params") or {}).items()}
    task = _task(spec, given, source)
    _known(given, [*DEFAULTS, *ALIASES], source, "params.")
    p = {**DEFAULTS, **given, **{k: v for k, v in columns.items() if v is not None}, **hub}
    if data.get("chat_template") is not None:
        p["chat_template"] = data["chat_template"]
    if spec.get("log") is not None:
        p["log"] = spec["log"]
    name = str(spec.get("project_name") or Path(source).stem)

    overrides: dict[str, str] = {}
    out: dict[str, Any] = {"run_name": name}
    notes: list[str] = []
    _check_unmappable(p, spec, task, source)
    _numbers(p, source)
    objective = TRAINERS[task.removeprefix("llm-")]
    if objective == "sft":
        for key in PREFERENCE_ONLY:
            if p[key] != DEFAULTS[key]:
                notes.append(f"params.{key}={p[key]} is a DPO/ORPO setting: {task} ignores it, as AutoTrain does")
    else:
        overrides["objective"] = objective
    out["seed"] = p["seed"]
    _model(spec, p, overrides, out, source)
    if objective == "sft":
        _dataset(data, p, overrides, out, notes, source)
    else:
        _preference_dataset(data, p, objective, overrides, out, notes, source)
    _method(p, overrides, out, notes, source)
    _train(p, out, notes, bool(data.get("valid_split")), objective)
    _hardware_and_logger(spec, p, overrides, out, source)
    _hub(p, name, out, notes)
    return _render(source, task, overrides, out, notes)


# ---------------------------------------------------------------- checks


def _known(node: Any, allowed, source: str, prefix: str) -> None:
    if not isinstance(node, dict):
        raise UserError(f"{source}: {prefix.rstrip('.') or 'the file'} should be a mapping, got {node!r}.")
    for key in node:
        if key not in allowed:
            raise UserError(
                f"{source}: {prefix}{key} has no hydratune equivalent, so the config cannot be converted.{closest(key, allowed)} "
                f"Keys hydratune maps here: {', '.join(sorted(allowed))}. Remove it (or map it by hand in the "
                "converted experiment) and convert again."
            )


def _task(spec: dict, params: dict, source: str) -> str:
    """``llm-sft`` or ``llm-generic``: the task, or task ``llm`` with params.trainer (AutoTrain's older form)."""
    task = str(spec.get("task"))
    what = f"task={task}"
    trainer = task.removeprefix("llm-") if task.startswith("llm-") else None
    if task == "llm":
        trainer = str(params.get("trainer") or "default")
        what = f"task=llm with params.trainer={trainer}"
    if trainer not in TRAINERS:
        raise UserError(
            f"{source}: {what} cannot be converted. The language-model tasks llm-sft, llm-generic, llm-dpo, "
            "llm-orpo and llm-reward convert (objective=sft, dpo, orpo, reward); the non-LLM tasks and llm-grpo "
            "(AutoTrain's reward functions are Python code: write objective=grpo with objective.reward_funcs by "
            "hand) do not."
        )
    task = f"llm-{trainer}" if task == "llm" else task
    for key in ("base_model", "data"):
        if not spec.get(key):
            raise UserError(f"{source}: {key} is missing; an AutoTrain {task} config needs it.")
    if not (spec["data"] or {}).get("path"):
        raise UserError(f"{source}: data.path is missing: a Hugging Face dataset id or a folder with train.csv.")
    return task


def _check_unmappable(p: dict, spec: dict, task: str, source: str) -> None:
    for key in ("prompt_text_column", "rejected_text_column"):
        if p[key] is not None and TRAINERS[task.removeprefix("llm-")] == "sft":
            raise UserError(
                f"{source}: {key}={p[key]} pairs prompts with rejected answers for DPO/ORPO; task={task} trains on "
                "text_column only. Remove it from data.column_mapping and convert again."
            )
    checks = [
        (p["unsloth"], "params.unsloth=true", "hydratune trains with plain transformers/peft, not unsloth"),
        (p["padding"] not in (None, "right"), f"params.padding={p['padding']}",
         "hydratune pads training batches on the right (only generation padding is configurable)"),
        (not p["add_eos_token"], "params.add_eos_token=false",
         "hydratune always ends each training text with the end-of-sequence token"),
        (isinstance(p["block_size"], list), f"params.block_size={p['block_size']}",
         "hydratune takes one maximum length (train.max_length), not a list"),
        (spec.get("backend") not in BACKENDS, f"backend={spec.get('backend')}",
         "hydratune runs on this machine (hardware=auto, ddp, deepspeed_*) or at OpenAI/Azure, not on Hugging "
         "Face Spaces, Endpoints or DGX Cloud; use backend: local"),
        (p["log"] not in LOGGERS, f"log={p['log']}", "hydratune logs to none, tensorboard or wandb (and jsonl)"),
        (p["distributed_backend"] not in DISTRIBUTED, f"params.distributed_backend={p['distributed_backend']}",
         "hydratune maps ddp and deepspeed"),
        (p["chat_template"] not in CHAT_TEMPLATES, f"chat_template={p['chat_template']}",
         "AutoTrain's chat templates are tokenizer, chatml and zephyr"),
        (p["mixed_precision"] not in (None, "none", "no", "fp16", "bf16"), f"params.mixed_precision={p['mixed_precision']}",
         "AutoTrain's precisions are fp16, bf16 and none"),
        (p["peft"] and p["quantization"] not in (None, "int4", "int8"), f"params.quantization={p['quantization']}",
         "AutoTrain quantizes to int4 or int8"),
        (p["model_ref"] is not None and not p["peft"] and p["model_ref"] != spec.get("base_model"),
         f"params.model_ref={p['model_ref']}", "hydratune's DPO reference model is the base model itself (a frozen "
         "copy, or the model with its adapter off); remove model_ref"),
    ]  # fmt: skip
    for bad, what, why in checks:
        if bad:
            raise UserError(f"{source}: {what} cannot be converted: {why}. Change or remove it and convert again.")


INTS = (
    "block_size",
    "model_max_length",
    "logging_steps",
    "save_total_limit",
    "epochs",
    "batch_size",
    "gradient_accumulation",
    "seed",
    "lora_r",
    "lora_alpha",
)
FLOATS = ("lr", "warmup_ratio", "weight_decay", "max_grad_norm", "lora_dropout")


def _numbers(p: dict, source: str) -> None:
    """Numbers as numbers (YAML reads ``lr: 1e-5`` as a string; AutoTrain's pydantic model converts it)."""
    for keys, kind in ((INTS, int), (FLOATS, float)):
        for key in keys:
            value = p[key]
            if isinstance(value, list) or value is None:
                continue
            try:
                number = kind(float(value)) if kind is int else float(value)
            except (TypeError, ValueError):
                number = None
            if number is None or isinstance(value, bool) or (kind is int and number != float(value)):
                raise UserError(
                    f"{source}: params.{key}={value!r} should be {'an integer' if kind is int else 'a number'}."
                )
            p[key] = number


# ---------------------------------------------------------------- groups


def _model(spec: dict, p: dict, overrides: dict, out: dict, source: str) -> None:
    base = str(spec["base_model"])
    option = _model_option(base)
    overrides["model"] = option or "hf"
    model: dict[str, Any] = {} if option else {"name_or_path": base}
    if p["chat_template"] in ("chatml", "zephyr"):  # names in trainer/config/chat_templates.py's registry
        model["chat_template"] = p["chat_template"]
    if p["use_flash_attention_2"]:
        model["attn_implementation"] = "flash_attention_2"
    if model:
        out["model"] = model


def _model_option(name_or_path: str) -> str | None:
    """The conf/model option for this Hugging Face id, if hydratune ships one (its dtype and template settings)."""
    for file in sorted((resources.files("trainer.conf") / "model").iterdir(), key=lambda f: f.name):
        if file.name.endswith(".yaml"):
            option = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
            if option.get("source", "hf") == "hf" and option.get("name_or_path") == name_or_path:
                return file.name[: -len(".yaml")]
    return None


def _dataset(data: dict, p: dict, overrides: dict, out: dict, notes: list[str], source: str) -> None:
    chat = p["chat_template"] is not None
    overrides["dataset"] = "chat_jsonl" if chat else "text"
    column = str(p["text_column"])
    dataset: dict[str, Any] = {"name": "autotrain"}
    train_split, valid_split = str(data.get("train_split") or "train"), data.get("valid_split")
    path = str(data["path"])
    folder = Path(path).expanduser()
    if folder.is_dir():  # AutoTrain's local layout: DIR/<train_split>.csv or .jsonl
        dataset["path"] = _split_file(folder, train_split, source, "train_split")
        if valid_split:
            dataset["validation_path"] = _split_file(folder, str(valid_split), source, "valid_split")
    else:
        for key, split in (("train_split", train_split), ("valid_split", valid_split)):
            if split and ":" in str(split):
                raise UserError(
                    f"{source}: data.{key}={split} names a dataset configuration ('config:split'), which "
                    "hydratune's dataset.path cannot select. Save that configuration with datasets' save_to_disk "
                    "and point data.path at the folder, or use a dataset without configurations."
                )
        dataset["path"] = path
        if train_split != "train":
            dataset["split"] = train_split
        if valid_split:
            dataset["validation_split"] = str(valid_split)
    default_column = "messages" if chat else "text"
    if column != default_column:
        dataset["columns"] = {default_column: column}
    if not valid_split:
        dataset["validation_size"] = 0
        overrides["eval"] = "none"
        notes.append(
            "No valid_split: AutoTrain trains on every row and evaluates nothing, and so does this run. To hold out "
            "10% and compare the base and fine-tuned models: dataset.validation_size=0.1 eval=default"
        )
    if chat:
        dataset["train_on_all_tokens"] = True
        notes.append(
            "AutoTrain trains on the whole rendered conversation (train_on_all_tokens: true); "
            "dataset.train_on_all_tokens=false trains on the assistant's answers only"
        )
    out["dataset"] = dataset


def _preference_dataset(
    data: dict, p: dict, objective: str, overrides: dict, out: dict, notes: list[str], source: str
) -> None:
    """dataset=preference: AutoTrain's text_column is the chosen answer, rejected_text_column the rejected one,
    prompt_text_column (DPO, ORPO) the prompt; without one, the shared beginning of chosen and rejected is."""
    if p["rejected_text_column"] is None:
        raise UserError(
            f"{source}: llm-{objective} trains on pairs and data.column_mapping.rejected_text_column is missing: "
            "name the column holding the rejected answer (text_column holds the chosen one)."
        )
    sft_overrides: dict[str, str] = {}
    _dataset(data, p, sft_overrides, out, [], source)  # paths, splits, validation: as for llm-sft
    overrides["dataset"] = "preference"
    if "eval" in sft_overrides:
        overrides["eval"] = sft_overrides["eval"]
        notes.append(
            "No valid_split: AutoTrain trains on every row and evaluates nothing, and so does this run. To hold out "
            "10% and compare the base and tuned models on them (pair accuracy): dataset.validation_size=0.1 "
            "eval=default"
        )
    dataset = out["dataset"]
    dataset.pop("columns", None)
    dataset.pop("train_on_all_tokens", None)
    columns = {"chosen": str(p["text_column"]), "rejected": str(p["rejected_text_column"])}
    if objective != "reward" and p["chat_template"] is None:  # plain texts: AutoTrain reads the prompt column
        columns["prompt"] = str(p["prompt_text_column"] or "prompt")
    else:
        notes.append(
            "The prompt is the conversation before the last answer, shared by chosen and rejected (AutoTrain's "
            + ("reward trainer scores whole texts" if objective == "reward" else "chat template takes it from chosen")
            + (
                f"; prompt_text_column={p['prompt_text_column']} is not read, as AutoTrain does not)"
                if p["prompt_text_column"]
                else ")"
            )
        )
    columns = {k: v for k, v in columns.items() if v != k}  # hydratune's defaults: prompt, chosen, rejected
    if columns:
        dataset["columns"] = columns


def _split_file(folder: Path, split: str, source: str, key: str) -> str:
    for suffix in (".csv", ".jsonl"):
        if (folder / f"{split}{suffix}").is_file():
            return str(folder / f"{split}{suffix}")
    raise UserError(
        f"{source}: data.path={folder} is a local folder, so data.{key}={split} names a file in it, but neither "
        f"{folder / (split + '.csv')} nor {folder / (split + '.jsonl')} exists (AutoTrain's local layout)."
    )


def _method(p: dict, overrides: dict, out: dict, notes: list[str], source: str) -> None:
    if not p["peft"]:
        overrides["method"] = "full"
        return
    targets = p["target_modules"]
    if isinstance(targets, str):
        targets = "all-linear" if targets.strip().lower() == "all-linear" else [t.strip() for t in targets.split(",")]
    peft = {"r": p["lora_r"], "lora_alpha": p["lora_alpha"], "lora_dropout": p["lora_dropout"]}
    peft["target_modules"] = targets or None
    method: dict[str, Any] = {"peft": peft, "merge_adapter": bool(p["merge_adapter"])}
    # AutoTrain's BitsAndBytesConfig for int4 / int8 is a method option of its own, picked in the defaults list, so
    # that method=lora on the command line drops the quantization with it.
    overrides["method"] = {"int4": "qlora_fp16", "int8": "lora_int8"}.get(p["quantization"], "lora")
    out["method"] = method


def _train(p: dict, out: dict, notes: list[str], validation: bool, objective: str) -> None:
    block, limit = p["block_size"], p["model_max_length"]
    max_length = min(limit, 1024) if block in (-1, None) else min(block, limit)
    lengths: dict[str, Any] = {"max_length": max_length, "packing": True}
    if objective != "sft":
        lengths = _preference_args(p, objective, max_length, notes)
    train: dict[str, Any] = {
        "num_train_epochs": p["epochs"],
        "per_device_train_batch_size": p["batch_size"],
        "per_device_eval_batch_size": p["batch_size"],
        "gradient_accumulation_steps": p["gradient_accumulation"],
        "learning_rate": p["lr"],
        "lr_scheduler_type": p["scheduler"],
        "warmup_steps": p["warmup_ratio"],  # transformers 5: a float < 1 is a ratio of the training steps
        "optim": p["optimizer"],
        "weight_decay": p["weight_decay"],
        "max_grad_norm": p["max_grad_norm"],
        "activation_checkpointing": not p["disable_gradient_checkpointing"],
        **(lengths if objective == "sft" else {}),
        "save_total_limit": p["save_total_limit"],
    }
    if p["auto_find_batch_size"]:
        train["auto_find_batch_size"] = True
    precision = p["mixed_precision"]
    if precision in ("fp16", "bf16"):
        train.update(fp16=precision == "fp16", bf16=precision == "bf16")
    else:
        train.update(fp16=False, bf16=False)
        notes.append(
            "mixed_precision: none (AutoTrain's default) is fp32 math; train.bf16=true is faster on a recent GPU"
        )
    if validation and p["eval_strategy"] != "no":
        train.update(eval_strategy=p["eval_strategy"], save_strategy=p["eval_strategy"], load_best_model_at_end=True)
    out["train"] = train
    if objective != "sft":
        out["objective"] = {"args": lengths}


def _preference_args(p: dict, objective: str, max_length: int, notes: list[str]) -> dict[str, Any]:
    """objective.args for DPO, ORPO and reward (TRL's names): lengths, DPO's beta; AutoTrain's model_ref."""
    args: dict[str, Any] = {"max_length": max_length}
    if objective == "dpo":
        args["beta"] = float(p["dpo_beta"])
    elif p["dpo_beta"] != DEFAULTS["dpo_beta"]:
        notes.append(f"params.dpo_beta={p['dpo_beta']} is a DPO setting: llm-{objective} ignores it, as AutoTrain does")
    if objective == "orpo" and p["max_completion_length"] is not None:
        args["max_completion_length"] = int(p["max_completion_length"])
    cut = ["max_prompt_length"] + (["max_completion_length"] if objective == "dpo" else [])
    for key in cut if objective != "reward" else []:
        if p[key] is not None:
            notes.append(
                f"params.{key}={p[key]}: TRL's {objective.upper()}Config has no such limit; each pair is cut at "
                f"objective.args.max_length={max_length} (block_size) instead"
            )
    if p["model_ref"] is not None and p["peft"]:
        notes.append(f"params.model_ref={p['model_ref']} is unused with peft, as in AutoTrain (the reference is the "
                     "model with its adapter off)")  # fmt: skip
    return args


def _hardware_and_logger(spec: dict, p: dict, overrides: dict, out: dict, source: str) -> None:
    if DISTRIBUTED[p["distributed_backend"]]:
        overrides["hardware"] = DISTRIBUTED[p["distributed_backend"]]
    if LOGGERS[p["log"]]:
        overrides["logger"] = LOGGERS[p["log"]]
    if p["logging_steps"] not in (-1, None):
        out["logger"] = {"logging_steps": p["logging_steps"]}


def _hub(p: dict, name: str, out: dict, notes: list[str]) -> None:
    if not p["push_to_hub"]:
        return
    username = p["username"]
    if not username:
        raise UserError("hub.push_to_hub=true needs hub.username (the Hugging Face account or organization).")
    out["train"].update(push_to_hub=True, hub_model_id=f"{_env(str(username))}/{name}", hub_private_repo=True)
    variables = re.findall(r"\$\{(\w+)\}", str(username))
    who = (
        f"read from the environment variable {', '.join(variables)} when the run starts"
        if variables
        else "in hub.username"
    )
    notes.append(
        f"The model is pushed to a private Hub repo as the user {who}, with the token in the environment "
        "variable HF_TOKEN (a token is never written to this file)"
    )


def _env(value: str) -> str:
    """AutoTrain's ``${HF_USERNAME}`` -> OmegaConf's ``${oc.env:HF_USERNAME}``."""
    return re.sub(r"\$\{(\w+)\}", r"${oc.env:\1}", value)


# ---------------------------------------------------------------- output


def _render(source: str, task: str, overrides: dict, out: dict, notes: list[str]) -> str:
    defaults = [{f"override /{group}": option} for group, option in overrides.items()] + ["_self_"]
    header = [
        "# @package _global_",
        *textwrap.wrap(
            f"Converted from {source} (AutoTrain {task}) by `hydratune convert-autotrain`; AutoTrain's defaults "
            "are filled in for every parameter the file leaves out.",
            116,
            initial_indent="# ",
            subsequent_indent="# ",
        ),
        *(
            line
            for note in notes
            for line in textwrap.wrap(note + ".", 116, initial_indent="# - ", subsequent_indent="#   ")
        ),
    ]
    body = yaml.dump(
        {"defaults": defaults, **out}, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=116
    )
    return "\n".join(header) + "\n" + body


class _Dumper(yaml.SafeDumper):
    """Block lists indented under their key, as hydratune's own config files are written."""

    def increase_indent(self, flow: bool = False, indentless: bool = False):  # noqa: ARG002 - PyYAML's signature
        return super().increase_indent(flow, False)


def main(argv: list[str]) -> None:
    from trainer.tools import overlay

    description = "Convert an AutoTrain Advanced YAML config into a hydratune experiment file."
    overlay.command(argv, "hydratune convert-autotrain", description, convert)
