"""The generation metrics on hand-computed cases: what counts as equal, and SQuAD-style token F1."""

from __future__ import annotations

import pytest

from trainer.metrics import ExactMatch, TokenF1, normalize


def test_normalize_trims_collapses_and_lowercases():
    assert normalize("  Hello\n\tWORLD  ") == "hello world"
    assert normalize("Hello, World!", lowercase=False, strip_punctuation=True) == "Hello World"


@pytest.mark.parametrize(
    ("prediction", "reference", "lowercase", "expected"),
    [
        ("Paris", "paris", True, 1.0),
        ("Paris", "paris", False, 0.0),
        (" two  words\n", "two words", True, 1.0),
        ("Paris.", "Paris", True, 0.0),  # punctuation counts for exact match
        ("", "", True, 1.0),
    ],
)
def test_exact_match(prediction, reference, lowercase, expected):
    metric = ExactMatch(lowercase=lowercase)
    assert metric.name == "exact_match"
    assert metric(prediction, reference) == expected


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("the cat sat", "the cat sat", 1.0),
        ("The cat, sat!", "the cat sat", 1.0),  # case and punctuation are ignored
        ("dog", "the cat sat", 0.0),
        ("the cat", "the cat sat", 0.8),  # precision 2/2, recall 2/3
        ("the the cat", "the cat", 0.8),  # repeated tokens count once each: precision 2/3, recall 2/2
        ("", "", 1.0),
        ("", "cat", 0.0),
    ],
)
def test_token_f1(prediction, reference, expected):
    metric = TokenF1()
    assert metric.name == "token_f1"
    assert metric(prediction, reference) == pytest.approx(expected)
