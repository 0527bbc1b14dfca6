"""The argument names and types of the library classes that config nodes pass through to.

``train`` and ``objective.args`` go to the objective's TRL config class (``objective.config``: trl.SFTConfig,
trl.DPOConfig ...), ``method.peft`` to peft.LoraConfig and ``method.quantization`` to
transformers.BitsAndBytesConfig. Importing those libraries costs seconds (they import torch), so their
signatures are recorded in library_args.json, generated from the installed libraries with

    python -m trainer.config.library_args

and a test checks the recorded file against the installed versions. :func:`check_args` uses it to reject a
misspelt or mistyped argument before any model loads, naming the closest real argument.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from functools import cache
from importlib import resources
from typing import Any

from trainer.config.errors import UserError, closest

NODES = {
    "train": "trl.SFTConfig",  # the default objective's; check_args takes the configured objective's class
    "method.peft": "peft.LoraConfig",
    "method.quantization": "transformers.BitsAndBytesConfig",
}
#: The config classes of the objective options (conf/objective/*.yaml, ``objective.config``).
OBJECTIVE_CONFIGS = (
    "trl.SFTConfig",
    "trl.DPOConfig",
    "trl.KTOConfig",
    "trl.experimental.orpo.ORPOConfig",
    "trl.GRPOConfig",
    "trl.RewardConfig",
    "trl.DistillationConfig",
)
TARGETS = (*OBJECTIVE_CONFIGS, *NODES.values())
#: List arguments whose class takes a single value too and wraps it in a list itself (its ``__post_init__``):
#: ``objective.args.loss_type=sigmoid``, as TRL's own docs write it.
ONE_OR_LIST = {("trl.DPOConfig", "loss_type")}
_FILE = "library_args.json"


def _kinds(annotation: Any) -> list[str]:
    """The JSON-ish kinds an annotation admits: bool, int, float, str, list, dict, null or any."""
    if isinstance(annotation, str):
        return ["any"]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return sorted({k for arg in typing.get_args(annotation) for k in _kinds(arg)})
    if origin is typing.Literal:
        return sorted({type(v).__name__ if v is not None else "null" for v in typing.get_args(annotation)})
    if annotation is type(None):
        return ["null"]
    base = origin or annotation
    for kind, types_ in (("bool", (bool,)), ("int", (int,)), ("float", (float,)), ("str", (str,))):
        if base in types_:
            return [kind]
    if base in (list, tuple, set) or (isinstance(base, type) and issubclass(base, list | tuple)):
        return ["list"]
    if base is dict or (isinstance(base, type) and issubclass(base, dict)):
        return ["dict"]
    if isinstance(base, type) and issubclass(base, str):  # str enums (IntervalStrategy, SchedulerType ...)
        return ["str"]
    return ["any"]


def describe(target: str) -> dict[str, list[str]]:
    """Argument name -> admitted kinds, read from the installed library."""
    module, _, name = target.rpartition(".")
    cls = getattr(__import__(module, fromlist=[name]), name)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - a forward reference the library never imports: fall back to "any"
        hints = {}
    params = inspect.signature(cls.__init__).parameters
    return {
        p: _kinds(hints.get(p, Any))
        for p, v in params.items()
        if p != "self" and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)
    }


@cache
def recorded() -> dict[str, dict[str, list[str]]]:
    return json.loads((resources.files("trainer") / _FILE).read_text())


def unknown_key_message(node: str, key: str, target: str | None = None) -> str:
    target = target or NODES[node]
    return (
        f"'{node}.{key}' is not an argument of {target}.{closest(key, recorded()[target])} "
        f"'{node}' passes its keys to {target} unchanged, so they must be that class's own argument names "
        f"(any of its arguments can be set, e.g. `{node}.NAME=VALUE`)."
    )


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    for kind, type_ in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if isinstance(value, type_):
            return kind
    return "list" if isinstance(value, list | tuple) else "dict" if isinstance(value, dict) else "any"


def check_args(node: str, values: dict[str, Any], target: str | None = None) -> None:
    """Raise UserError for the first argument that the library class (the node's own, or ``target``) does not take
    or cannot accept."""
    target = target or NODES[node]
    known = recorded()[target]
    for key, value in values.items():
        if key == "_target_":
            continue
        if key not in known:
            raise UserError(unknown_key_message(node, key, target))
        allowed, given = known[key], _kind_of(value)
        ok = "any" in allowed or given in allowed or (given == "int" and "float" in allowed)
        ok = ok or (given == "str" and (target, key) in ONE_OR_LIST)
        if not ok:
            raise UserError(
                f"{node}.{key}={value!r} has the wrong type for {target}: it takes {' or '.join(allowed)}, "
                f"not {given}. Fix the value in your YAML file or override."
            )


def main() -> None:
    data = {target: describe(target) for target in TARGETS}
    path = resources.files("trainer") / _FILE
    with resources.as_file(path) as file:
        file.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {file}: " + ", ".join(f"{t} ({len(a)} args)" for t, a in data.items()))


if __name__ == "__main__":
    main()
