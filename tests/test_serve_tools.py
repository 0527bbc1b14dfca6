"""Function calling through `hydratune serve`: the saved chat template renders a request's ``tools=`` as training
rendered function-calling rows (trainer.hosting.tool_template), and the gate returns the model's ``<tool_call>``
blocks as OpenAI ``tool_calls`` (the gate's parsing on a stand-in engine: tests/test_serve_gate.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import REPO, compose, served_cli
from trainer.data import tool_calls
from trainer.hosting import tool_template

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]  # fmt: skip
ASKED = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Weather in Oslo?"}]
CALL = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]}  # fmt: skip


def _templates() -> dict[str, str]:
    from trainer.models import chat_templates

    folder = REPO / "trainer" / "assets" / "templates"
    return {p.stem: chat_templates.resolve(p.stem).source for p in sorted(folder.glob("*.jinja"))}


@pytest.fixture(scope="module")
def function_calling_rows() -> list[dict]:
    from trainer import data

    examples = data.load_examples(compose("dataset=function_calling").dataset)
    rows = [*examples.train, *examples.validation]
    answered = [r for r in rows if any(m["role"] == "tool" for m in r["messages"])]
    no_call = [r for r in rows if not any("tool_calls" in m for m in r["messages"])]
    parallel = [r for r in rows if any(len(m.get("tool_calls") or []) > 1 for m in r["messages"])]
    return answered[:8] + no_call[:4] + parallel[:4] + rows[:8]


@pytest.mark.parametrize("name", sorted(_templates()))
def test_the_wrapped_template_renders_every_request_as_training_did(name, function_calling_rows):
    """Every prefix of function-calling rows (tools, parallel calls, tool results, rows that need no tool),
    rendered by the wrapped template with tools= exactly as training renders it: the fallback's messages through the
    training template."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    source = _templates()[name]
    wrapped, plain = _compile_jinja_template(tool_template.wrap(source)), _compile_jinja_template(source)
    special = {"bos_token": "<s>", "eos_token": "</s>"}
    rendered = 0
    for row in function_calling_rows:
        for cut in range(1, len(row["messages"]) + 1):
            asked = row["messages"][:cut]
            messages, tools = tool_calls.template_messages(asked, row["tools"], "drop", source)
            assert tools is None  # none of these templates renders tools itself: all go through the fallback
            want = plain.render(messages=messages, tools=None, add_generation_prompt=True, **special)
            got = wrapped.render(messages=asked, tools=row["tools"], add_generation_prompt=True, **special)
            assert got == want
            rendered += 1
    assert rendered > 60
    plain_chat = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    assert wrapped.render(messages=plain_chat, **special) == plain.render(messages=plain_chat, **special)


def test_a_template_that_renders_tools_itself_is_kept_and_wrapping_is_done_once():
    native = "{% for m in messages %}{{ m.tool_calls | tojson }}{% endfor %}"
    assert tool_template.wrap(native) == native
    once = tool_template.wrap(_templates()["chatml"])
    assert once != _templates()["chatml"] and tool_template.wrap(once) == once
    assert tool_calls.template_reads(once) == (True, False)  # training from the saved folder renders tools the same


# ---------------------------------------------------------------- served end to end


@pytest.fixture(scope="module")
def caller(tmp_path_factory) -> Path:
    """A tiny model folder, fully fine-tuned in this process on one function-calling row (rendered as training
    renders it) until it answers the request with its call, token for token."""
    import torch

    from trainer.models import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer)
    messages, _ = tool_calls.template_messages([*ASKED, CALL], TOOLS, "drop", tokenizer.chat_template)
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    ids = tokenizer(full, add_special_tokens=False, return_tensors="pt")["input_ids"]
    start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    answer = ids[0, start:-1]  # the call and the <|im_end|> after it (not the template's newline)
    assert tokenizer.decode(answer).startswith("<tool_call>\n") and tokenizer.decode(answer).endswith("<|im_end|>")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests' runs (hardware.threads=1): a busy machine's cores are not fought over
    try:
        _overfit(model, optimizer, ids, start, answer)
    finally:
        torch.set_num_threads(threads)
    folder = tmp_path_factory.mktemp("caller") / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)  # its plain ChatML template: serving must give it the tools rendering
    return folder


def _overfit(model, optimizer, ids, start: int, answer) -> None:
    import torch

    for _ in range(300):
        logits = model(input_ids=ids[:, :-2]).logits[0, start - 1 :]  # position i predicts token i + 1
        if torch.equal(logits.argmax(-1), answer):
            break
        torch.nn.functional.cross_entropy(logits, answer).backward()
        optimizer.step()
        optimizer.zero_grad()
    else:
        pytest.fail("the tiny model did not learn its one call in 300 steps")


@pytest.fixture(scope="module")
def served_caller(caller, cache_dir):
    args = [str(caller), "serve.port=0", "serve.max_tokens=96"]
    with served_cli(args, caller / "serve.json", caller.parent / "serve_cli.log", cache_dir) as (_, info):
        yield info


@pytest.mark.slow
def test_the_openai_sdks_tools_request_gets_the_trained_call_as_tool_calls(served_caller, caller):
    """`hydratune serve` on the folder: the SDK's request with tools= gets the call the model learned as a parsed
    tool call (non-streaming and streaming); the same request without tools= (a prompt the model never saw) gets no
    call. The saved template is the wrapped one."""
    import openai

    client = openai.OpenAI(base_url=served_caller["base_url"], api_key="unused", max_retries=0, timeout=120)
    model = served_caller["model"]
    answer = client.chat.completions.create(model=model, messages=ASKED, tools=TOOLS, temperature=0)
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert [(c.type, c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls] == [
        ("function", "get_weather", {"city": "Oslo"})
    ]
    calls: dict[int, list[str]] = {}
    stream = client.chat.completions.create(model=model, messages=ASKED, tools=TOOLS, temperature=0, stream=True)
    for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            calls.setdefault(call.index, []).append(call.function.arguments or "")
            assert call.function.name in (None, "get_weather")
    assert [json.loads("".join(parts)) for parts in calls.values()] == [{"city": "Oslo"}]
    untooled = client.chat.completions.create(model=model, messages=ASKED, temperature=0, max_tokens=24)
    assert untooled.choices[0].message.tool_calls is None
    from trainer.evaluation import endpoint as endpoint_eval
    from trainer.evaluation.local import Query

    eval_cfg = compose("eval=function_calling", "eval.generation.max_new_tokens=96").eval  # eval.endpoint's way
    asked = [Query(ASKED, tool_calls.answer_text(CALL), TOOLS), Query(ASKED, tool_calls.answer_text(CALL))]
    scored = [endpoint_eval.evaluate(client, model, [q], eval_cfg, 1) for q in asked]
    assert [s["tool_call_match"] for s in scored] == [1.0, 0.0]  # with the row's tools, and without them
    from transformers import AutoTokenizer

    merged = caller.parent / "merged"  # the folder serve exported: its template renders the tools
    assert tool_template.MARK in AutoTokenizer.from_pretrained(merged).get_chat_template()
