"""Function calling and reasoning in chat rows: reading and checking them, and the fallback template.

Canonical form (OpenAI's chat fine-tuning rows, with arguments parsed):

- the row's ``tools``: ``[{"type": "function", "function": {"name", "description", "parameters"}}]``
- an assistant message's ``tool_calls``: ``[{"id", "type": "function", "function": {"name", "arguments": {...}}}]``
  (``content`` may be empty); several calls in one message are parallel calls
- a ``tool`` message: ``{"role": "tool", "tool_call_id", "content"}``, answering an earlier call
- an assistant message's ``reasoning_content``: its reasoning trace (a leading ``<think>...</think>`` block in the
  content is read into it); ``dataset.reasoning`` trains on it, masks it from the loss, or drops it

A chat template that reads ``tool_calls`` renders these rows itself (``apply_chat_template(tools=...)``); for one
that does not, :func:`fallback_messages` rewrites them into plain messages (the Hermes/Qwen2.5 convention):

- the tools go at the end of the system message (one is added when the row has none)::

      # Tools
      You may call one or more functions. Function signatures, one a line:
      <tools>
      {"type": "function", "function": {...}}
      </tools>
      For each call, answer with a JSON object holding the name and arguments:
      <tool_call>
      {"name": <function-name>, "arguments": <args-json-object>}
      </tool_call>

- an assistant call is its content (if any) followed by one ``<tool_call>`` block per call
- tool results become a user message of ``<tool_response>`` blocks (consecutive results, one message)
- reasoning (unless a template reads ``reasoning_content`` itself) is ``<think>\\n...\\n</think>\\n\\n`` before the content
"""

from __future__ import annotations

import json
import re
from typing import Any

from trainer.data.invalid import Invalid

#: Message keys beyond role/content/name/weight that function-calling and reasoning rows use.
TOOL_KEYS = ("tool_calls", "tool_call_id", "reasoning_content")
THINK = re.compile(r"\s*<think>(.*?)</think>\s*", re.S)
BARE_CALL = re.compile(r'\s*\[?\s*\{\s*"(name|function|type)"')
CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
_DUMP = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode


# ---------------------------------------------------------------- reading rows


def read_tools(value: Any, column: str) -> list[dict]:
    """A row's tool definitions: a list (or a JSON string of one, as ShareGPT/LLaMA-Factory rows store it) of
    ``{"type": "function", "function": {...}}`` or bare ``{"name", "description", "parameters"}`` objects."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise Invalid(
                f"'{column}' is not valid JSON ({exc.msg} at character {exc.pos}); write it as a list"
            ) from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise Invalid(f"'{column}' must be a list of function definitions (got {type(value).__name__})")
    out = []
    for k, tool in enumerate(value, 1):
        fn = tool.get("function") if isinstance(tool, dict) and isinstance(tool.get("function"), dict) else tool
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
            raise Invalid(
                f"'{column}' item {k} has no function name; write each tool as "
                '{"type": "function", "function": {"name": ..., "parameters": {...}}}'
            )
        if not isinstance(fn.get("parameters", {}), dict):
            raise Invalid(f"'{column}' item {k} ({fn['name']}) parameters must be a JSON-schema object")
        out.append({"type": "function", "function": {k2: v for k2, v in fn.items() if v is not None}})
    return out


def read_calls(value: Any, i: int) -> list[dict]:
    """An assistant message's ``tool_calls`` (OpenAI's shape, or bare ``{"name", "arguments"}``) in canonical form."""
    where = f"message {i} (assistant)"
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise Invalid(f"{where} tool_calls must be a non-empty list of calls")
    out = []
    for k, call in enumerate(value, 1):
        fn = call.get("function") if isinstance(call, dict) and isinstance(call.get("function"), dict) else call
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"].strip():
            raise Invalid(
                f"{where} tool call {k} has no function name; write it as "
                '{"id": ..., "type": "function", "function": {"name": ..., "arguments": "{...}"}}'
            )
        name, arguments = fn["name"], fn.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as exc:
                raise Invalid(
                    f"{where} tool call {k} ({name}) arguments are not valid JSON ({exc.msg} at character "
                    f"{exc.pos} of {arguments!r}); write them as a JSON object, or a string holding one"
                ) from None
        if not isinstance(arguments, dict):
            raise Invalid(f"{where} tool call {k} ({name}) arguments must be a JSON object (got {arguments!r})")
        call_id = call.get("id") if isinstance(call, dict) else None
        out.append(
            {
                "id": str(call_id or f"call_{i}_{k}"),
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
        )
    return out


def split_think(content: str) -> tuple[str, str | None]:
    """(content, reasoning): a leading ``<think>...</think>`` block is the reasoning."""
    match = THINK.match(content)
    if match is None:
        return content, None
    return content[match.end() :], match.group(1).strip()


def check_conversation(messages: list[dict], tools: list[dict] | None) -> list[str]:
    """Problems across messages: calls to tools the row does not define, tool results that answer no call."""
    problems: list[str] = []
    names = {t["function"]["name"] for t in tools or []}
    pending: dict[str, str] = {}
    for i, message in enumerate(messages, 1):
        for call in message.get("tool_calls") or []:
            name = call["function"]["name"]
            if tools is not None and name not in names:
                problems.append(
                    f"message {i} calls the tool '{name}', which the row's tools do not define (defined: "
                    f"{', '.join(sorted(names)) or 'none'}); add its definition to 'tools' or fix the name"
                )
            pending[call["id"]] = name
        if message["role"] == "tool":
            call_id = message.get("tool_call_id")
            if call_id is None and len(pending) == 1:
                call_id = message["tool_call_id"] = next(iter(pending))
            if call_id not in pending:
                answered = f"tool_call_id '{call_id}'" if call_id is not None else "no tool_call_id"
                open_ids = ", ".join(pending) or "none"
                problems.append(
                    f"message {i} (tool) answers no call ({answered}; calls awaiting a result: {open_ids}); "
                    "give it the id of an earlier assistant tool call, or remove it"
                )
            else:
                del pending[call_id]
    return problems


# ---------------------------------------------------------------- rendering


def structured(messages: list[dict]) -> bool:
    """Whether a conversation has tool calls, tool results or reasoning (anything a plain template would lose)."""
    return any(m["role"] == "tool" or "tool_calls" in m or "reasoning_content" in m for m in messages)


def template_reads(template: str) -> tuple[bool, bool]:
    """(renders tool calls, renders reasoning_content) for a chat template's source."""
    return "tool_calls" in template, "reasoning_content" in template


def template_messages(
    messages: list[dict], tools: list[dict] | None, reasoning: str, template: str
) -> tuple[list[dict], list[dict] | None]:
    """(messages, tools) to render with ``template``: the template's own tool rendering when it has one, else
    :func:`fallback_messages`; reasoning dropped (``reasoning=drop``) or rendered as the template does it."""
    native_tools, native_reasoning = template_reads(template)
    out = []
    for m in messages:
        m = dict(m)
        r = m.pop("reasoning_content", None)
        if r and reasoning != "drop":
            if native_reasoning:
                m["reasoning_content"] = r
            else:
                m["content"] = f"<think>\n{r}\n</think>\n\n{m['content']}"
        out.append(m)
    if native_tools:
        return out, tools  # transformers' templates take arguments as an object (``| tojson``), as stored
    return fallback_messages(out, tools), None


def tools_text(tools: list[dict]) -> str:
    lines = "\n".join(_DUMP(t) for t in tools)
    return (
        "# Tools\nYou may call one or more functions. Function signatures, one a line:\n<tools>\n"
        f"{lines}\n</tools>\nFor each call, answer with a JSON object holding the name and arguments:\n"
        '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


def call_text(calls: list[dict]) -> str:
    return "\n".join(
        "<tool_call>\n"
        + _DUMP({"name": c["function"]["name"], "arguments": c["function"]["arguments"]})
        + "\n</tool_call>"
        for c in calls
    )


def answer_text(message: dict) -> str:
    """An assistant message as the fallback template writes it (its content, then its calls): what a model trained
    on these rows answers, and the reference the tool-call metrics parse."""
    calls = message.get("tool_calls")
    if not calls:
        return str(message["content"])
    return "\n".join(p for p in (str(message.get("content") or "").strip(), call_text(calls)) if p)


def fallback_messages(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """Plain role/content messages (weights kept) for a template that does not render tools."""
    out: list[dict] = []
    if tools:
        if messages and messages[0]["role"] == "system":
            out.append({"role": "system", "content": f"{messages[0]['content'].rstrip()}\n\n{tools_text(tools)}"})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": tools_text(tools)})
    for m in messages:
        if m["role"] == "tool":
            block = f"<tool_response>\n{m['content']}\n</tool_response>"
            if out and out[-1].get("_tool"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool": True})
            continue
        plain = {k: v for k, v in m.items() if k in ("role", "content", "name", "weight", "reasoning_content")}
        if m["role"] == "assistant":
            plain["content"] = answer_text(m) if m.get("tool_calls") else m["content"]
        out.append(plain)
    for m in out:
        m.pop("_tool", None)
    return out


def mask_reasoning(full: str, span: tuple[int, int], reasoning: str | None) -> list[tuple[int, int]]:
    """The loss span of an answer without its reasoning (and the ``</think>`` after it): the part of the span from
    its start to the end of the reasoning text is left out. A template that does not render it: the span as is."""
    a, b = span
    if not reasoning:
        return [span]
    at = full.find(reasoning, a, b)
    if at < 0:
        return [span]
    end = at + len(reasoning)
    rest = full[end:b]
    close = rest.find("</think>")
    if close >= 0:
        end += close + len("</think>")
    while end < b and full[end].isspace():
        end += 1
    return [(end, b)] if end < b else []


# ---------------------------------------------------------------- parsing answers


def parse_calls(text: str) -> tuple[list[tuple[str, Any]] | None, int]:
    """(calls, found): the ``<tool_call>`` blocks of an answer (or an answer that is one JSON call or a list of
    them) as (name, arguments) pairs; None when a call was emitted but is not valid JSON with a name."""
    blocks = CALL.findall(text)
    if not blocks:
        if not BARE_CALL.match(text):
            return [], 0
        blocks = [text.strip()]
    calls: list[tuple[str, Any]] = []
    for block in blocks:
        try:
            value = json.loads(block)
        except json.JSONDecodeError:
            return None, len(blocks)
        for item in value if isinstance(value, list) else [value]:
            fn = item.get("function", item) if isinstance(item, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                return None, len(blocks)
            arguments = fn.get("arguments", {})
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError:
                    return None, len(blocks)
            calls.append((fn["name"], arguments))
    return calls, len(blocks)
