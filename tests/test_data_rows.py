"""dataset.train_rows / validation_rows: tutorial-style fixed row ranges, in file order, bad records counted."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from tests.helpers import compose
from trainer.config.errors import UserError
from trainer.data import load_examples


def chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}


@pytest.fixture
def data_file(tmp_path):
    lines = [json.dumps(chat(i)) for i in range(10)]
    lines[3] = "{not json"  # a bad record still counts as a position
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def dataset(path, *overrides):
    cfg = compose("dataset=chat_jsonl", f"dataset.path={path}", "dataset.on_error=skip", *overrides)
    return cfg.dataset


def answers(rows):
    return [r["messages"][-1]["content"] for r in rows]


def test_train_and_validation_rows_are_taken_in_file_order(data_file):
    ex = load_examples(dataset(data_file, "dataset.train_rows=[0,5]", "dataset.validation_rows=[5,8]"))
    assert answers(ex.train) == ["a0", "a1", "a2", "a4"]
    assert answers(ex.validation) == ["a5", "a6", "a7"]


def test_validation_rows_alone_train_on_every_other_row(data_file):
    ex = load_examples(dataset(data_file, "dataset.validation_rows=[8,10]"))
    assert answers(ex.validation) == ["a8", "a9"]
    assert answers(ex.train) == ["a0", "a1", "a2", "a4", "a5", "a6", "a7"]


def test_train_rows_alone_then_split_by_size(data_file):
    ex = load_examples(dataset(data_file, "dataset.train_rows=[0,6]", "dataset.validation_size=2"))
    assert sorted(answers(ex.train + ex.validation)) == ["a0", "a1", "a2", "a4", "a5"]
    assert len(ex.validation) == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dataset.validation_rows=[5,3]"], "is not a row range"),
        (["dataset.validation_rows=[20,30]"], "selects no usable rows"),
        (["dataset.validation_rows=[5,8]", "dataset.validation_path=x.jsonl"], "keep one"),
    ],
)
def test_bad_ranges_are_user_errors(data_file, overrides, message):
    with pytest.raises(UserError, match=message):
        load_examples(dataset(data_file, *overrides))


def test_row_range_keys_compose_from_yaml():
    cfg = compose("experiment=recipe_ner")
    assert OmegaConf.to_container(cfg.dataset.validation_rows) == [101, 201]
