"""FSDP2 settings for a run (``hardware=fsdp``): the Trainer's own ``fsdp`` / ``fsdp_config`` arguments, generated.

The wrap policy comes from the model: every decoder-layer class that the model's class lists in
``_no_split_modules`` (``LlamaDecoderLayer``, ``Qwen2DecoderLayer`` ...) becomes one FSDP unit, so nobody types a
class name. Checkpoints are sharded (each rank writes its own shard: fast, and they resume on the same number of
processes); the final model is gathered once into an ordinary ``save_pretrained`` folder on rank 0 (the engine
switches the state-dict type to FULL_STATE_DICT for that one save).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainer.config.errors import UserError

if TYPE_CHECKING:
    from omegaconf import DictConfig


def layer_classes(model_cfg: DictConfig, cache_dir: str) -> list[str]:
    """The transformer layer classes to wrap, from the ``_no_split_modules`` of the class AutoModelForCausalLM
    would load for this model."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from trainer import models

    path = models.resolve_path(model_cfg, cache_dir)
    config = AutoConfig.from_pretrained(
        path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
    )
    if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING:
        classes: list[Any] = [MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]]
    else:  # remote code: the classes its config names
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        auto_map = getattr(config, "auto_map", {}) or {}
        classes = [get_class_from_dynamic_module(auto_map["AutoModelForCausalLM"], path)] if auto_map else []
    names = sorted({name for cls in classes for name in (getattr(cls, "_no_split_modules", None) or [])})
    if not names:
        raise UserError(
            f"hardware=fsdp: the model class of {model_cfg.name_or_path} ({', '.join(c.__name__ for c in classes) or 'unknown'}) "
            "declares no `_no_split_modules`, so there is no transformer layer class to shard by. Use hardware=ddp or "
            "a DeepSpeed ZeRO strategy for this model."
        )
    return names


def build(hw: DictConfig, layers: list[str]) -> dict:
    """The TrainingArguments fields that turn FSDP2 on, for ``train.*``."""
    return {
        "fsdp": True,
        "fsdp_config": {
            "version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": layers,
            "reshard_after_forward": hw.fsdp.reshard_after_forward,
            "activation_checkpointing": hw.fsdp.activation_checkpointing,
            "cpu_offload": hw.fsdp.cpu_offload,
            "state_dict_type": "SHARDED_STATE_DICT",
            "cpu_ram_efficient_loading": False,
        },
    }


def check(cfg: DictConfig) -> None:
    hw, method = cfg.hardware, cfg.method
    if hw.zero_stage or hw.deepspeed_config or hw.launcher == "deepspeed":
        raise UserError(
            "hardware.fsdp shards with PyTorch FSDP2, hardware.zero_stage / deepspeed_config / launcher=deepspeed with "
            "DeepSpeed: pick one. hardware=fsdp (torchrun or accelerate) or hardware=deepspeed_zero3."
        )
    if method.merge_adapter:
        raise UserError(
            "method.merge_adapter=true cannot merge under FSDP (each rank holds only a shard of the base weights). "
            "Train with merge_adapter=false, then merge the saved adapter in one process: "
            "peft.AutoPeftModelForCausalLM.from_pretrained('<run dir>/model').merge_and_unload().save_pretrained(...)."
        )
    if method.quantization is not None:
        raise UserError(
            f"method={method.name} (bitsandbytes-quantized base weights) is not supported with hardware=fsdp here. "
            "Use method=lora with hardware=fsdp, or method=qlora with hardware=ddp."
        )
    if cfg.train.get("activation_checkpointing") and hw.fsdp.activation_checkpointing:
        raise UserError(
            "train.activation_checkpointing=true and hardware.fsdp.activation_checkpointing=true: the Trainer refuses "
            "both. Under FSDP use hardware.fsdp.activation_checkpointing (FSDP's own) and train.activation_checkpointing=false."
        )


def check_device(device: str) -> None:
    """Where the workers start here (not a dry run, not a SLURM submission from a login node)."""
    if device != "cuda":
        raise UserError(
            f"hardware=fsdp on the {device}: accelerate (the Trainer's engine) turns FSDP on only for GPU-class "
            "devices (CUDA, NPU, XPU, ...); with CPU processes it would silently train plain data parallel, unsharded. "
            "Run hardware=fsdp on GPUs; here use hardware=ddp or hardware=deepspeed_zero3 (which shard on the CPU too), "
            "or hardware.dry_run=true to see the FSDP settings and the launch command."
        )
