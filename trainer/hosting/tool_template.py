"""The chat template a served or exported model is saved with: the training template, which renders a request's
``tools=`` and its earlier calls and results as training rendered them.

A template that renders tool calls itself (Qwen2.5, Llama 3.1, Hermes) is kept as it is: training used it with
``tools=``. Any other template trained on function-calling rows through trainer.data.tool_calls' fallback
(the tools in the system message, each call a ``<tool_call>`` block, results in ``<tool_response>`` blocks), so
the saved template is :func:`wrap`'s: a Jinja preamble that rewrites ``messages`` and ``tools`` as
:func:`trainer.data.tool_calls.fallback_messages` does, then the training template unchanged. Every engine and
client that calls ``apply_chat_template(messages, tools=...)`` on the saved folder then builds the prompt the model
was trained on (tests/test_serve_tools.py renders the function-calling dataset both ways, for every bundled
template). The model's ``<tool_call>`` blocks are parsed back into ``tool_calls`` by trainer.hosting.gate.

An argument object arriving as a JSON string (an OpenAI client sends calls back that way) is written as that
string: `transformers serve` parses it into an object first, so its prompts match training's byte for byte.
"""

from __future__ import annotations

import json
from typing import Any

from trainer.data import tool_calls

#: Marks a template wrapped here (so that it is never wrapped twice).
MARK = "{#- hydratune: tools rendered as trainer.data.tool_calls.fallback_messages -#}"


def _literal(text: str) -> str:
    """A Jinja string literal holding ``text`` (JSON's escapes are Jinja's)."""
    return json.dumps(text)


def _preamble() -> str:
    head, tail = tool_calls.tools_text([]).split("<tools>\n\n</tools>")
    head, tail = head + "<tools>\n", "\n</tools>" + tail
    return (
        MARK
        + "{%- set ns = namespace(out=[], results=none) -%}"
        + "{%- set rest = messages -%}"
        + "{%- if tools -%}"
        + "{%- set ns.lines = [] -%}"
        + "{%- for t in tools -%}{%- set ns.lines = ns.lines + [t | tojson(sort_keys=True)] -%}{%- endfor -%}"
        + f"{{%- set text = {_literal(head)} ~ (ns.lines | join('\\n')) ~ {_literal(tail)} -%}}"
        + "{%- if messages and messages[0]['role'] == 'system' -%}"
        + "{%- set ns.out = [{'role': 'system', 'content': messages[0]['content'].rstrip() ~ '\\n\\n' ~ text}] -%}"
        + "{%- set rest = messages[1:] -%}"
        + "{%- else -%}{%- set ns.out = [{'role': 'system', 'content': text}] -%}{%- endif -%}"
        + "{%- endif -%}"
        + "{%- for m in rest -%}"
        + "{%- if m['role'] == 'tool' -%}"
        + "{%- set block = '<tool_response>\\n' ~ m['content'] ~ '\\n</tool_response>' -%}"
        + "{%- set ns.results = block if ns.results is none else ns.results ~ '\\n' ~ block -%}"
        + "{%- else -%}"
        + "{%- if ns.results is not none -%}"
        + "{%- set ns.out = ns.out + [{'role': 'user', 'content': ns.results}] -%}{%- set ns.results = none -%}"
        + "{%- endif -%}"
        + "{%- if m['role'] == 'assistant' and m.get('tool_calls') -%}"
        + "{%- set ns.calls = [] -%}"
        + "{%- for c in m['tool_calls'] -%}"
        + "{%- set fn = c['function'] if c['function'] is defined else c -%}"
        + "{%- if fn['arguments'] is string -%}"
        + "{%- set call = '{\"arguments\": ' ~ fn['arguments'] ~ ', \"name\": ' ~ (fn['name'] | tojson) ~ '}' -%}"
        + "{%- else -%}"
        + "{%- set call = {'name': fn['name'], 'arguments': fn['arguments']} | tojson(sort_keys=True) -%}"
        + "{%- endif -%}"
        + "{%- set ns.calls = ns.calls + ['<tool_call>\\n' ~ call ~ '\\n</tool_call>'] -%}"
        + "{%- endfor -%}"
        + "{%- set said = (m['content'] or '') | string -%}"
        + "{%- set parts = ([said.strip()] if said.strip() else []) + [ns.calls | join('\\n')] -%}"
        + "{%- set ns.out = ns.out + [{'role': 'assistant', 'content': parts | join('\\n')}] -%}"
        + "{%- else -%}{%- set ns.out = ns.out + [m] -%}{%- endif -%}"
        + "{%- endif -%}"
        + "{%- endfor -%}"
        + "{%- if ns.results is not none -%}{%- set ns.out = ns.out + [{'role': 'user', 'content': ns.results}] -%}"
        + "{%- endif -%}"
        + "{%- set messages = ns.out -%}"
        + "{%- set tools = none %}"  # no whitespace control here: the training template's first characters stay
    )


def wrap(template: str) -> str:
    """``template`` with the fallback's rendering of tools, calls and results in front; unchanged when it renders
    tool calls itself (or is wrapped already)."""
    if template.startswith(MARK) or tool_calls.template_reads(template)[0]:
        return template
    return _preamble() + template


def install(tokenizer: Any) -> None:
    """Give ``tokenizer`` (the run's, about to be saved with the served or exported weights) the wrapped template."""
    try:
        template = tokenizer.get_chat_template()
    except ValueError:  # no chat template: nothing to render tools into
        return
    tokenizer.chat_template = wrap(template)


def renders_tools(tokenizer: Any) -> bool:
    """Whether ``tokenizer``'s template renders a request's tools (natively or wrapped here)."""
    try:
        return tool_calls.template_reads(tokenizer.get_chat_template())[0]
    except ValueError:
        return True  # no chat template: serving it is refused elsewhere, never exported for this
