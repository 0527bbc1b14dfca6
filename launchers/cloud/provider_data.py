"""Canonical dataset rows -> the provider's fine-tuning JSONL, checked with OpenAI's data-preparation rules.

supervised: ``{"messages": [{"role", "content", optional "name", "weight"}]}`` (prompt/completion rows become
a user and an assistant message). dpo: ``{"input": {"messages": [...]}, "preferred_output": [...],
"non_preferred_output": [...]}`` from preference rows. Raw text rows cannot go to a chat API.

For a provider that trains function calling from these rows (its ``tools = True``: OpenAI, Azure OpenAI, Together,
Fireworks), function-calling rows go in the format OpenAI and Together both document for fine-tuning data (OpenAI's
"fine-tuning with tool calling": https://platform.openai.com/docs/guides/fine-tuning; Together's conversational and
preference formats: https://docs.together.ai/docs/fine-tuning/function-calling): the row's ``tools`` beside
``messages`` (inside ``input`` for dpo), assistant ``tool_calls`` as ``{"id", "type": "function", "function":
{"name", "arguments"}}`` with the arguments a JSON string (canonical rows hold them parsed) and no ``content`` when
there is none, ``tool`` messages with their ``tool_call_id``. Reasoning (``reasoning_content``) has no place in
either format.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from trainer.config.errors import UserError
from trainer.evaluation.endpoint import openai_messages

ROLES = ("system", "user", "assistant", "function", "tool")
MESSAGE_KEYS = ("role", "content", "name", "weight", "function_call", "tool_calls", "tool_call_id")
_KEYS = frozenset(MESSAGE_KEYS)
_MAX_LISTED = 20


def to_supervised(row: dict[str, Any]) -> dict[str, Any]:
    if "messages" in row:
        return row if len(row) == 1 else {"messages": row["messages"]}  # canonical rows are not changed later
    if "prompt" in row and "completion" in row and isinstance(row["prompt"], str):
        return {
            "messages": [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": row["completion"]},
            ]
        }
    if "chosen" in row:
        raise UserError(
            "The dataset holds preference rows (prompt, chosen, rejected), which need the DPO objective: "
            "set objective=dpo, or use a chat or prompt/completion dataset for supervised fine-tuning."
        )
    return _unsupported(row)


def to_dpo(row: dict[str, Any], tools: bool = False) -> dict[str, Any]:
    """An OpenAI preference row; ``tools``: with the row's function definitions inside ``input``."""
    if "chosen" not in row or "rejected" not in row:
        raise UserError(
            "objective=dpo needs preference rows (prompt, chosen, rejected): use "
            "dataset.format=preference, or objective=sft for this dataset."
        )
    prompt = row["prompt"]
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    chosen, rejected = _as_assistant(row["chosen"]), _as_assistant(row["rejected"])
    if not tools:
        return {"input": {"messages": messages}, "preferred_output": chosen, "non_preferred_output": rejected}
    return {
        "input": _tools_beside({"messages": openai_messages(messages)}, row.get("tools")),
        "preferred_output": openai_messages(chosen),
        "non_preferred_output": openai_messages(rejected),
    }


def _as_assistant(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    return [m for m in value if m.get("role") == "assistant"][-1:]


def _unsupported(row: dict[str, Any]) -> dict[str, Any]:
    if "text" in row:
        raise UserError(
            "Raw text rows (dataset.format=text, for continued pretraining) cannot be sent to a provider's "
            "chat fine-tuning API. Use a chat, prompt/completion, alpaca, sharegpt or template dataset."
        )
    raise UserError(f"A dataset row has keys {sorted(row)} that hydratune cannot turn into provider chat examples.")


def with_tools(row: dict[str, Any]) -> dict[str, Any]:
    """A supervised row with its function calling in the providers' shape (see the module docstring)."""
    out = to_supervised(row)
    if not row.get("tools") and not any(m.get("tool_calls") for m in out["messages"]):
        return out
    return _tools_beside({"messages": openai_messages(out["messages"])}, row.get("tools"))


def _tools_beside(out: dict[str, Any], tools: list[dict] | None) -> dict[str, Any]:
    return {**out, "tools": tools} if tools else out


def convert(rows: list[dict[str, Any]], objective: str, tools: bool = False) -> list[dict[str, Any]]:
    """The provider rows; ``tools``: the provider trains function calling (see :func:`with_tools`)."""
    if objective == "dpo":
        return [to_dpo(row, tools) for row in rows]
    fn = with_tools if tools else to_supervised
    return [fn(row) for row in rows]


def check_messages(messages: Any, where: str) -> list[str]:
    """OpenAI's format checks for one conversation; each problem as 'where: what'."""
    if not isinstance(messages, list) or not messages:
        return [f"{where}: no messages list"]
    errors = []
    for i, m in enumerate(messages):
        at = f"{where} message {i}"
        if not isinstance(m, dict):
            errors.append(f"{at}: not an object")
            continue
        if "role" not in m or ("content" not in m and not m.get("tool_calls")):
            errors.append(f"{at}: missing {'role' if 'role' not in m else 'content'}")
        unknown = sorted(set(m) - set(MESSAGE_KEYS))
        if unknown:
            errors.append(f"{at}: unrecognized key(s) {', '.join(unknown)}")
        if m.get("role") is not None and m.get("role") not in ROLES:
            errors.append(f"{at}: unrecognized role {m.get('role')!r}")
        content = m.get("content")
        if "content" in m and (not isinstance(content, str) or not content) and not m.get("tool_calls"):
            errors.append(f"{at}: content is missing or not a non-empty string")
        if "weight" in m:
            if m["weight"] not in (0, 1) or isinstance(m["weight"], bool):
                errors.append(f"{at}: weight must be 0 or 1, got {m['weight']!r}")
            elif m.get("role") != "assistant":
                errors.append(f"{at}: weight is only allowed on assistant messages")
    return errors


def _plain_answered(messages: Any) -> bool:
    """True for a chat that :func:`check_messages` passes, with an assistant message and no weights (the common case,
    checked without building any message string). Anything else goes through the full checks.
    """
    if type(messages) is not list or not messages:
        return False
    answered = False
    for m in messages:
        if type(m) is not dict or "weight" in m or not m.keys() <= _KEYS:
            return False
        role, content = m.get("role"), m.get("content")
        if role not in ROLES or type(content) is not str or not content:
            return False
        answered = answered or role == "assistant"
    return answered


def validate(rows: list[dict[str, Any]], split: str) -> list[str]:
    errors = []
    for n, row in enumerate(rows, 1):
        if "input" not in row:
            if _plain_answered(row.get("messages")):
                continue
        where = f"{split} example {n}"
        if "input" in row:
            errors += check_messages(row["input"].get("messages"), where + " input")
            for key in ("preferred_output", "non_preferred_output"):
                out = row.get(key)
                if not (isinstance(out, list) and len(out) == 1 and out[0].get("role") == "assistant"):
                    errors.append(f"{where}: {key} must be exactly one assistant message")
            continue
        messages = row.get("messages")
        errors += check_messages(messages, where)
        if isinstance(messages, list) and not any(
            isinstance(m, dict) and m.get("role") == "assistant" for m in messages
        ):
            errors.append(f"{where}: no assistant message")
    return errors


def raise_if_invalid(errors: list[str]) -> None:
    if errors:
        listed = "; ".join(errors[:_MAX_LISTED])
        more = f"; and {len(errors) - _MAX_LISTED} more" if len(errors) > _MAX_LISTED else ""
        raise UserError(
            f"{len(errors)} problem(s) in the data for the provider (nothing was uploaded): {listed}{more}."
        )


def jsonl_bytes(rows: list[dict[str, Any]]) -> bytes:
    """Deterministic JSONL: the same rows always give the same bytes (and so the same sha256)."""
    encode = json.JSONEncoder(ensure_ascii=False, sort_keys=True).encode  # = json.dumps with these options
    return ("\n".join(map(encode, rows)) + "\n" if rows else "").encode("utf-8")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    """Write the file and return the sha256 of its contents."""
    data = jsonl_bytes(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return hashlib.sha256(data).hexdigest()
