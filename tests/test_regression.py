"""The general-ability regression probe: scoring, the shipped set, bad probe files, and a tiny end-to-end run."""

from __future__ import annotations

import pytest

from trainer.config.errors import UserError
from trainer.evaluation import regression


def test_an_answer_counts_as_whole_words_anywhere_in_the_reply():
    assert regression.correct("The capital of France is Paris.", ["Paris"]) == 1.0
    assert regression.correct("seven days", ["7", "seven"]) == 1.0
    assert regression.correct("110", ["10"]) == 0.0  # not a substring match
    assert regression.correct("I think it's Lyon", ["Paris"]) == 0.0


def test_the_shipped_probe_has_about_a_hundred_answerable_items():
    items = regression.load("general")
    assert len(items) == 104 and len({i["prompt"] for i in items}) == 104
    kinds = {i["kind"] for i in items}
    assert {"arithmetic", "capital", "science", "instruction"} <= kinds
    for item in items:  # each reference answer is scored correct against itself
        assert regression.correct(item["answers"][0], item["answers"]) == 1.0


def test_a_bad_probe_file_names_the_line(tmp_path):
    bad = tmp_path / "probe.jsonl"
    bad.write_text('{"prompt": "2+2?", "answers": ["4"]}\n{"prompt": "no answers"}\n')
    with pytest.raises(UserError, match=r"probe.jsonl, line 2: a probe item is a JSON object"):
        regression.load(str(bad))
    with pytest.raises(UserError, match="no such probe set"):
        regression.load("nonexistent")


def test_lost_general_ability_is_reported_as_damage():
    items = regression.load("general")
    base = {"answers": [i["answers"][0] for i in items], "scores": [1.0] * len(items)}
    tuned = {"answers": ["[]"] * len(items), "scores": [1.0] * 60 + [0.0] * (len(items) - 60)}
    block = regression.section("general", base, tuned)
    assert block["comparison"]["verdict"] == "worse" and block["comparison"]["lost"] == 44
    assert block["lines"][0].startswith("**Fine-tuning DAMAGED general ability** on the general probe (104 items)")
    assert len(block["lost"]) == 44


# The end-to-end check (the probe on the tiny model's base and fine-tuned states) is part of test_engine.py's tiny run.
