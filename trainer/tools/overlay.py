"""The experiment overlay a converted peer config becomes (trainer/tools/importer.py and the converters): its
header maps each source key to its hydratune key and lists every key it could not map with the reason; reading the
source and writing the result never overwrites a file without --force."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from trainer.config.errors import UserError

#: The TRL config class of each hydratune objective (conf/objective/*.yaml's ``config``).
CONFIG_CLASSES = {
    "sft": "trl.SFTConfig",
    "dpo": "trl.DPOConfig",
    "kto": "trl.KTOConfig",
    "orpo": "trl.experimental.orpo.ORPOConfig",
    "grpo": "trl.GRPOConfig",
    "reward": "trl.RewardConfig",
}


class Overlay:
    """An experiment overlay being built from a peer's config: group choices, values, and the book of each source
    key (mapped to which hydratune key, or why not). ``refuse`` marks a key that makes the run train differently
    from its source; :meth:`render` then refuses the whole file, listing each such key with its reason."""

    def __init__(self, source: str, peer: str) -> None:
        self.source, self.peer = source, peer
        self.groups: dict[str, str] = {}
        self.values: dict[str, Any] = {}
        self.mapped: list[tuple[str, str]] = []
        self.unmapped: list[tuple[str, str]] = []
        self.refused: list[tuple[str, str]] = []
        self.config_class = "trl.SFTConfig"  #: the objective's TRL config class, which takes the train.* keys

    def objective(self, source_key: str, objective: str) -> None:
        self.group(source_key, "objective", objective)
        self.config_class = CONFIG_CLASSES[objective]

    def set(self, source_key: str, key: str, value: Any) -> None:
        from trainer.config.library_args import recorded

        if key.startswith("train.") and key.split(".", 1)[1] not in recorded()[self.config_class]:
            self.skip(source_key, f"{key} is not an argument of {self.config_class}, which this objective trains with")
            return
        node = self.values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        self.mapped.append((source_key, key))

    def group(self, source_key: str, group: str, option: str) -> None:
        self.groups[group] = option
        self.mapped.append((source_key, f"{group}={option}"))

    def skip(self, source_key: str, reason: str) -> None:
        self.unmapped.append((source_key, reason))

    def refuse(self, source_key: str, reason: str) -> None:
        self.refused.append((source_key, reason))

    def library(self, source_key: str, key: str, value: Any) -> bool:
        """``train.KEY`` when KEY is an argument of the objective's TRL config (transformers' TrainingArguments
        included)."""
        from trainer.config.library_args import recorded

        if key in recorded()[self.config_class]:
            self.set(source_key, f"train.{key}", value)
            return True
        return False

    def render(self) -> str:
        if self.refused:
            reasons = "; ".join(f"{key}: {why}" for key, why in self.refused)
            raise UserError(
                f"{self.source} ({self.peer}) cannot be imported: {reasons}. Remove or change those keys and import "
                "again; nothing was written."
            )
        width = max((len(k) for k, _ in self.mapped + self.unmapped), default=0)
        header = [
            "# @package _global_",
            f"# Imported from {self.source} ({self.peer}) by `hydratune import`.",
            "# Source key -> hydratune key:",
            *(f"#   {key.ljust(width)} -> {dst}" for key, dst in self.mapped),
        ]
        if self.unmapped:
            header.append("# Not mapped (the reason):")
            header += [
                line
                for key, why in self.unmapped
                for line in textwrap.wrap(
                    f"{key.ljust(width)}  {why}", 112, initial_indent="#   ", subsequent_indent="#     "
                )
            ]
        defaults = [{f"override /{group}": option} for group, option in self.groups.items()] + ["_self_"]
        body = yaml.safe_dump(
            {"defaults": defaults, **self.values}, sort_keys=False, default_flow_style=False, width=116
        )
        return "\n".join(header) + "\n" + body


def blank(value: Any) -> bool:
    """A key written with no value (``wandb_project:``), or null: the peer's default, nothing to map."""
    return value is None or value == "" or value == []


def targets(value: Any) -> Any:
    """LoRA target modules: ``all`` / a comma list / a list -> peft's ``all-linear`` or a list."""
    if isinstance(value, str):
        parts = [t.strip() for t in value.split(",") if t.strip()]
        return "all-linear" if parts in (["all"], ["all-linear"]) else parts
    return list(value)


def read(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}.") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}.") from None


def write(text: str, out: Path, force: bool) -> None:
    """Write the experiment and say how to run it (nothing the user has is overwritten without --force)."""
    if out.exists() and not force:
        raise UserError(f"{out} already exists. Pick another --out, or add --force to overwrite it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    conf = out.resolve().parent.parent
    run = f"hydratune experiment={out.stem}"
    if conf != Path(str(resources.files("trainer.conf"))).resolve():
        run += f" 'hydra.searchpath=[file://{conf}]'"
    hint = "" if out.parent.name == "experiment" else " (Hydra finds experiments in a folder named experiment/)"
    sys.stdout.write(f"wrote {out}{hint}\nrun it with: {run}\n")


def command(argv: list[str], prog: str, description: str, convert: Callable[[Any, str], str]) -> None:
    """A converter's command line: read CONFIG.yaml, convert it, write the experiment overlay (--out, --force)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("path", help="the config to convert (YAML)")
    parser.add_argument("--out", help="the experiment file to write (default: conf/experiment/<name>.yaml)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = parser.parse_args(argv)
    path = Path(args.path)
    spec = read(path)
    text = convert(spec, str(path))
    name = str((spec.get("project_name") if isinstance(spec, dict) else None) or path.stem)
    write(text, Path(args.out) if args.out else Path("conf") / "experiment" / f"{name}.yaml", args.force)
