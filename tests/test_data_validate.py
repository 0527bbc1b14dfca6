"""Validation: every broken file or row in tests/assets/data/broken gives its documented message (listed in
expected.json) with file and line; on_error=skip trains on exactly the good rows and lists the bad ones."""

from __future__ import annotations

import json

import pytest

from tests.helpers import ASSETS, compose
from trainer.config.errors import UserError
from trainer.data import load_examples, prepare

BROKEN = ASSETS / "data" / "broken"
EXPECTED = json.loads((BROKEN / "expected.json").read_text())
OPTION = {
    "chat": "chat_jsonl",
    "alpaca": "alpaca",
    "sharegpt": "sharegpt",
    "prompt_completion": "prompt_completion",
    "text": "text",
    "template": "template",
    "preference": "preference",
}


def dataset_cfg(tmp_path, path, case: dict, on_error: str = "fail", *extra: str):
    overrides = [
        f"dataset={OPTION[case['format']]}",
        f"dataset.path={path}",
        f"dataset.on_error={on_error}",
        "dataset.validation_size=0",
        f"cache_dir={tmp_path / 'cache'}",
        "++train.max_length=128",
        *extra,
    ]
    for role, template in case.get("templates", {}).items():
        overrides.append(f"dataset.templates.{role}='{template}'")
    return compose(*overrides)


def test_the_corpus_is_large_enough():
    files = {p.name for p in BROKEN.iterdir()} - {"expected.json"}
    assert files == set(EXPECTED) and len(files) >= 30


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_file_gives_its_documented_message(name, tmp_path):
    case = EXPECTED[name]
    path = BROKEN / name
    with pytest.raises(UserError) as info:
        load_examples(dataset_cfg(tmp_path, path, case).dataset)
    message = str(info.value)
    assert f"{path}:{case['line']}: {case['message']}" in message
    assert "Traceback" not in message and 'File "' not in message
    if case["level"] == "row":
        assert message.startswith("1 invalid row in the dataset (nothing was trained)")
        assert "dataset.on_error=skip" in message


ROW_CASES = sorted(n for n, c in EXPECTED.items() if c["level"] == "row")


@pytest.mark.parametrize("name", ROW_CASES)
def test_skip_keeps_exactly_the_good_rows(name, tmp_path):
    case = EXPECTED[name]
    path = BROKEN / name
    examples = load_examples(dataset_cfg(tmp_path, path, case, "skip").dataset)
    assert len(examples.skipped) == 1 and examples.skipped[0].startswith(f"{path}:{case['line']}: {case['message']}")
    assert len(examples.train) == case["good_rows"]
    assert examples.warnings[0].startswith("1 invalid rows skipped")


def mixed_file(tmp_path):
    good = [
        {
            "messages": [
                {"role": "user", "content": f"Title: dish {i}"},
                {"role": "assistant", "content": f'["flour", "{i}"]'},
            ]
        }
        for i in range(6)
    ]
    bad = [
        '{"messages": [}',
        "[1]",
        '{"messages": []}',
        json.dumps({"messages": [{"role": "user", "content": "x"}]}),
        json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}),
    ]
    lines = [
        json.dumps(good[0]),
        bad[0],
        json.dumps(good[1]),
        json.dumps(good[2]),
        bad[1],
        bad[2],
        json.dumps(good[3]),
        bad[3],
        json.dumps(good[4]),
        bad[4],
        json.dumps(good[5]),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, good, [2, 5, 6, 8, 10]


@pytest.mark.slow
def test_skip_trains_on_exactly_the_good_rows_and_reports_the_bad_ones(tiny_tokenizer, tmp_path):
    from tests.test_data_formats import train_two_steps

    path, good, bad_lines = mixed_file(tmp_path)
    case = {"format": "chat"}
    with pytest.raises(UserError) as info:
        load_examples(dataset_cfg(tmp_path, path, case).dataset)
    assert [f"{path}:{n}:" in str(info.value) for n in bad_lines] == [True] * 5
    assert str(info.value).startswith("5 invalid rows")

    run = tmp_path / "run"
    prepared = prepare(dataset_cfg(tmp_path, path, case, "skip"), tiny_tokenizer, run)
    assert prepared.examples.train == good and len(prepared.train) == 6
    listed = (run / "skipped_rows.txt").read_text().splitlines()
    assert [line.split(": ")[0] for line in listed] == [f"{path}:{n}" for n in bad_lines]
    assert json.loads((run / "data_stats.json").read_text())["skipped"] == 5
    train_two_steps(prepared, tiny_tokenizer, tmp_path)


def test_many_bad_rows_are_capped_in_the_message_and_listed_in_full(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"}]}) + "\n" for i in range(25)))
    run = tmp_path / "run"
    from trainer.data import load_examples as load

    with pytest.raises(UserError) as info:
        load(dataset_cfg(tmp_path, path, {"format": "chat"}).dataset, run)
    message = str(info.value)
    assert f"{path}:20: no assistant message" in message and f"{path}:21:" not in message
    assert "... and 5 more" in message and str(run / "invalid_rows.txt") in message
    assert len((run / "invalid_rows.txt").read_text().splitlines()) == 25


def test_warnings_have_counts(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}] * 3
    rows.append({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "hello"}]})
    path = tmp_path / "w.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = load_examples(dataset_cfg(tmp_path, path, {"format": "chat"}).dataset)
    assert "3 of 4 examples have no system message" in examples.warnings
    assert "1 of 4 examples have no user message" in examples.warnings
    assert any(w.startswith("2 examples are duplicates") for w in examples.warnings)


def test_duplicates_are_exact_with_weights_and_names(tmp_path):
    user = {"role": "user", "content": "q"}
    rows = [
        {"messages": [user, {"role": "assistant", "content": "a"}]},
        {"messages": [user, {"role": "assistant", "content": "a"}]},  # duplicate of 1
        {"messages": [user, {"role": "assistant", "content": "a", "weight": 1}]},
        {"messages": [user, {"weight": 1, "content": "a", "role": "assistant"}]},  # duplicate of 3, keys reordered
        {"messages": [user, {"role": "assistant", "content": "a", "weight": 0}]},
        {"messages": [{**user, "name": "n"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "q"}]},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = load_examples(dataset_cfg(tmp_path, path, {"format": "chat"}).dataset)
    assert any(w.startswith("2 examples are duplicates") for w in examples.warnings), examples.warnings


def test_blank_lines_crlf_and_unicode_whitespace_lines(tmp_path):
    row = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    path = tmp_path / "w.jsonl"
    path.write_bytes(f"\n{row}\r\n \t\r\n{row}\r\n\x0c\n".encode())
    assert len(load_examples(dataset_cfg(tmp_path, path, {"format": "chat"}).dataset).train) == 2
    path.write_bytes(f"{row}\n\u00a0\n{row}\n".encode())  # not JSON whitespace: a bad row, not a skipped line
    with pytest.raises(UserError, match=f"{path}:2: not valid JSON"):
        load_examples(dataset_cfg(tmp_path, path, {"format": "chat"}).dataset)
