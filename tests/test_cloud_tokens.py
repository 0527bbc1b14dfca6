"""tiktoken offline: the cache is seeded from the bpe-openai wheel; counts follow OpenAI's documented overheads."""

from __future__ import annotations

import hashlib
import json

import pytest

from launchers.cloud import tokens
from trainer.config.errors import UserError

CONVERSATION = [
    {"role": "system", "content": "You extract ingredients."},
    {"role": "user", "content": "2 cups of flour, sifted", "name": "alice"},
    {"role": "assistant", "content": '["flour"]', "weight": 1},
    {"role": "user", "content": "Ünïcødé and <|endoftext|> stay text"},
    {"role": "assistant", "content": '["sugar", "eggs"]', "weight": 0},
]


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    tokens.get_encoding.cache_clear()
    yield tmp_path / "tiktoken"
    tokens.get_encoding.cache_clear()


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_cache_is_seeded_from_the_packaged_copy_and_hash_checked(fresh_cache, name):
    path = tokens.seed_cache(name)
    assert path.parent == fresh_cache
    assert (
        path.name
        == hashlib.sha1(f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken".encode()).hexdigest()
    )
    assert hashlib.sha256(path.read_bytes()).hexdigest() == tokens.EXPECTED_SHA256[name]
    enc = tokens.get_encoding(name)  # would need the network if the cache were not seeded
    assert enc.name == name and enc.decode(enc.encode("hello world")) == "hello world"


def test_corrupt_cache_file_is_replaced(fresh_cache):
    path = tokens.seed_cache("cl100k_base")
    path.write_bytes(b"garbage")
    tokens.seed_cache("cl100k_base")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == tokens.EXPECTED_SHA256["cl100k_base"]


def test_missing_encoding_is_a_clear_error(fresh_cache, monkeypatch):
    with pytest.raises(UserError, match="o200k_base.*cl100k_base"):
        tokens.seed_cache("p50k_edit")
    monkeypatch.setattr(tokens, "_packaged_copy", lambda name: None)
    with pytest.raises(UserError, match="bpe-openai"):
        tokens.seed_cache("o200k_base")


def _direct(messages, enc):
    """OpenAI cookbook's num_tokens_from_messages, written out with tiktoken directly."""
    n = 0
    for m in messages:
        n += 3
        for key, value in m.items():
            if key == "weight":
                continue
            n += len(enc.encode(value, disallowed_special=()))
            if key == "name":
                n += 1
    return n + 3


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_counts_equal_a_direct_tiktoken_computation(name):
    import tiktoken

    tokens.seed_cache(name)
    enc = tiktoken.get_encoding(name)
    assert tokens.message_tokens(CONVERSATION, tokens.get_encoding(name)) == _direct(CONVERSATION, enc)
    one = [{"role": "user", "content": "hi"}]
    assert tokens.message_tokens(one, enc) == 3 + len(enc.encode("user")) + len(enc.encode("hi")) + 3
    named = [{"role": "user", "content": "hi", "name": "bob"}]
    assert tokens.message_tokens(named, enc) == tokens.message_tokens(one, enc) + len(enc.encode("bob")) + 1
    weighted = [{"role": "assistant", "content": "hi", "weight": 0}]
    assert tokens.message_tokens(weighted, enc) == tokens.message_tokens([{"role": "assistant", "content": "hi"}], enc)
    assert tokens.assistant_tokens(CONVERSATION, enc) == len(enc.encode('["flour"]')) + len(
        enc.encode('["sugar", "eggs"]')
    )


def test_dpo_rows_count_input_and_both_outputs():
    enc = tokens.get_encoding("o200k_base")
    row = {
        "input": {"messages": [{"role": "user", "content": "q"}]},
        "preferred_output": [{"role": "assistant", "content": "good"}],
        "non_preferred_output": [{"role": "assistant", "content": "bad"}],
    }
    flat = [*row["input"]["messages"], *row["preferred_output"], *row["non_preferred_output"]]
    assert tokens.count_examples([row], enc)[0] == [tokens.message_tokens(flat, enc)]


def test_counting_many_rows_encodes_each_distinct_text_once_and_counts_the_same():
    enc = tokens.get_encoding("cl100k_base")
    system = {"role": "system", "content": "You extract ingredients."}
    rows = [
        {"messages": [system, {"role": "user", "content": f"recipe {i} <|endoftext|>"}, CONVERSATION[2]]}
        for i in range(5)
    ]
    rows += [
        {"messages": CONVERSATION},
        {
            "input": {"messages": [system, {"role": "user", "content": "q"}]},
            "preferred_output": [{"role": "assistant", "content": "good"}],
            "non_preferred_output": [{"role": "assistant", "content": "bad"}],
        },
    ]
    calls = []

    class Counting:
        def encode_ordinary(self, text):
            calls.append(text)
            return enc.encode_ordinary(text)

    totals, answers = tokens.count_examples(rows, Counting())
    messages = [tokens.example_messages(r) for r in rows]
    assert totals == [tokens.message_tokens(m, enc) for m in messages] == [_direct(m, enc) for m in messages]
    assert answers == [tokens.assistant_tokens(m, enc) for m in messages]
    assert len(calls) == len(set(calls))  # the shared system prompt and the roles were encoded once


COOKBOOK_TOOLS = [{"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the current weather in a given location",
    "parameters": {"type": "object", "required": ["location"], "properties": {
        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
        "unit": {"type": "string", "description": "The unit of temperature to return", "enum": ["celsius", "fahrenheit"]},
    }}}}]  # fmt: skip
COOKBOOK_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant that can answer to questions about the weather."},
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.mark.parametrize(("name", "billed"), [("o200k_base", 101), ("cl100k_base", 105)])
def test_tools_count_as_openai_bills_them(name, billed):
    """The cookbook's example request with one tool ("How to count tokens with tiktoken", section 7): the prompt
    tokens the OpenAI API reported for it there, 101 on gpt-4o and 105 on gpt-4."""
    enc = tokens.get_encoding(name)
    assert tokens.message_tokens(COOKBOOK_MESSAGES, enc) + tokens.tool_tokens(COOKBOOK_TOOLS, enc, "openai") == billed


def test_a_function_calling_row_is_estimated_with_its_tools_and_calls():
    """The estimate of a provider row adds its tools (OpenAI's rule for OpenAI, their JSON for Together) to the
    messages, and its calls' names and arguments to both the total and the trained tokens."""
    enc = tokens.get_encoding("o200k_base")
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_current_weather", "arguments": '{"location": "Oslo"}'},
    }
    messages = [*COOKBOOK_MESSAGES, {"role": "assistant", "tool_calls": [call]}]
    plain = {"messages": messages}
    with_tools = {"messages": messages, "tools": COOKBOOK_TOOLS}
    (bare,), (bare_answer,) = tokens.count_examples([{"messages": COOKBOOK_MESSAGES}], enc)
    (calls,), (calls_answer,) = tokens.count_examples([plain], enc)
    called = len(enc.encode("get_current_weather")) + len(enc.encode('{"location": "Oslo"}'))
    extra = 3 + len(enc.encode("assistant")) + called  # one more message: its overhead, role and call
    assert calls == bare + extra and calls_answer == bare_answer + called
    for provider, tools in [("openai", tokens.openai_tool_tokens(COOKBOOK_TOOLS, enc)),
                            ("together", len(enc.encode(json.dumps(COOKBOOK_TOOLS[0]))))]:  # fmt: skip
        totals, answers = tokens.count_examples([with_tools, with_tools], enc, provider)  # the tools: counted once
        assert totals == [calls + tools] * 2 and answers == [calls_answer] * 2 and tools > 50
    assert tokens.tool_tokens(COOKBOOK_TOOLS, enc, "openai") != tokens.tool_tokens(COOKBOOK_TOOLS, enc, "together")
