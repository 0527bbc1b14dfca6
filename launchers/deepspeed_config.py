"""The DeepSpeed JSON for a run: generated from ``hardware`` (ZeRO stage, offload), or the user's own file as is.

Sizes the Hugging Face integration knows better than we do (batch sizes, accumulation, clipping, bf16/fp16,
bucket sizes from the model's hidden size, the optimizer's hyperparameters) are left as "auto"; the Trainer
fills them from ``train.*`` when it starts, so the JSON never disagrees with the training arguments.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.config.errors import UserError

if TYPE_CHECKING:  # imported by bench/gpu_check.py on machines without omegaconf
    from omegaconf import DictConfig


def build(hardware: DictConfig) -> dict | None:
    """The DeepSpeed config as a dict, or None when the strategy does not use DeepSpeed."""
    if hardware.deepspeed_config:
        return load_user_config(hardware.deepspeed_config)
    if hardware.zero_stage == 0:
        return None
    if hardware.zero_stage not in (1, 2, 3):
        raise UserError(f"hardware.zero_stage={hardware.zero_stage} is not a ZeRO stage. Allowed: 0 (DDP), 1, 2, 3.")
    if hardware.offload and hardware.zero_stage != 3:
        raise UserError(
            f"hardware.offload=true offloads parameters, which needs ZeRO-3, and hardware.zero_stage="
            f"{hardware.zero_stage}. Use hardware=deepspeed_zero3_offload."
        )
    zero: dict = {
        "stage": hardware.zero_stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if hardware.zero_stage == 3:
        zero.update(
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            # save_model() then writes ordinary (16-bit) weights/adapters instead of only ZeRO shards.
            stage3_gather_16bit_weights_on_model_save=True,
        )
    config: dict = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
    }
    if hardware.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
        # ZeRO-Offload steps the optimizer on the CPU: DeepSpeed's own (compiled) CPU Adam, hyperparameters from train.*
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    return config


def load_user_config(path: str) -> dict:
    file = Path(path).expanduser()
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise UserError(f"hardware.deepspeed_config={path}: no such file ({file.resolve()}).") from None
    except json.JSONDecodeError as exc:
        raise UserError(
            f"hardware.deepspeed_config={path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})."
        ) from None


def write(config: dict, run_dir: Path) -> Path:
    from trainer.run import atomic

    path = run_dir / "deepspeed.json"
    atomic.write_json(path, config)
    return path
