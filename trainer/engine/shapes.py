"""The data shapes objectives train on (``objective.data``), one class each: what the trainer reads, what the held-out
split measures, and what a shape changes in how the trainer is built.

- :class:`Supervised` (SFT): hydratune's own tokenized, cached, packed data; loss and generation metrics against
  reference answers; the pre-flight estimate models its workload.
- :class:`Preference` (DPO, ORPO, CPO, reward models): TRL's conversational {prompt, chosen, rejected} rows; pair
  accuracies and margins on held-out pairs.
- :class:`Unpaired` (KTO): {prompt, completion, label} rows, a preference pair giving one of each label.
- :class:`Prompts` (GRPO, RLOO, distillation): prompts (with their reference answer when every row has one); judged
  by generating, so TRL gets no validation split.

A new objective on one of these shapes is a YAML file in conf/objective/; a new shape is a class here, registered
with :func:`shape`, and its name in ``trainer.config.choices.DataShape``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import DictConfig, OmegaConf

from trainer.config.choices import DataShape

SHAPES: dict[str, type[Shape]] = {}


def shape(cls: type[Shape]) -> type[Shape]:
    """Register a data shape under its ``name`` (a DataShape value)."""
    SHAPES[cls.name.value] = cls
    return cls


def of(cfg: DictConfig) -> Shape:
    """The shape the configured objective trains on."""
    return SHAPES[cfg.objective.data](cfg)


@dataclass
class HeldOut:
    queries: list  # evaluation.Query: generated for, scored with eval.metrics (and rewards)
    pairs: list[dict] = field(default_factory=list)  # {prompt, chosen, rejected}: scored without generating
    rows: list[dict] = field(default_factory=list)  # prompt rows for the reward functions (same order as queries)


class Shape:
    """The conversational shapes' common path: rows converted from the canonical examples, tokenized by TRL."""

    name: ClassVar[DataShape]
    #: Whether exp(eval loss) is a perplexity (not for a preference or reward loss).
    perplexity: ClassVar[bool] = False
    #: Whether the pre-flight estimate models this shape's workload (tokenized sequences of known lengths).
    forecast: ClassVar[bool] = False
    #: Whether the report's validity probe (a random-weights control) applies: it does where the headline is not a
    #: comparison with reference answers.
    control: ClassVar[bool] = True

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    @classmethod
    def trainer_class(cls, trainer: type) -> type:
        """The objective's TRL trainer class as this shape trains it."""
        return trainer

    @classmethod
    def training_args(cls) -> dict[str, Any]:
        """What this shape adds to the objective's TRL config."""
        return {}

    def convert(self, row: dict) -> list[dict]:
        """A canonical row -> the trainer's rows (none, one or more)."""
        raise NotImplementedError

    def prepare(self, tokenizer: Any, run_dir: Path | None) -> Any:
        """The training and validation data in this shape (data.Prepared)."""
        import datasets

        from trainer import data

        cfg = self.cfg
        examples = data.load_examples(cfg.dataset, run_dir)
        train = [r for row in examples.train for r in self.convert(row)]
        validation = self.validation([r for row in examples.validation for r in self.convert(row)])
        train = self.columns(train)
        key_source = {"dataset": OmegaConf.to_container(cfg.dataset, resolve=True), "rows": [train, validation]}
        key = hashlib.sha256(json.dumps(key_source, sort_keys=True, default=str).encode()).hexdigest()[:16]
        stats = {
            "name": cfg.dataset.name,
            "objective_data": self.name.value,
            "train": {"examples": len(train)},
            "validation": {"examples": len(validation)},
            "skipped": len(examples.skipped),
            "warnings": examples.warnings,
        }
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "data_stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
        return data.Prepared(
            datasets.Dataset.from_list(train), datasets.Dataset.from_list(validation), examples, stats, key, False
        )

    def validation(self, rows: list[dict]) -> list[dict]:
        """The validation rows TRL computes its eval loss on."""
        return rows

    def columns(self, rows: list[dict]) -> list[dict]:
        """The training rows as Arrow takes them (one type per column)."""
        return rows

    def held_out(self, examples: Any, limit: int | None) -> HeldOut:
        """What the report measures on the validation split: pairs where rows have them; generated answers to each
        prompt unless the model is a reward model (it scores, it does not generate)."""
        from trainer.evaluation import local as evaluation

        rows = examples.validation[:limit] if limit is not None else examples.validation
        pairs = [preference_row(r) for r in rows if "chosen" in r]
        if self.cfg.objective.head != "causal_lm":
            return HeldOut([], pairs)
        prompt_rows = [r for row in rows if (r := prompt_row(row)) is not None]
        queries = [evaluation.Query(r["prompt"], r["reference"] or "") for r in prompt_rows]
        return HeldOut(queries, pairs, prompt_rows if "reward_funcs" in self.cfg.objective else [])


@shape
class Supervised(Shape):
    name = DataShape.supervised
    perplexity = True
    forecast = True
    control = False  # its metrics compare with reference answers

    @classmethod
    def trainer_class(cls, trainer: type) -> type:
        from trainer.engine import lm_head

        lm_head.score_labelled_positions_only()  # SFTTrainer's fused LM head: on the CPU too, labelled positions only
        return trainer

    @classmethod
    def training_args(cls) -> dict[str, Any]:
        return {"dataset_kwargs": {"skip_prepare_dataset": True}}  # trainer.data tokenized, truncated, packed

    def prepare(self, tokenizer: Any, run_dir: Path | None) -> Any:
        from trainer import data

        if self.cfg.dataset.streaming:  # tokenized and packed on the fly (trainer.data.streaming), never cached
            from trainer.data import streaming

            return streaming.prepare(self.cfg, tokenizer, run_dir)
        return data.prepare(self.cfg, tokenizer, run_dir)

    def held_out(self, examples: Any, limit: int | None) -> HeldOut:
        from trainer.evaluation import local as evaluation

        return HeldOut(evaluation.queries(examples.validation, limit))


@shape
class Preference(Shape):
    name = DataShape.preference

    def convert(self, row: dict) -> list[dict]:
        return [preference_row(row)]


@shape
class Unpaired(Shape):
    name = DataShape.unpaired

    def convert(self, row: dict) -> list[dict]:
        if "chosen" in row:
            prompt = _messages(row["prompt"])
            return [
                {"prompt": prompt, "completion": _messages(row["chosen"]), "label": True},
                {"prompt": prompt, "completion": _messages(row["rejected"]), "label": False},
            ]
        return [{"prompt": _messages(row["prompt"]), "completion": _messages(row["completion"]), "label": row["label"]}]


@shape
class Prompts(Shape):
    name = DataShape.prompts

    @classmethod
    def trainer_class(cls, trainer: type) -> type:
        from trainer.engine.epoch_order import resumable

        return resumable(trainer)  # TRL's RepeatSampler, whose order a resumed run must replay

    def convert(self, row: dict) -> list[dict]:
        return [r] if (r := prompt_row(row)) is not None else []

    def validation(self, rows: list[dict]) -> list[dict]:
        return []  # judged by generating (objectives.evaluate), not with TRL's loss

    def columns(self, rows: list[dict]) -> list[dict]:
        """``reference`` only when every row has one."""
        if all(isinstance(r["reference"], str) for r in rows):
            return rows
        return [{"prompt": r["prompt"]} for r in rows]


# ---------------------------------------------------------------- rows


def _messages(value: Any) -> list[dict] | str:
    if isinstance(value, str):
        return value
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else value[-1]["content"]


def preference_row(row: dict) -> dict:
    return {k: _messages(row[k]) for k in ("prompt", "chosen", "rejected")}


def prompt_row(row: dict) -> dict | None:
    """A canonical row -> {prompt, reference}: the prompt before the last answer, the answer as the reference."""
    if "messages" in row:
        messages = row["messages"]
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None or last == 0:
            return None
        return {"prompt": _messages(messages[:last]), "reference": messages[last]["content"]}
    if "chosen" in row:
        return {"prompt": _messages(row["prompt"]), "reference": _text(row["chosen"])}
    if "completion" in row:  # prompt_completion, or unpaired (only a desirable answer is a reference)
        if row.get("label") is False:
            return None
        return {"prompt": _messages(row["prompt"]), "reference": _text(row["completion"])}
    return {"prompt": _messages(row["prompt"]), "reference": row.get("reference")}
