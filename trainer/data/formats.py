"""Every supported row format, normalised to hydratune's canonical rows.

- chat, alpaca, sharegpt, template -> ``{"messages": [{"role", "content", optional "weight", "name"}]}``; chat and
  sharegpt rows may also carry ``tools`` and messages with ``tool_calls``, ``tool_call_id`` and ``reasoning_content``
  (function calling and reasoning traces: trainer/data/tool_calls.py)
- prompt_completion -> ``{"prompt": str, "completion": str}``
- text -> ``{"text": str}``
- preference -> ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}`` (TRL's conversational form)
- unpaired -> ``{"prompt": [messages], "completion": [messages], "label": bool}`` (KTO: one answer, good or bad)
- prompt -> ``{"prompt": [messages] or str, "reference": str or None}`` (GRPO, distillation: prompts only)

A normaliser takes one raw row and returns the canonical row, or raises :class:`Invalid` with everything that is
wrong with it (each problem a short phrase; the caller prefixes ``file:line``).
"""

from __future__ import annotations

import json
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml
from omegaconf import DictConfig

from trainer.config.errors import UserError, closest
from trainer.config.schema import SourceSchema, TemplatesSchema
from trainer.data import tool_calls
from trainer.data.invalid import Invalid

__all__ = ["FORMATS", "Invalid", "data_format", "make_normaliser"]

ROLES = ("system", "user", "assistant", "tool")
MESSAGE_KEYS = {"role", "content", "name", "weight"}
Normaliser = Callable[[Any], dict]


@dataclass(frozen=True)
class Spec:
    """One source's resolved reading instructions: canonical field -> column, source role -> chat role, templates."""

    columns: dict[str, str]
    roles: dict[str, str]
    templates: TemplatesSchema


@dataclass(frozen=True)
class Format:
    """A registered row format: its builder (Spec, ignored-key counter) -> normaliser, the columns it reads by
    default (``dataset.columns`` overrides them), role aliases, and the objective data shapes its rows provide
    (objective.data: supervised, preference, unpaired, prompts)."""

    name: str
    build: Callable[[Spec, Counter], Normaliser]
    columns: dict[str, str]
    shapes: tuple[str, ...]
    roles: dict[str, str] = field(default_factory=dict)
    any_columns: bool = False  # template: its columns are whatever its templates name


#: dataset.format -> Format; filled by :func:`data_format` below (a new format is one decorated function here and
#: one conf/dataset/*.yaml option).
FORMATS: dict[str, Format] = {}


def data_format(
    name: str,
    *,
    columns: dict[str, str],
    shapes: tuple[str, ...],
    roles: dict[str, str] | None = None,
    any_columns: bool = False,
) -> Callable[[Callable[[Spec, Counter], Normaliser]], Callable[[Spec, Counter], Normaliser]]:
    """Register the decorated builder as ``dataset.format=name``."""

    def register(build: Callable[[Spec, Counter], Normaliser]) -> Callable[[Spec, Counter], Normaliser]:
        if name in FORMATS:
            raise ValueError(f"dataset.format={name} is registered twice")
        FORMATS[name] = Format(name, build, dict(columns), tuple(shapes), dict(roles or {}), any_columns)
        return build

    return register


def make_normaliser(source: SourceSchema, ignored: Counter) -> Normaliser:
    """The normaliser for one source config (format, columns, roles, templates).

    ``ignored`` counts keys a row has that the format does not use (reported as a warning, not an error).
    """
    fmt = FORMATS.get(str(source.format))
    if fmt is None:
        raise format_error(str(source.format))
    columns = {**fmt.columns, **source.columns}
    unknown = set(source.columns) - set(fmt.columns) if not fmt.any_columns else set()
    if unknown:
        raise UserError(
            f"dataset.columns has {', '.join(sorted(unknown))}, which format={fmt.name} does not use. "
            f"Fields it reads: {', '.join(fmt.columns) or 'none (use templates)'}."
        )
    roles = {r: r for r in ROLES} | fmt.roles | source.roles
    bad_targets = {v for v in roles.values() if v not in ROLES}
    if bad_targets:
        raise UserError(
            f"dataset.roles maps to {', '.join(sorted(bad_targets))}; a role must map to one of {', '.join(ROLES)}."
        )
    return fmt.build(Spec(columns, roles, source.templates), ignored)


def check_sources(cfg: DictConfig) -> None:
    """Compose-time: every source's format is registered and its rows provide the objective's data shape
    (objective.data). The check pass (trainer.config.checks) runs it through launchers.check."""
    from trainer.config.choices import DataShape
    from trainer.config.objective_rules import SHAPES

    obj, shape = cfg.objective, DataShape(str(cfg.objective.data))  # a closed choice: composed configs have one
    for source in [cfg.dataset, *cfg.dataset.mix]:
        fmt = FORMATS.get(str(source.format))
        if fmt is None:
            raise format_error(str(source.format))
        if shape not in fmt.shapes:
            names = [f.name for f in FORMATS.values() if shape in f.shapes]
            which = (
                f"dataset.format={names[0]}: {', '.join(FORMATS[names[0]].columns)}"
                if len(names) == 1
                else f"{', '.join(names[:-1])} or {names[-1]} rows"
            )
            shipped = [f"dataset={name}" for name, f in dataset_formats().items() if f in names]
            raise UserError(
                f"objective={obj.name} trains on {SHAPES[shape]} ({which}), but dataset={cfg.dataset.name} has "
                f"dataset.format={fmt.name}. Datasets that provide it: {', '.join(shipped) or 'none shipped'} "
                f"(or your own file with dataset.format={names[0]}); or pick an objective for this data"
                f"{' (objective=sft)' if 'supervised' in fmt.shapes else ''}."
            )


@cache
def dataset_formats() -> dict[str, str]:
    """dataset= option -> its format, read from the shipped conf/dataset/*.yaml."""
    out = {}
    for file in sorted((resources.files("trainer.conf") / "dataset").iterdir(), key=lambda f: f.name):
        if file.name.endswith(".yaml"):
            out[file.name.removesuffix(".yaml")] = str((yaml.safe_load(file.read_text()) or {}).get("format", "chat"))
    return out


def format_error(name: str) -> UserError:
    return UserError(
        f"dataset.format={name} is not a known format.{closest(name, FORMATS)} Allowed: {', '.join(FORMATS)}."
    )


def _object(row: Any) -> dict:
    if not isinstance(row, dict):
        raise Invalid(f"not a JSON object (got {_type(row)})")
    return row


def _cell(row: dict, key: str) -> Any:
    """The value under ``key``; None when the key is absent or null, which are one case here because Arrow stores
    a key that some rows lack as null in the rows that lack it."""
    return row.get(key)


def _type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", type(None): "null", bool: "a boolean"}
    names |= {int: "a number", float: "a number"}
    return names.get(type(value), f"a {type(value).__name__}")


def _keys(row: dict) -> str:
    return ", ".join(map(str, row)) or "none"


def _count_ignored(row: dict, used: set, ignored: Counter) -> None:
    for key in row:
        if key not in used:
            ignored[key] += 1


# ---------------------------------------------------------------- chat and sharegpt


@data_format(
    "chat",
    columns={"messages": "messages", "role": "role", "content": "content", "tools": "tools"},
    shapes=("supervised", "prompts"),
)
def chat(spec: Spec, ignored: Counter) -> Normaliser:
    columns, roles = spec.columns, spec.roles
    key, role_key, content_key = columns["messages"], columns["role"], columns["content"]
    tools_key = columns.get("tools", "tools")
    allowed_keys = {role_key, content_key, "name", "weight", *tool_calls.TOOL_KEYS}
    used = {key, tools_key}

    def normalise(row: Any) -> dict:
        row = _object(row)
        if _cell(row, key) is None:
            raise Invalid(f"no '{key}' list (keys: {_keys(row)})")
        tools = None
        if len(row) > 1:
            _count_ignored(row, used, ignored)
            tools = None if _cell(row, tools_key) is None else tool_calls.read_tools(row[tools_key], tools_key)
        out = messages(row[key], key, True)
        if tools is not None or tool_calls.structured(out):
            problems = tool_calls.check_conversation(out, tools)
            if problems:
                raise Invalid(*problems)
        return {"messages": out, "tools": tools} if tools is not None else {"messages": out}

    def messages(value: Any, what: str, need_assistant: bool) -> list[dict]:
        if not isinstance(value, list):
            raise Invalid(f"'{what}' must be a list of messages (got {_type(value)})")
        if not value:
            raise Invalid(f"'{what}' is empty")
        out, problems = [], []
        answered = False
        for i, message in enumerate(value, 1):
            if type(message) is dict and len(message) == 2:  # the common {role, content}: checked inline
                role, content = _cell(message, role_key), _cell(message, content_key)
                if (
                    type(role) is str
                    and role in roles
                    and roles[role] != "tool"
                    and type(content) is str
                    and content
                    and not content.isspace()
                    and "<think>" not in content[:64]
                ):
                    role = roles[role]
                    out.append({"role": role, "content": content})
                    answered = answered or role == "assistant"
                    continue
            if not isinstance(message, dict):
                problems.append(f"message {i} is not an object (got {_type(message)})")
                continue
            padded = [k for k in ("weight", "name", *tool_calls.TOOL_KEYS) if k in message and message[k] is None]
            if padded:  # Arrow's absent keys
                message = {k: v for k, v in message.items() if k not in padded}
            try:
                message = _tool_parts(message, i, role_key, content_key, roles)
            except Invalid as exc:
                problems += exc.problems
                continue
            problem = _message_problem(message, i, role_key, content_key, allowed_keys, roles)
            if problem:
                problems.append(problem)
                continue
            canonical = {"role": roles[message[role_key]], "content": message[content_key]}
            for extra in tool_calls.TOOL_KEYS:
                if extra in message:
                    canonical[extra] = message[extra]
            if "weight" in message:
                canonical["weight"] = message["weight"]
            if "name" in message:
                canonical["name"] = message["name"]
            out.append(canonical)
            answered = answered or canonical["role"] == "assistant"
        if not problems and need_assistant and not answered:
            problems.append("no assistant message (nothing to learn from)")
        if problems:
            raise Invalid(*problems)
        return out

    normalise.messages = messages  # type: ignore[attr-defined]  # reused by the preference format
    return normalise


@data_format(
    "sharegpt",
    columns={"messages": "conversations", "role": "from", "content": "value", "tools": "tools"},
    shapes=("supervised", "prompts"),
    roles={
        "human": "user",
        "gpt": "assistant",
        "system": "system",
        "user": "user",
        "assistant": "assistant",
        "function_call": "assistant",
        "observation": "tool",
    },
)
def sharegpt(spec: Spec, ignored: Counter) -> Normaliser:
    """ShareGPT rows; LLaMA-Factory's ``function_call`` turns (a JSON call, or a list of parallel calls) become
    assistant tool calls and its ``observation`` turns the tool results answering them, in order."""
    normalise = chat(spec, ignored)
    key, role_key, content_key = spec.columns["messages"], spec.columns["role"], spec.columns["content"]

    def calls_as_messages(row: Any) -> dict:
        turns = row.get(key) if isinstance(row, dict) else None
        if isinstance(turns, list) and any(isinstance(t, dict) and t.get(role_key) == "function_call" for t in turns):
            row = {**row, key: _sharegpt_calls(turns, role_key, content_key)}
        return normalise(row)

    calls_as_messages.messages = normalise.messages  # type: ignore[attr-defined]
    return calls_as_messages


def _sharegpt_calls(turns: list, role_key: str, content_key: str) -> list:
    out: list[Any] = []
    pending: list[Any] = []
    for i, turn in enumerate(turns, 1):
        if isinstance(turn, dict) and turn.get(role_key) == "function_call":
            value = turn.get(content_key)
            try:
                calls = json.loads(value) if isinstance(value, str) else value
            except json.JSONDecodeError as exc:
                raise Invalid(
                    f"message {i} (function_call) is not valid JSON ({exc.msg} at character {exc.pos}); write it as "
                    '{"name": ..., "arguments": {...}} or a list of such calls'
                ) from None
            calls = calls if isinstance(calls, list) else [calls]
            ids = [f"call_{i}_{k}" for k in range(1, len(calls) + 1)]
            tagged = [
                {**c, "id": c.get("id") or d} if isinstance(c, dict) else c for c, d in zip(calls, ids, strict=True)
            ]
            pending = [c.get("id") if isinstance(c, dict) else d for c, d in zip(tagged, ids, strict=True)]
            out.append({role_key: "function_call", content_key: "", "tool_calls": tagged})
        elif isinstance(turn, dict) and turn.get(role_key) == "observation" and "tool_call_id" not in turn:
            out.append({**turn, "tool_call_id": pending.pop(0)} if pending else turn)
        else:
            out.append(turn)
    return out


def _plain_chat(spec: Spec) -> Normaliser:
    """The chat normaliser for the message lists inside a pair or prompt row (OpenAI's message keys)."""
    return chat(Spec(dict(FORMATS["chat"].columns), spec.roles, spec.templates), Counter())


def _tool_parts(message: dict, i: int, role_key: str, content_key: str, roles: dict) -> dict:
    """The message with its tool calls read (arguments parsed), a ``<think>`` block read into ``reasoning_content``,
    and the empty content an assistant message with calls may have; raises :class:`Invalid` for a bad call."""
    role = roles.get(message.get(role_key)) if isinstance(message.get(role_key), str) else None
    if role is None:
        return message
    if "tool_calls" in message:
        if role != "assistant":
            raise Invalid(f"message {i} ({message[role_key]}) has tool_calls, which only assistant messages may have")
        message = {**message, "tool_calls": tool_calls.read_calls(message["tool_calls"], i)}
        if message.get(content_key) is None:
            message[content_key] = ""
    if role == "assistant" and isinstance(message.get(content_key), str) and "<think>" in message[content_key]:
        content, reasoning = tool_calls.split_think(message[content_key])
        if reasoning is not None:
            if "reasoning_content" in message:
                raise Invalid(f"message {i} has both reasoning_content and a <think> block; keep one")
            message = {**message, content_key: content, "reasoning_content": reasoning}
    if "reasoning_content" in message and not isinstance(message["reasoning_content"], str):
        raise Invalid(f"message {i} ({message[role_key]}) reasoning_content must be a string")
    if "reasoning_content" in message and role != "assistant":
        raise Invalid(
            f"message {i} ({message[role_key]}) has reasoning_content, which only assistant messages may have"
        )
    if "tool_call_id" in message and role != "tool":
        raise Invalid(f"message {i} ({message[role_key]}) has a tool_call_id, which only tool messages may have")
    return message


def _message_problem(message: dict, i: int, role_key: str, content_key: str, allowed: set, roles: dict) -> str:
    if role_key not in message:
        return f"message {i} has no '{role_key}'"
    role = message[role_key]
    if not isinstance(role, str) or role not in roles:
        names = sorted(roles)
        return (
            f"message {i} has unrecognized role {role!r}{closest(str(role), names)} (allowed: {', '.join(names)}; "
            "map other names with dataset.roles)"
        )
    if content_key not in message:
        return f"message {i} ({role}) has no '{content_key}'"
    content = message[content_key]
    if not isinstance(content, str):
        return f"message {i} ({role}) '{content_key}' must be a string (got {_type(content)})"
    if not content.strip() and not message.get("tool_calls") and not message.get("reasoning_content"):
        return f"message {i} ({role}) has empty content"
    for k in message:
        if k not in allowed:
            return f"message {i} ({role}) has an unrecognized key '{k}' (allowed: {', '.join(sorted(allowed))})"
    if "weight" in message:
        weight = message["weight"]
        if type(weight) not in (int, float) or weight not in (0, 1):
            return f"message {i} ({role}) weight must be 0 or 1 (got {weight!r})"
        if roles[role] != "assistant":
            return f"message {i} ({role}) has a weight, which only assistant messages may have"
        message["weight"] = int(weight)
    if "name" in message and not isinstance(message["name"], str):
        return f"message {i} ({role}) name must be a string (got {_type(message['name'])})"
    return ""


# ---------------------------------------------------------------- alpaca, prompt/completion, text


def _string(row: dict, column: str, required: bool = True, allow_empty: bool = False) -> str:
    if column not in row or row[column] is None:
        if required:
            raise Invalid(f"no '{column}' field (keys: {_keys(row)})")
        return ""
    value = row[column]
    if not isinstance(value, str):
        raise Invalid(f"'{column}' must be a string (got {_type(value)})")
    if required and not allow_empty and not value.strip():
        raise Invalid(f"'{column}' is empty")
    return value


@data_format(
    "alpaca",
    columns={"instruction": "instruction", "input": "input", "output": "output", "system": "system"},
    shapes=("supervised", "prompts"),
)
def alpaca(spec: Spec, ignored: Counter) -> Normaliser:
    columns = spec.columns
    used = set(columns.values())

    def normalise(row: Any) -> dict:
        row = _object(row)
        _count_ignored(row, used, ignored)
        instruction = _string(row, columns["instruction"])
        extra = _string(row, columns["input"], required=False)
        output = _string(row, columns["output"])
        system = _string(row, columns["system"], required=False)
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [{"role": "system", "content": system}] if system.strip() else []
        return {"messages": [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": output}]}

    return normalise


@data_format(
    "prompt_completion", columns={"prompt": "prompt", "completion": "completion"}, shapes=("supervised", "prompts")
)
def prompt_completion(spec: Spec, ignored: Counter) -> Normaliser:
    columns = spec.columns
    used = set(columns.values())

    def normalise(row: Any) -> dict:
        row = _object(row)
        _count_ignored(row, used, ignored)
        return {
            "prompt": _string(row, columns["prompt"], allow_empty=True),
            "completion": _string(row, columns["completion"]),
        }

    return normalise


@data_format("text", columns={"text": "text"}, shapes=("supervised",))
def text(spec: Spec, ignored: Counter) -> Normaliser:
    columns = spec.columns
    used = set(columns.values())

    def normalise(row: Any) -> dict:
        row = _object(row)
        _count_ignored(row, used, ignored)
        return {"text": _string(row, columns["text"])}

    return normalise


# ---------------------------------------------------------------- template over table columns


def template_fields(template: str, where: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise UserError(
            f"{where} is not a valid template ({exc}). Use {{column}} fields; write {{{{ and }}}} for literal braces."
        ) from None


@data_format("template", columns={}, shapes=("supervised", "prompts"), any_columns=True)
def template(spec: Spec, ignored: Counter) -> Normaliser:
    templates = spec.templates
    given = {"system": templates.system, "user": templates.user, "assistant": templates.assistant}
    parts: list[tuple[str, str]] = [(role, text) for role, text in given.items() if text]
    if not any(role == "assistant" for role, _ in parts) or not any(role == "user" for role, _ in parts):
        raise UserError(
            "format=template needs dataset.templates.user and dataset.templates.assistant "
            "(and optionally .system), each a string with {column} fields, e.g. "
            "templates.user='Title: {title}' templates.assistant='{answer}'."
        )
    fields = {role: template_fields(t, f"dataset.templates.{role}") for role, t in parts}
    used = {f for names in fields.values() for f in names}
    checked: list[bool] = []

    def normalise(row: Any) -> dict:
        row = _object(row)
        if not checked:
            check_template_columns(fields, row)
            checked.append(True)
        _count_ignored(row, used, ignored)
        missing = sorted({f for names in fields.values() for f in names if f not in row})
        if missing:
            raise Invalid(f"no column {', '.join(missing)} in this row (keys: {_keys(row)})")
        values = {k: ("" if v is None else str(v)) for k, v in row.items() if k in used}
        messages = []
        for role, template in parts:
            content = template.format_map(values)
            if not content.strip():
                empty = [f for f in fields[role] if not values[f].strip()]
                raise Invalid(f"the {role} message is empty (empty column: {', '.join(empty) or 'none'})")
            messages.append({"role": role, "content": content})
        return {"messages": messages}

    return normalise


def check_template_columns(fields: dict[str, list[str]], row: dict) -> None:
    for role, names in fields.items():
        unknown = [n for n in names if n not in row]
        if unknown:
            hint = closest(unknown[0], [str(k) for k in row])
            raise UserError(
                f"dataset.templates.{role} names the column {{{unknown[0]}}}, which the data does not "
                f"have.{hint} Available columns: {', '.join(map(str, row))}."
            )


# ---------------------------------------------------------------- preference pairs


@data_format(
    "preference",
    columns={"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"},
    shapes=("preference", "unpaired", "prompts"),
)
def preference(spec: Spec, ignored: Counter) -> Normaliser:
    columns, chat = spec.columns, _plain_chat(spec)
    used = set(columns.values())

    def normalise(row: Any) -> dict:
        row = _object(row)
        _count_ignored(row, used, ignored)
        if columns["prompt"] not in row and all(
            isinstance(_cell(row, columns[k]), str) for k in ("chosen", "rejected")
        ):
            return _split_texts(row[columns["chosen"]], row[columns["rejected"]], columns["prompt"])
        chosen = _turns(chat, row, columns["chosen"], "assistant", True)
        rejected = _turns(chat, row, columns["rejected"], "assistant", True)
        if columns["prompt"] in row:
            prompt = _turns(chat, row, columns["prompt"], "user", False)
        else:  # implicit prompt: the shared beginning of chosen and rejected
            n = 0
            while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
                n += 1
            prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
            if not prompt:
                raise Invalid(f"no '{columns['prompt']}' field and chosen/rejected share no prompt messages")
        if prompt[-1]["role"] == "assistant":
            raise Invalid("the prompt ends with an assistant message; it should end with the user's turn")
        if chosen == rejected:
            raise Invalid("chosen and rejected are identical")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}

    return normalise


def _split_texts(chosen: str, rejected: str, prompt_column: str) -> dict:
    """Two whole texts with no prompt column (AutoTrain's reward data: ``human: hi \\n bot: hello`` against
    ``human: hi \\n bot: go away``): their shared beginning, up to its last whitespace, is the prompt."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n > 0 and not chosen[n - 1].isspace():
        n -= 1
    if not chosen[:n].strip():
        raise Invalid(f"no '{prompt_column}' field and the chosen and rejected texts share no beginning (the prompt)")
    if chosen == rejected:
        raise Invalid("chosen and rejected are identical")
    prompt, answers = chosen[:n].rstrip(), (chosen[n:], rejected[n:])
    if not all(a.strip() for a in answers):
        raise Invalid("one answer is the beginning of the other: no answer is left after the shared prompt")
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": answers[0]}],
        "rejected": [{"role": "assistant", "content": answers[1]}],
    }


# ---------------------------------------------------------------- unpaired answers and prompts only


def _turns(chat: Normaliser, row: dict, column: str, role: str, need_assistant: bool) -> list[dict]:
    """A string (one message of ``role``) or a list of messages."""
    value = _cell(row, column)
    if isinstance(value, str):
        if not value.strip():
            raise Invalid(f"'{column}' is empty")
        return [{"role": role, "content": value}]
    if value is None:
        raise Invalid(f"no '{column}' field (keys: {_keys(row)})")
    return chat.messages(value, column, need_assistant)  # type: ignore[attr-defined]


@data_format(
    "unpaired", columns={"prompt": "prompt", "completion": "completion", "label": "label"}, shapes=("unpaired",)
)
def unpaired(spec: Spec, ignored: Counter) -> Normaliser:
    columns, chat = spec.columns, _plain_chat(spec)
    used = set(columns.values())

    def normalise(row: Any) -> dict:
        row = _object(row)
        _count_ignored(row, used, ignored)
        prompt = _turns(chat, row, columns["prompt"], "user", False)
        completion = _turns(chat, row, columns["completion"], "assistant", True)
        label = _cell(row, columns["label"])
        if not isinstance(label, bool):
            raise Invalid(f"'{columns['label']}' must be true (a good answer) or false (a bad one), got {label!r}")
        if prompt[-1]["role"] == "assistant":
            raise Invalid("the prompt ends with an assistant message; it should end with the user's turn")
        return {"prompt": prompt, "completion": completion, "label": label}

    return normalise


@data_format("prompt", columns={"prompt": "prompt", "reference": "reference"}, shapes=("prompts",))
def prompt(spec: Spec, ignored: Counter) -> Normaliser:
    columns, chat = spec.columns, _plain_chat(spec)
    used = set(columns.values())

    def normalise(row: Any) -> dict:
        row = _object(row)
        _count_ignored(row, used, ignored)
        raw = _cell(row, columns["prompt"])
        prompt = raw if isinstance(raw, str) and raw.strip() else _turns(chat, row, columns["prompt"], "user", False)
        if isinstance(prompt, list) and prompt[-1]["role"] == "assistant":
            raise Invalid("the prompt ends with an assistant message; it should end with the user's turn")
        reference = _string(row, columns["reference"], required=False) or None
        return {"prompt": prompt, "reference": reference}

    return normalise
