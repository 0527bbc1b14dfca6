"""Generation metrics: each is an object with a ``name`` that scores (prediction, reference) in [0, 1].

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
