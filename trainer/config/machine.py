"""Rules about this machine, in the one check pass: the optimizer, the mixed-precision flag and the attention kernel a
local run asks for must be available here, or the run stops before any model loads with one paragraph naming the
missing package or the CPU. Packages are looked up (importlib.util.find_spec), never imported: ``--cfg job`` stays
fast; a GPU is seen through its device files (torch is not imported here either)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from trainer.config.errors import UserError

#: transformers' ``optim`` names (its OptimizerNames) that need a package of their own: (prefix or name, package on
#: PyPI, the module it installs). The first match wins.
OPTIMIZER_PACKAGES: tuple[tuple[str, str, str], ...] = (
    ("galore_", "galore-torch", "galore_torch"),
    ("apollo_", "apollo-torch", "apollo_torch"),
    ("schedule_free_", "schedulefree", "schedulefree"),
    ("paged_", "bitsandbytes", "bitsandbytes"),
    ("rmsprop_bnb", "bitsandbytes", "bitsandbytes"),
    ("adamw_bnb_8bit", "bitsandbytes", "bitsandbytes"),
    ("adamw_8bit", "bitsandbytes", "bitsandbytes"),
    ("ademamix", "bitsandbytes", "bitsandbytes"),
    ("lion_", "bitsandbytes", "bitsandbytes"),
    ("adamw_torch_4bit", "torchao", "torchao"),
    ("adamw_torch_8bit", "torchao", "torchao"),
    ("adamw_anyprecision", "torchdistx", "torchdistx"),
    ("lomo", "lomo-optim", "lomo_optim"),
    ("adalomo", "lomo-optim", "lomo_optim"),
    ("grokadamw", "grokadamw", "grokadamw"),
    ("stable_adamw", "torch-optimi", "optimi"),
    ("adamw_torch_xla", "torch_xla", "torch_xla"),
    ("adamw_torch_npu_fused", "torch_npu", "torch_npu"),
)
#: model.attn_implementation values and the package each needs (None: torch's own); a ``org/repo`` hub kernel needs
#: the ``kernels`` package.
ATTENTION = {
    "eager": None,
    "sdpa": None,
    "flex_attention": None,
    "flash_attention_2": ("flash-attn", "flash_attn"),
    "flash_attention_3": (
        "flash-attn 3 (flash_attn_interface, built from flash-attention/hopper)",
        "flash_attn_interface",
    ),
}
CUDA_ONLY_ATTENTION = ("flash_attention_2", "flash_attention_3")


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def runs_on_cpu(cfg: DictConfig) -> bool:
    """A run that will run on the CPU: hardware.device=cpu, or auto on a Linux machine with no GPU device."""
    device = OmegaConf.select(cfg, "hardware.device")
    if device == "cpu":
        return True
    if device != "auto" or not sys.platform.startswith("linux"):
        return False
    dev = Path("/dev")
    return not (any(dev.glob("nvidia[0-9]*")) or (dev / "kfd").exists())


def _where(cfg: DictConfig) -> str:
    if cfg.hardware.device == "auto":
        return f"hardware={cfg.hardware.name} finds no GPU on this machine, so the run"
    return f"hardware={cfg.hardware.name}"


def optimizer(cfg: DictConfig) -> None:
    optim = OmegaConf.select(cfg, "train.optim")
    if not isinstance(optim, str):
        return
    for prefix, package, module in OPTIMIZER_PACKAGES:
        if optim.startswith(prefix):
            if not installed(module):
                raise UserError(
                    f"train.optim={optim} needs the {package} package, which is not installed here. Install it "
                    f"(pip install {package.split(' ')[0]}), or pick an optimizer torch ships: train.optim=adamw_torch."
                )
            if module == "bitsandbytes" and optim.startswith("paged_") and runs_on_cpu(cfg):
                raise UserError(
                    f"train.optim={optim} pages optimizer state through CUDA memory, but {_where(cfg)} runs on the "
                    "CPU. Use train.optim=adamw_torch on the CPU, or run on a machine with an NVIDIA GPU."
                )
            return


def mixed_precision(cfg: DictConfig) -> None:
    if OmegaConf.select(cfg, "train.fp16") and OmegaConf.select(cfg, "train.bf16"):
        raise UserError("train.fp16=true and train.bf16=true: pick one mixed-precision mode (set the other to false).")
    if OmegaConf.select(cfg, "train.fp16") and runs_on_cpu(cfg):
        raise UserError(
            f"train.fp16=true asks for float16 mixed precision, which needs a GPU, but {_where(cfg)} runs on the CPU. "
            "Set train.fp16=false (float32 on the CPU), or train.bf16=true where the CPU supports bfloat16, or run "
            "on a GPU."
        )


def attention(cfg: DictConfig) -> None:
    value = OmegaConf.select(cfg, "model.attn_implementation")
    if value is None:
        return
    if "/" in str(value):  # a kernel from the Hub (kernels-community/flash-attn ...)
        if installed("kernels"):
            return
        raise UserError(
            f"model.attn_implementation={value} is an attention kernel from the Hub, loaded by the kernels package, "
            "which is not installed here (pip install kernels). Or use model.attn_implementation=sdpa."
        )
    if value not in ATTENTION:
        raise UserError(
            f"model.attn_implementation={value} is not an attention implementation transformers knows. "
            f"Choose one of: {', '.join(ATTENTION)}, an org/repo kernel from the Hub, or null (the library default)."
        )
    need = ATTENTION[value]
    if value in CUDA_ONLY_ATTENTION and runs_on_cpu(cfg):
        raise UserError(
            f"model.attn_implementation={value} runs on CUDA GPUs only, but {_where(cfg)} runs on the CPU. Use "
            "model.attn_implementation=sdpa (or null) on the CPU."
        )
    if need is not None and not installed(need[1]):
        raise UserError(
            f"model.attn_implementation={value} needs the {need[0]} package, which is not installed here. Install "
            "it, or use model.attn_implementation=sdpa."
        )


#: The rules of this module, each run by trainer.config.checks for a local run (every broken one is reported).
RULES = (optimizer, mixed_precision, attention)
