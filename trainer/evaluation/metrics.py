"""Generation metrics: each is an object with a ``name`` that scores (prediction, reference) in [0, 1] (the
tool-call ones, for function-calling data, are listed by conf/eval/function_calling.yaml).

The eval config lists them by ``_target_``; add your own the same way, e.g.
``eval.metrics='[{_target_: mypkg.metrics.JsonListMatch}]'``. Scores are averaged over the held-out examples.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str, *, lowercase: bool = True, strip_punctuation: bool = False) -> str:
    text = text.strip()
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        text = _PUNCT.sub(" ", text)
    return " ".join(text.split())


class ExactMatch:
    """1 when the prediction equals the reference after trimming and collapsing whitespace (and lowercasing)."""

    name = "exact_match"

    def __init__(self, lowercase: bool = True) -> None:
        self.lowercase = lowercase

    def __call__(self, prediction: str, reference: str) -> float:
        return float(normalize(prediction, lowercase=self.lowercase) == normalize(reference, lowercase=self.lowercase))


class TokenF1:
    """SQuAD-style F1 over word tokens (lowercased, punctuation removed)."""

    name = "token_f1"

    def __call__(self, prediction: str, reference: str) -> float:
        pred = normalize(prediction, strip_punctuation=True).split()
        ref = normalize(reference, strip_punctuation=True).split()
        if not pred and not ref:
            return 1.0
        common = sum((Counter(pred) & Counter(ref)).values())
        if common == 0:
            return 0.0
        precision, recall = common / len(pred), common / len(ref)
        return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------- tool calls


class _ToolCalls:
    """Base of the tool-call metrics. The reference's calls are its ``<tool_call>`` blocks (trainer.data.tool_calls
    writes them from the row's ``tool_calls``); the prediction's are its blocks, or the whole answer when it is one
    JSON call (or a list of them). A row with no call due scores 1 when the model called nothing."""

    name = ""

    def __call__(self, prediction: str, reference: str) -> float:
        from trainer.data.tool_calls import parse_calls

        due, _ = parse_calls(reference)
        got, found = parse_calls(prediction)
        if not due:
            return float(self.without_call_due(got, found))
        return float(got is not None and found > 0 and self.score(got, due))

    def without_call_due(self, got: list | None, found: int) -> bool:
        return found == 0

    def score(self, got: list[tuple[str, object]], due: list[tuple[str, object]]) -> bool:
        raise NotImplementedError


def _canonical(value: object) -> str:
    import json

    return json.dumps(value, sort_keys=True, ensure_ascii=False)


class ToolCallValid(_ToolCalls):
    """1 when every emitted call is valid JSON with a function name, and a call was emitted where one was due."""

    name = "tool_call_valid"

    def score(self, got, due) -> bool:
        return True

    def without_call_due(self, got: list | None, found: int) -> bool:
        return got is not None  # nothing emitted, or valid calls (wrong to make, but valid JSON)


class ToolNameAccuracy(_ToolCalls):
    """1 when the emitted calls name the same functions as the reference's (as a multiset: parallel calls in any
    order)."""

    name = "tool_name_accuracy"

    def score(self, got, due) -> bool:
        return sorted(n for n, _ in got) == sorted(n for n, _ in due)


class ToolArgumentsMatch(_ToolCalls):
    """1 when the emitted calls' arguments equal the reference's as parsed JSON (key order and spacing do not
    matter; a multiset over parallel calls), whatever the function names."""

    name = "tool_arguments_match"

    def score(self, got, due) -> bool:
        return sorted(_canonical(a) for _, a in got) == sorted(_canonical(a) for _, a in due)


class ToolCallMatch(_ToolCalls):
    """Full-call exact match: 1 when the emitted calls are exactly the reference's, each name with its arguments as
    parsed JSON (a multiset over parallel calls)."""

    name = "tool_call_match"

    def score(self, got, due) -> bool:
        return sorted(_canonical([n, a]) for n, a in got) == sorted(_canonical([n, a]) for n, a in due)
