"""Config nodes into plain Python at the boundary with the libraries: every object built from config gets dicts,
lists and scalars, never OmegaConf containers (a ListConfig reaching peft's LoraConfig broke save_pretrained's
JSON after a whole run had trained)."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def plain(node: Any) -> Any:
    """``node`` resolved into plain dicts and lists (Enums as their names); anything else unchanged."""
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    return node


def plain_dict(node: Any) -> dict[str, Any]:
    """A mapping node as a plain ``dict`` with string keys (TypeError for anything else)."""
    value = plain(node)
    if not isinstance(value, dict):
        raise TypeError(f"expected a mapping, got {type(value).__name__}")
    return {str(key): item for key, item in value.items()}


def build(node: Any, **kwargs: Any) -> Any:
    """The object a ``_target_`` node names, built with plain containers as its arguments."""
    from hydra.utils import instantiate

    return instantiate(plain(node), _convert_="all", **kwargs)
