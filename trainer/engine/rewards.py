"""GRPO reward functions, listed in ``objective.reward_funcs`` by ``_target_`` (as eval.metrics are).

Each is called the way TRL's GRPOTrainer calls a reward function: ``f(prompts, completions, **columns)`` with one
completion per prompt (a string, or a list with the assistant message for chat prompts) and the dataset's other
columns as lists (``reference`` holds the answers of chat / prompt_completion / preference rows). It returns one
float per completion. Write your own the same way: any callable with that signature.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from trainer.config.errors import UserError
from trainer.evaluation.metrics import ExactMatch as _ExactMatchMetric
from trainer.evaluation.metrics import TokenF1 as _TokenF1Metric


def completion_text(completion) -> str:
    """TRL hands chat completions as [{"role": "assistant", "content": ...}], plain ones as strings."""
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion if m.get("role") == "assistant")


class _Reward:
    name = "reward"

    def __init__(self) -> None:
        self.__name__ = self.name  # TRL logs each reward under its function's name

    def score(self, text: str, **row) -> float:
        raise NotImplementedError

    def __call__(self, prompts=None, completions=(), **columns) -> list[float]:
        out = []
        for i, completion in enumerate(completions):
            row = {k: v[i] for k, v in columns.items() if isinstance(v, list) and len(v) == len(completions)}
            out.append(float(self.score(completion_text(completion), **row)))
        return out


class _AgainstReference(_Reward):
    metric: Callable[[str, str], float]

    def score(self, text: str, reference: str | None = None, **_) -> float:
        if reference is None:
            raise UserError(
                f"the reward {type(self).__name__} compares answers with the data's `reference` column, and this "
                "dataset has none (format=prompt rows without a reference). Use chat / prompt_completion / "
                "preference data, add a reference to each row, or pick a format reward (JsonValid, RegexFormat)."
            )
        return self.metric(text, reference)


class ExactMatch(_AgainstReference):
    """1.0 when the answer equals the reference (trimmed, whitespace collapsed, lowercased), else 0.0."""

    name = "exact_match"

    def __init__(self, lowercase: bool = True) -> None:
        super().__init__()
        self.metric = _ExactMatchMetric(lowercase)


class TokenF1(_AgainstReference):
    """SQuAD-style word-overlap F1 between the answer and the reference, in [0, 1]."""

    name = "token_f1"

    def __init__(self) -> None:
        super().__init__()
        self.metric = _TokenF1Metric()


class JsonValid(_Reward):
    """1.0 when the whole answer parses as JSON (optionally of one type: list, object ...), else 0.0."""

    name = "json_valid"
    _TYPES: dict[str, type | tuple[type, ...]] = {
        "list": list,
        "object": dict,
        "string": str,
        "number": (int, float),
        "any": object,
    }

    def __init__(self, type: str = "any") -> None:  # noqa: A002 - the JSON type's name, as users write it
        super().__init__()
        if type not in self._TYPES:
            raise UserError(f"trainer.engine.rewards.JsonValid type={type!r}: allowed {', '.join(self._TYPES)}.")
        self.type = self._TYPES[type]

    def score(self, text: str, **_) -> float:
        try:
            value = json.loads(text)
        except ValueError:
            return 0.0
        return float(isinstance(value, self.type))


class RegexFormat(_Reward):
    """1.0 when the whole answer matches ``pattern`` (Python regex, re.fullmatch, DOTALL), else 0.0."""

    name = "regex_format"

    def __init__(self, pattern: str) -> None:
        super().__init__()
        try:
            self.pattern = re.compile(pattern, re.DOTALL)
        except re.error as exc:
            raise UserError(
                f"trainer.engine.rewards.RegexFormat pattern={pattern!r} is not a valid regex: {exc}."
            ) from None

    def score(self, text: str, **_) -> float:
        return float(self.pattern.fullmatch(text.strip()) is not None)


class LengthPenalty(_Reward):
    """0.0 up to ``max_chars`` characters, then minus ``per_char`` for each character beyond (down to -1.0)."""

    name = "length_penalty"

    def __init__(self, max_chars: int = 200, per_char: float = 0.01) -> None:
        super().__init__()
        self.max_chars, self.per_char = max_chars, per_char

    def score(self, text: str, **_) -> float:
        return -min(1.0, max(0, len(text) - self.max_chars) * self.per_char)
