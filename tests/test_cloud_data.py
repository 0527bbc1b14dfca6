"""Canonical rows -> provider JSONL, and OpenAI's data-preparation checks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from launchers.cloud import provider_data as pd
from trainer.config.errors import UserError

CHAT = {
    "messages": [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u", "name": "n"},
        {"role": "assistant", "content": "a", "weight": 0},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "a2", "weight": 1},
    ]
}


def test_chat_rows_keep_weights_and_names():
    assert pd.convert([CHAT], "supervised") == [CHAT]
    assert pd.validate([CHAT], "train") == []


def test_prompt_completion_becomes_user_and_assistant():
    (row,) = pd.convert([{"prompt": "p", "completion": "c"}], "supervised")
    assert row == {"messages": [{"role": "user", "content": "p"}, {"role": "assistant", "content": "c"}]}


def test_preference_rows_become_openai_dpo_rows():
    pref = {
        "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
    }
    (row,) = pd.convert([pref], "dpo")
    assert row == {
        "input": {"messages": pref["prompt"]},
        "preferred_output": [{"role": "assistant", "content": "good"}],
        "non_preferred_output": [{"role": "assistant", "content": "bad"}],
    }
    assert pd.validate([row], "train") == []
    with pytest.raises(UserError, match="set objective=dpo"):
        pd.convert([pref], "supervised")
    with pytest.raises(UserError, match="preference rows"):
        pd.convert([CHAT], "dpo")


def test_raw_text_cannot_go_to_a_chat_api():
    with pytest.raises(UserError, match="Raw text rows"):
        pd.convert([{"text": "once upon a time"}], "supervised")


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([], "no messages list"),
        ("x", "no messages list"),
        ([{"role": "user"}], "missing content"),
        ([{"content": "x"}], "missing role"),
        ([{"role": "user", "content": "x", "foo": 1}], "unrecognized key(s) foo"),
        ([{"role": "robot", "content": "x"}], "unrecognized role 'robot'"),
        ([{"role": "user", "content": ""}], "content is missing or not a non-empty string"),
        ([{"role": "user", "content": 3}], "content is missing or not a non-empty string"),
        ([{"role": "user", "content": "x"}], "no assistant message"),
        ([{"role": "assistant", "content": "x", "weight": 2}], "weight must be 0 or 1"),
        ([{"role": "assistant", "content": "x", "weight": True}], "weight must be 0 or 1"),
        ([{"role": "user", "content": "x", "weight": 1}], "weight is only allowed on assistant messages"),
    ],
)
def test_openai_format_checks(messages, problem):
    errors = pd.validate([{"messages": messages}], "train")
    assert any(problem in e for e in errors), errors
    assert errors[0].startswith("train example 1")
    with pytest.raises(UserError, match="nothing was uploaded"):
        pd.raise_if_invalid(errors)


def test_jsonl_is_deterministic_and_hashed(tmp_path):
    rows = [CHAT, {"messages": [{"content": "é", "role": "user"}, {"role": "assistant", "content": "b"}]}]
    sha = pd.write_jsonl(tmp_path / "a.jsonl", rows)
    data = (tmp_path / "a.jsonl").read_bytes()
    assert sha == hashlib.sha256(data).hexdigest() == pd.write_jsonl(tmp_path / "b.jsonl", json.loads(json.dumps(rows)))
    assert [json.loads(line) for line in data.decode().splitlines()] == rows


def test_jsonl_bytes_are_json_dumps_with_sorted_keys():
    rows = [CHAT, {"messages": [{"content": 'é\n"x"', "role": "user"}, {"role": "assistant", "content": "b"}]}]
    expected = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode("utf-8")
    assert pd.jsonl_bytes(rows) == expected
    assert pd.jsonl_bytes([]) == b""


def _full_checks(rows):
    """validate without its shortcut for plain rows: every row through check_messages."""
    errors = []
    for n, row in enumerate(rows, 1):
        errors += pd.check_messages(row["messages"], f"train example {n}")
        if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in row["messages"]):
            errors.append(f"train example {n}: no assistant message")
    return errors


def test_the_shortcut_for_plain_rows_finds_what_the_full_checks_find():
    plain = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    variants = [
        plain,
        [{"role": "system", "content": "s"}, *plain],
        [*plain[:1], {"role": "assistant", "content": "a", "name": "bot"}],
        [plain[0], {"role": "assistant", "content": "a", "weight": 1}],
        [plain[0], {"role": "assistant", "content": "a", "weight": 1.5}],
        [plain[0], {"role": "tool", "content": "x"}, plain[1]],
        [plain[0], {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}],
        [plain[0], {"role": "assistant", "content": ""}],
        [plain[0], {"role": "assistant", "content": ["a"]}],
        [plain[0], {"role": ["assistant"], "content": "a"}],
        [plain[0], {"role": "assistant"}],
        [plain[0], {"content": "a"}],
        [plain[0], {"role": "assistant", "content": "a", "extra": 1}],
        [plain[0], "not an object"],
        [plain[0]],
        [],
    ]
    rows = [{"messages": m} for m in variants]
    assert pd.validate(rows, "train") == _full_checks(rows)
    assert pd.validate(rows[:4], "train") == []


DATA = Path(__file__).resolve().parent / "assets" / "data"
FORMATS = {
    "quickstart": [],
    "chat": ["dataset=chat_jsonl", f"dataset.path={DATA / 'chat.jsonl'}"],
    "alpaca": ["dataset=alpaca", f"dataset.path={DATA / 'alpaca.json'}"],
    "sharegpt": ["dataset=sharegpt", f"dataset.path={DATA / 'sharegpt.jsonl'}", "+dataset.roles.bot=assistant"],
    "prompt_completion": ["dataset=prompt_completion", f"dataset.path={DATA / 'prompt_completion.csv'}"],
    "template": ["dataset=template", f"dataset.path={DATA / 'recipes.csv'}"],
    "preference": ["dataset=preference", f"dataset.path={DATA / 'preference.jsonl'}", "objective=dpo"],
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_dataset_format_prepares_for_the_provider(name, tmp_path, capsys, monkeypatch):
    from launchers import cloud
    from launchers.cloud.prepare import TRAIN_FILE
    from tests.helpers import compose

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    cfg = compose("hardware=openai", "model=gpt_4o_mini", *FORMATS[name])
    cfg.output_dir = str(tmp_path)
    assert cloud.run(cfg, "prepare") is None
    rows = [json.loads(line) for line in (tmp_path / TRAIN_FILE).read_text().splitlines()]
    assert rows and pd.validate(rows, "train") == []
    assert all(("input" in r) == (name == "preference") for r in rows)
    assert "cost estimate" in capsys.readouterr().out


def test_prepare_turns_the_cycle_collector_back_on(monkeypatch, tmp_path):
    import gc

    from launchers.cloud import prepare

    seen = []

    def fail(cfg, run_dir):
        seen.append(gc.isenabled())
        raise UserError("bad data")

    monkeypatch.setattr(prepare, "_prepare", fail)
    assert gc.isenabled()
    with pytest.raises(UserError, match="bad data"):
        prepare.prepare(None, tmp_path)
    assert seen == [False] and gc.isenabled()


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}}}}}  # fmt: skip
TOOL_ROW = {  # canonical: arguments parsed, content None beside the calls
    "tools": [WEATHER],
    "messages": [
        {"role": "user", "content": "Weather in Oslo and Lima?"},
        {"role": "assistant", "content": None, "reasoning_content": "two cities", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Lima"}}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12 C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "20 C"},
        {"role": "assistant", "content": "Oslo 12 C, Lima 20 C."},
    ],
}  # fmt: skip


def test_function_calling_rows_go_in_the_providers_tool_format():
    """OpenAI's and Together's documented shape: tools beside the messages, arguments as JSON strings, no content
    beside the calls, tool results by tool_call_id, no reasoning; the checks pass it."""
    (row,) = pd.convert([TOOL_ROW], "supervised", tools=True)
    assert row["tools"] == [WEATHER]
    call_message = row["messages"][1]
    assert call_message == {
        "role": "assistant",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Lima"}'}},
        ],
    }
    assert row["messages"][2:] == TOOL_ROW["messages"][2:]
    assert pd.validate([row], "train") == []
    assert TOOL_ROW["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}  # not mutated
    pref = {"prompt": TOOL_ROW["messages"][:1], "tools": [WEATHER], "chosen": TOOL_ROW["messages"][1:2],
            "rejected": [{"role": "assistant", "content": "I cannot check the weather."}]}  # fmt: skip
    (dpo,) = pd.convert([pref], "dpo", tools=True)
    assert dpo["input"] == {"messages": TOOL_ROW["messages"][:1], "tools": [WEATHER]}  # tools inside input
    assert dpo["preferred_output"] == [call_message] and pd.validate([dpo], "train") == []
