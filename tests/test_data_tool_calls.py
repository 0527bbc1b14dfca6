"""Function calling and reasoning rows: read into canonical rows, rendered (the template's own tool rendering or the
fallback), and which tokens carry labels: calls trained, tool results never, reasoning per dataset.reasoning."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from trainer.config.schema import SourceSchema
from trainer.data import tool_calls
from trainer.data.formats import Invalid, make_normaliser
from trainer.data.tokenize import Encoder

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "convert_units",
            "parameters": {"type": "object", "properties": {"value": {"type": "number"}, "to": {"type": "string"}}},
        },
    },
]


def call(call_id: str, name: str, arguments: dict) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


PARALLEL = {
    "tools": TOOLS,
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Weather in Oslo, and 10 km in miles?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call("c1", "get_weather", {"city": "Oslo"}), call("c2", "convert_units", {"value": 10})],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "SECRETRESULT sunny 3C"},
        {"role": "tool", "tool_call_id": "c2", "content": "OTHERRESULT 6.2 mi"},
        {"role": "assistant", "content": "Sunny, 3C; 10 km is 6.2 miles."},
    ],
}
REASONING = {
    "messages": [
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "<think>THINKING two plus three makes five</think>The answer is 5."},
    ]
}
# A template that renders tools and tool calls itself (as Qwen2.5's and Hermes' do), in a shape of its own.
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %} {{ t['function']['name'] }}{% endfor %}<|im_end|>\n"
    "{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}CALL {{ c['function']['name'] }} "
    "{{ c['function']['arguments'] | tojson }}\n{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture()
def tokenizer():
    from trainer.models import tiny_tokenizer

    return tiny_tokenizer()


def canonical(row: dict, fmt: str = "chat") -> dict:
    return make_normaliser(SourceSchema(path="x", format=fmt), Counter())(row)


def labelled(tokenizer, row: dict, **encoder) -> tuple[str, str]:
    """(the whole rendered input, the text of the tokens that carry labels)."""
    enc = Encoder(tokenizer, None, **encoder).encode([canonical(row)])
    ids, labels = enc.input_ids[0], enc.labels[0]
    return tokenizer.decode(ids), tokenizer.decode(ids[labels != -100])


def test_rows_keep_tools_calls_ids_and_reasoning():
    row = canonical(PARALLEL)
    assert row["tools"] == TOOLS
    calls = row["messages"][2]["tool_calls"]
    assert [c["function"]["arguments"] for c in calls] == [{"city": "Oslo"}, {"value": 10}]  # parsed JSON
    assert [m.get("tool_call_id") for m in row["messages"][3:5]] == ["c1", "c2"]
    thought = canonical(REASONING)["messages"][1]
    assert thought == {
        "role": "assistant",
        "content": "The answer is 5.",
        "reasoning_content": "THINKING two plus three makes five",
    }


def test_sharegpt_function_call_and_observation_turns():
    row = canonical(
        {
            "tools": json.dumps(TOOLS),
            "conversations": [
                {"from": "human", "value": "Weather in Oslo and Rome?"},
                {
                    "from": "function_call",
                    "value": json.dumps(
                        [
                            {"name": "get_weather", "arguments": {"city": "Oslo"}},
                            {"name": "get_weather", "arguments": {"city": "Rome"}},
                        ]
                    ),
                },
                {"from": "observation", "value": "3C"},
                {"from": "observation", "value": "20C"},
                {"from": "gpt", "value": "Oslo 3C, Rome 20C."},
            ],
        },
        "sharegpt",
    )
    calls = row["messages"][1]["tool_calls"]
    assert [c["function"]["arguments"]["city"] for c in calls] == ["Oslo", "Rome"]
    assert [m["tool_call_id"] for m in row["messages"][2:4]] == [c["id"] for c in calls]
    assert row["tools"] == TOOLS


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {
                "tools": TOOLS,
                "messages": [
                    {"role": "user", "content": "x"},
                    {
                        "role": "assistant",
                        "tool_calls": [{"function": {"name": "get_weather", "arguments": "{city: Oslo}"}}],
                    },
                ],
            },
            "arguments are not valid JSON",
        ),
        (
            {
                "tools": TOOLS,
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "tool_calls": [{"function": {"name": "book_flight", "arguments": "{}"}}]},
                ],
            },
            "calls the tool 'book_flight', which the row's tools do not define",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "tool_calls": [call("a", "f", {})]},
                    {"role": "tool", "tool_call_id": "b", "content": "1"},
                    {"role": "assistant", "content": "y"},
                ]
            },
            "message 3 (tool) answers no call (tool_call_id 'b'; calls awaiting a result: a)",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "x", "tool_calls": [call("a", "f", {})]},
                    {"role": "assistant", "content": "y"},
                ]
            },
            "message 1 (user) has tool_calls, which only assistant messages may have",
        ),
    ],
)
def test_malformed_tool_rows_are_refused(row, message):
    with pytest.raises(Invalid) as info:
        canonical(row)
    assert message in str(info.value)


def test_fallback_template_trains_the_calls_and_never_the_results(tokenizer):
    text, trained = labelled(tokenizer, PARALLEL)
    assert "<tools>" in text and '"name": "convert_units"' in text  # the tools reach the prompt
    assert "SECRETRESULT" in text and "OTHERRESULT" in text
    assert "SECRETRESULT" not in trained and "OTHERRESULT" not in trained and "<tools>" not in trained
    assert trained.count("<tool_call>") == 2  # both parallel calls
    assert '{"arguments": {"city": "Oslo"}, "name": "get_weather"}' in trained
    assert "Sunny, 3C; 10 km is 6.2 miles." in trained
    assert "Weather in Oslo, and 10 km" not in trained


def test_a_template_that_renders_tools_renders_them_itself(tokenizer):
    tokenizer.chat_template = TOOL_TEMPLATE
    text, trained = labelled(tokenizer, PARALLEL)
    assert "TOOLS: get_weather convert_units" in text and "<tools>" not in text
    assert 'CALL get_weather {"city": "Oslo"}' in trained and "CALL convert_units" in trained
    assert "SECRETRESULT" in text and "SECRETRESULT" not in trained


def test_reasoning_mask_keeps_it_in_the_input_and_out_of_the_loss(tokenizer):
    text, trained = labelled(tokenizer, REASONING, reasoning="mask")
    assert "<think>\nTHINKING two plus three makes five\n</think>" in text
    assert "THINKING" not in trained and "five" not in trained and "think>" not in trained
    assert "The answer is 5." in trained


def test_reasoning_train_puts_it_in_the_loss(tokenizer):
    text, trained = labelled(tokenizer, REASONING, reasoning="train")
    assert "THINKING two plus three makes five" in trained and "The answer is 5." in trained
    assert "What is 2+3?" not in trained


def test_reasoning_drop_removes_it(tokenizer):
    text, trained = labelled(tokenizer, REASONING, reasoning="drop")
    assert "THINKING" not in text and "The answer is 5." in trained


def test_reasoning_mask_with_a_template_that_renders_reasoning(tokenizer):
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m.reasoning_content %}[R]{{ m.reasoning_content }}"
        "[/R]{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    text, trained = labelled(tokenizer, REASONING, reasoning="mask")
    assert "[R]THINKING two plus three makes five[/R]" in text and "<think>" not in text
    assert "THINKING" not in trained and "The answer is 5." in trained


def test_answer_text_and_parse_calls_agree():
    message = canonical(PARALLEL)["messages"][2]
    calls, found = tool_calls.parse_calls(tool_calls.answer_text(message))
    assert found == 2 and calls == [("get_weather", {"city": "Oslo"}), ("convert_units", {"value": 10})]
    assert tool_calls.parse_calls("<tool_call>\n{not json}\n</tool_call>") == (None, 1)
    assert tool_calls.parse_calls("It is sunny.") == ([], 0)


def test_held_out_tool_rows_are_asked_as_they_were_trained(tokenizer):
    from trainer.evaluation.local import queries, render

    row = canonical(PARALLEL)
    first = {**row, "messages": row["messages"][:3]}  # the question, answered by the two calls
    (query,) = queries([first], None)
    assert tool_calls.parse_calls(query.reference)[0] == [
        ("get_weather", {"city": "Oslo"}),
        ("convert_units", {"value": 10}),
    ]
    prompt = render(tokenizer, query)
    text, _ = labelled(tokenizer, first)
    assert text.startswith(prompt)  # the training rendering up to the answer is the prompt
    assert "<tools>" in prompt and prompt.endswith("<|im_start|>assistant\n")
