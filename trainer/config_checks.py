"""Checks on a composed config that a dataclass cannot express: choices, pass-through library arguments and
impossible combinations. Runs before anything heavy is imported; every failure is one UserError paragraph."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from trainer import objectives
from trainer.errors import UserError, choice_error
from trainer.library_args import check_args

CHOICES = {
    "model.source": {"hf", "gguf_wheel", "tiny_random", "provider"},
    "model.dtype": {"auto", "float32", "bfloat16", "float16"},
    "model.generation_padding_side": {"left", "right"},
    "dataset.format": {
        "chat",
        "alpaca",
        "sharegpt",
        "prompt_completion",
        "text",
        "template",
        "preference",
        "unpaired",
        "prompt",
    },
    "dataset.on_error": {"fail", "skip"},
    "method.name": {"full", "lora", "dora", "qlora"},
    "hardware.kind": {"local", "distributed", "cloud"},
    "hardware.device": {"auto", "cpu", "cuda"},
    "logger.name": {"none", "jsonl", "tensorboard", "wandb"},
    "logger.mode": {"online", "offline", "disabled"},
}


def check_config(cfg: DictConfig) -> None:
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise choice_error(key, value, allowed)
    objectives.check(cfg)  # the dataset shape, train and objective.args against the objective's TRL config class
    for node in ("peft", "quantization"):
        value = cfg.method[node]
        if value is not None:
            check_args(f"method.{node}", OmegaConf.to_container(value, resolve=True))
    _check_combinations(cfg)


def _check_combinations(cfg: DictConfig) -> None:
    hw, method = cfg.hardware, cfg.method
    if hw.kind != "cloud" and cfg.model.source == "provider":
        raise UserError(
            f"model.name_or_path={cfg.model.name_or_path} is a provider model: it only trains through its provider's "
            f"API, but hardware={hw.name} trains locally. Use hardware=openai or hardware=azure_openai, or pick a "
            "local model (model=smollm2_135m, model=hf model.name_or_path=...)."
        )
    if method.quantization is not None and hw.kind != "cloud" and hw.device == "cpu":
        raise UserError(
            f"method={method.name} quantizes the base model to 4 bits with bitsandbytes, which needs a CUDA GPU, "
            f"but hardware={hw.name} runs on the CPU. Use method=lora on the CPU, or hardware=single_gpu "
            "(or auto) on a machine with an NVIDIA GPU."
        )
    if method.peft is None and method.merge_adapter:
        raise UserError("method.merge_adapter=true needs an adapter method (lora, dora, qlora); method=full has none.")
