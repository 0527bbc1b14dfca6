"""``hydratune import CONFIG.yaml [--out FILE] [--force]``: a LLaMA-Factory, Axolotl or AutoTrain Advanced config
as a hydratune experiment overlay; ``hydratune import data/dataset_info.json [--out conf/dataset]``: LLaMA-Factory's
dataset registry as conf/dataset options (trainer/tools/dataset_info.py). The format is detected from the file's keys; each peer has its converter module
(trainer/tools/llamafactory.py, axolotl.py, autotrain.py). The written file starts with a header mapping each source
key to its hydratune key and listing every key that has no equivalent, with the reason; a config that cannot train
the way its source would (a multimodal model, a PPO stage ...) is refused key by key, never with a traceback."""

from __future__ import annotations

from typing import Any

from trainer.config.errors import UserError
from trainer.tools import overlay

#: Keys that name each format (any one is enough), checked in this order.
SIGNATURES = {
    "autotrain": ("task", "project_name", "params"),
    "llamafactory": ("model_name_or_path", "stage", "finetuning_type", "template", "cutoff_len"),
    "axolotl": ("base_model", "datasets", "adapter", "micro_batch_size", "sequence_len", "num_epochs"),
}


def detect(spec: Any, source: str) -> str:
    """autotrain, llamafactory or axolotl, from the keys of the YAML mapping ``spec``."""
    if not isinstance(spec, dict):
        raise UserError(f"{source}: a config to import is a YAML mapping of keys to values.")
    scores = {name: sum(key in spec for key in keys) for name, keys in SIGNATURES.items()}
    if "task" in spec and "params" in spec:
        return "autotrain"
    best = max(scores, key=lambda name: scores[name])
    if scores[best] == 0:
        raise UserError(
            f"{source} is not a LLaMA-Factory, Axolotl or AutoTrain config: it has none of their keys "
            f"(LLaMA-Factory: {', '.join(SIGNATURES['llamafactory'])}; Axolotl: {', '.join(SIGNATURES['axolotl'])}; "
            f"AutoTrain: {', '.join(SIGNATURES['autotrain'])})."
        )
    return best


def convert(spec: Any, source: str) -> tuple[str, str]:
    """(format, the experiment file's text) for the config ``spec`` read from ``source``."""
    kind = detect(spec, source)
    if kind == "autotrain":
        from trainer.tools import autotrain

        return kind, autotrain.convert(spec, source)
    if kind == "llamafactory":
        from trainer.tools import llamafactory

        return kind, llamafactory.convert(spec, source)
    from trainer.tools import axolotl

    return kind, axolotl.convert(spec, source)


def main(argv: list[str]) -> None:
    args = [a for a in argv if not a.startswith("-")]
    if args and args[0].endswith(".json"):  # LLaMA-Factory's dataset registry: conf/dataset options
        return _registry(argv)
    description = "Convert a LLaMA-Factory, Axolotl or AutoTrain Advanced YAML config into a hydratune experiment."
    overlay.command(argv, "hydratune import", description, lambda spec, source: convert(spec, source)[1])


def _registry(argv: list[str]) -> None:
    import argparse
    from pathlib import Path

    from trainer.tools import dataset_info

    parser = argparse.ArgumentParser(
        prog="hydratune import", description="Convert LLaMA-Factory's dataset_info.json into conf/dataset options."
    )
    parser.add_argument("path", help="the dataset_info.json to convert")
    parser.add_argument("--out", default="conf/dataset", help="the folder to write NAME.yaml files into")
    parser.add_argument("--force", action="store_true", help="overwrite options that exist")
    args = parser.parse_args(argv)
    path = Path(args.path)
    spec = overlay.read(path)
    if not dataset_info.is_registry(spec):
        raise UserError(
            f"{path} is not a LLaMA-Factory dataset_info.json: a JSON object of named entries, each with one of "
            f"{', '.join(dataset_info.ENTRY_KEYS)}."
        )
    dataset_info.convert(spec, path, Path(args.out), args.force)
