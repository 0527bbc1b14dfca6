"""Compose-time rules of the method group and the tokens a run adds (no torch): freeze tuning trains something and
nothing quantized, ``method.init_adapter`` names an adapter folder whose rank, alpha and kind (LoRA, DoRA) are
this config's. What needs the model's config (its layer count, its module names, so the target modules too, and
the resolved base model) is checked before the weights load, by trainer.engine.before_weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from trainer.config.errors import UserError
from trainer.config.plain import plain_dict

ADAPTER_CONFIG = "adapter_config.json"
#: method.peft keys an adapter fixes when it is saved: continuing it with other values would train another adapter.
FIXED_BY_ADAPTER = ("r", "lora_alpha", "use_dora")


def check(cfg: DictConfig) -> None:
    """Raise the UserError of the first rule above this config breaks."""
    method = cfg.method
    empty = [repr(t) for t in cfg.model.add_special_tokens if not str(t).strip()]
    if empty:
        raise UserError(f"model.add_special_tokens holds an empty token ({', '.join(empty)}): give each token's text.")
    if method.name == "freeze":
        _freeze(method)
    if method.init_adapter is not None:
        adapter = read_adapter(method)
        differences = adapter_differences(adapter, plain_dict(method.peft))
        if differences:
            raise refused(method, differences)


def _freeze(method: DictConfig) -> None:
    freeze = method.freeze
    if freeze.trainable_layers == 0 and not freeze.trainable_modules:
        raise UserError(
            "method=freeze trains nothing: method.freeze.trainable_layers=0 and method.freeze.trainable_modules=[]. "
            "Set trainable_layers=N (the last N decoder layers; -N the first N) or "
            "trainable_modules=[lm_head, ...], or use method=full to train every weight."
        )
    if method.quantization is not None:
        raise UserError(
            "method=freeze trains whole layers, which quantized (bitsandbytes) weights cannot be: set "
            "method.quantization=null, or use method=qlora to train an adapter on quantized weights."
        )


def read_adapter(method: DictConfig) -> dict[str, Any]:
    """method.init_adapter's adapter_config.json (a UserError when the method has no adapter or the folder is none)."""
    path = Path(str(method.init_adapter)).expanduser()
    if method.peft is None:
        raise UserError(
            f"method.init_adapter={path} continues training a LoRA adapter, but method={method.name} trains no adapter. "
            "Use method=lora (or dora, qlora) with it, or drop method.init_adapter."
        )
    file = path / ADAPTER_CONFIG
    if not file.is_file():
        found = "is not a folder" if not path.is_dir() else f"has no {ADAPTER_CONFIG}"
        raise UserError(
            f"method.init_adapter={path} {found}: give the folder an adapter was saved in (an earlier run's "
            f"<run dir>/model, holding {ADAPTER_CONFIG} and adapter_model.safetensors)."
        )
    try:
        adapter = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"method.init_adapter={path}: {file} cannot be read as JSON ({exc}).") from None
    if adapter.get("peft_type") != "LORA":
        raise UserError(
            f"method.init_adapter={path} is a {adapter.get('peft_type')} adapter ({file}); method={method.name} "
            "continues LoRA (and DoRA) adapters only."
        )
    return adapter


def adapter_differences(adapter: dict[str, Any], peft: dict[str, Any]) -> list[str]:
    """What the saved adapter config fixes differently from method.peft, as ``key: adapter X, config Y``."""
    out = []
    for key in FIXED_BY_ADAPTER:
        saved, configured = adapter.get(key), peft.get(key, False if key == "use_dora" else None)
        if key == "use_dora":
            saved, configured = bool(saved), bool(configured)
        if configured is not None and saved != configured:
            out.append(f"method.peft.{key}: the adapter's {saved}, the config's {configured}")
    return out


def refused(method: DictConfig, differences: list[str]) -> UserError:
    return UserError(
        f"method.init_adapter={method.init_adapter} does not fit this config: {'; '.join(differences)}. Training "
        "would go on with the adapter's own settings, not the config's. Set the config's values to the adapter's "
        "(or start a fresh adapter without method.init_adapter)."
    )
