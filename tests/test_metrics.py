"""The generation metrics on hand-computed cases: what counts as equal, and SQuAD-style token F1."""

from __future__ import annotations

import pytest

from trainer.evaluation.metrics import ExactMatch, TokenF1, normalize


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


# ---------------------------------------------------------------- tool calls

TOOL_METRICS = ("tool_call_valid", "tool_name_accuracy", "tool_arguments_match", "tool_call_match")


def tool_scores(prediction: str, reference: str) -> tuple[float, ...]:
    from trainer.evaluation.metrics import ToolArgumentsMatch, ToolCallMatch, ToolCallValid, ToolNameAccuracy

    metrics = [ToolCallValid(), ToolNameAccuracy(), ToolArgumentsMatch(), ToolCallMatch()]
    assert tuple(m.name for m in metrics) == TOOL_METRICS
    return tuple(m(prediction, reference) for m in metrics)


def block(name: str, arguments: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


WEATHER = block("get_weather", '{"city": "Oslo", "unit": "C"}')
ROME = block("get_weather", '{"city": "Rome"}')


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        (block("get_weather", '{"unit": "C",  "city": "Oslo"}'), WEATHER, (1, 1, 1, 1)),  # key order, spacing
        ('{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}', WEATHER, (1, 1, 1, 1)),  # bare JSON
        (block("get_weather", '{"city": "Paris", "unit": "C"}'), WEATHER, (1, 1, 0, 0)),  # wrong argument
        (block("get_forecast", '{"city": "Oslo", "unit": "C"}'), WEATHER, (1, 0, 1, 0)),  # wrong function
        ("<tool_call>\n{get_weather(Oslo)}\n</tool_call>", WEATHER, (0, 0, 0, 0)),  # not JSON
        ("It is cold in Oslo.", WEATHER, (0, 0, 0, 0)),  # no call where one was due
        (f"{ROME}\n{WEATHER}", f"{WEATHER}\n{ROME}", (1, 1, 1, 1)),  # parallel calls in another order
        (WEATHER, f"{WEATHER}\n{ROME}", (1, 0, 0, 0)),  # one of two parallel calls
        ("Hello there!", "Hi! How can I help?", (1, 1, 1, 1)),  # no call due, none made: correct
        (WEATHER, "Hi! How can I help?", (1, 0, 0, 0)),  # a (valid) call where none was due
        ("[1, 2, 3]", "[4]", (1, 1, 1, 1)),  # plain JSON answers are not calls
    ],
)
def test_tool_call_metrics(prediction, reference, expected):
    assert tool_scores(prediction, reference) == tuple(float(e) for e in expected)


def test_tool_call_metrics_are_per_example_under_eval_function_calling():
    from tests.helpers import compose
    from trainer.evaluation.local import Query, scores

    cfg = compose("eval=function_calling")
    qs = [Query([{"role": "user", "content": "q"}], ref) for ref in (WEATHER, WEATHER, "Hello")]
    result = scores(cfg.eval.metrics, qs, [WEATHER, "no call", "Hi"], [3, 3, 3], ["p"] * 3)
    assert result["per_example"]["scores"]["tool_call_match"] == [1.0, 0.0, 1.0]
    assert set(TOOL_METRICS) <= set(result["per_example"]["scores"])
    assert result["tool_call_match"] == pytest.approx(2 / 3)
