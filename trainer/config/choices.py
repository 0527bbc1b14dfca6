"""Every closed choice of the config, declared once as an Enum: Hydra refuses any other value when it composes, and
the one check pass names the allowed ones. Choices whose values are registered by code (dataset formats, serve
engines, providers, submitters) live in their registries instead."""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A closed choice, declared once: Hydra refuses any other value when it composes (the CLI names the allowed
    ones), and a member compares, hashes, prints and serialises as its plain string value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    def __hash__(self) -> int:
        return hash(str(self.value))


class ModelSource(Choice):
    hf = "hf"
    gguf_wheel = "gguf_wheel"
    tiny_random = "tiny_random"
    provider = "provider"


class Dtype(Choice):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class PaddingSide(Choice):
    left = "left"
    right = "right"


class OnError(Choice):
    fail = "fail"
    skip = "skip"


class Reasoning(Choice):
    train = "train"
    mask = "mask"
    drop = "drop"


class MethodName(Choice):
    full = "full"
    freeze = "freeze"
    lora = "lora"
    dora = "dora"
    qlora = "qlora"
    lora_int8 = "lora_int8"


class Device(Choice):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Launcher(Choice):
    torchrun = "torchrun"
    deepspeed = "deepspeed"
    accelerate = "accelerate"


class OnInterrupt(Choice):
    detach = "detach"
    cancel = "cancel"


class LoggerName(Choice):
    none = "none"
    jsonl = "jsonl"
    tensorboard = "tensorboard"
    wandb = "wandb"
    mlflow = "mlflow"


class LoggerMode(Choice):
    online = "online"
    offline = "offline"
    disabled = "disabled"


class DataShape(Choice):
    """objective.data: the rows an objective trains on (each dataset format declares which it provides)."""

    supervised = "supervised"
    preference = "preference"
    unpaired = "unpaired"
    prompts = "prompts"


class Head(Choice):
    """objective.head: a generating model, or a reward model's one score."""

    causal_lm = "causal_lm"
    sequence_classification = "sequence_classification"


class Download(Choice):
    """How a provider's LoRA job is downloaded: peft's adapter files, or the merged full model."""

    adapter = "adapter"
    merged = "merged"


class RecordSplit(Choice):
    all = "all"
    train = "train"
    validation = "validation"


class Direction(Enum):
    """optimize.direction (a plain Enum, as the Optuna sweeper's own)."""

    minimize = "minimize"
    maximize = "maximize"
