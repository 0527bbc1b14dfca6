"""Every supported row format, normalised to hydratune's canonical rows.

- chat, alpaca, sharegpt, template -> ``{"messages": [{"role", "content", optional "weight", "name"}]}``
- prompt_completion -> ``{"prompt": str, "completion": str}``
- text -> ``{"text": str}``
- preference -> ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}`` (TRL's conversational form)
- unpaired -> ``{"prompt": [messages], "completion": [messages], "label": bool}`` (KTO: one answer, good or bad)
- prompt -> ``{"prompt": [messages] or str, "reference": str or None}`` (GRPO, distillation: prompts only)

A normaliser takes one raw row and returns the canonical row, or raises :class:`Invalid` with everything that is
wrong with it (each problem a short phrase; the caller prefixes ``file:line``).
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Callable
from typing import Any

from trainer.errors import UserError, closest
from trainer.schema import SourceSchema, TemplatesSchema

FORMATS = ("chat", "alpaca", "sharegpt", "prompt_completion", "text", "template", "preference", "unpaired", "prompt")
ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = {"role", "content", "name", "weight"}

#: Canonical field -> the column (or key) it is read from, per format; ``dataset.columns`` overrides entries.
DEFAULT_COLUMNS: dict[str, dict[str, str]] = {
    "chat": {"messages": "messages", "role": "role", "content": "content"},
    "sharegpt": {"messages": "conversations", "role": "from", "content": "value"},
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output", "system": "system"},
    "prompt_completion": {"prompt": "prompt", "completion": "completion"},
    "text": {"text": "text"},
    "template": {},
    "preference": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"},
    "unpaired": {"prompt": "prompt", "completion": "completion", "label": "label"},
    "prompt": {"prompt": "prompt", "reference": "reference"},
}
#: Source role name -> chat role, per format; ``dataset.roles`` adds or overrides entries.
DEFAULT_ROLES: dict[str, dict[str, str]] = {
    "sharegpt": {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"},
}


class Invalid(Exception):
    """A row that cannot be used; ``problems`` lists what is wrong with it."""

    def __init__(self, *problems: str):
        super().__init__("; ".join(problems))
        self.problems = list(problems)


Normaliser = Callable[[Any], dict]


def make_normaliser(source: SourceSchema, ignored: Counter) -> Normaliser:
    """The normaliser for one source config (format, columns, roles, templates).

    ``ignored`` counts keys a row has that the format does not use (reported as a warning, not an error).
    """
    fmt = source.format
    if fmt not in FORMATS:
        raise UserError(
            f"dataset.format={fmt} is not a known format.{closest(fmt, FORMATS)} Allowed: {', '.join(FORMATS)}."
        )
    columns = {**DEFAULT_COLUMNS[fmt], **source.columns}
    unknown = set(source.columns) - set(DEFAULT_COLUMNS[fmt]) if fmt != "template" else set()
    if unknown:
        raise UserError(
            f"dataset.columns has {', '.join(sorted(unknown))}, which format={fmt} does not use. "
            f"Fields it reads: {', '.join(DEFAULT_COLUMNS[fmt]) or 'none (use templates)'}."
        )
    roles = {r: r for r in ROLES} | DEFAULT_ROLES.get(fmt, {}) | source.roles
    bad_targets = {v for v in roles.values() if v not in ROLES}
    if bad_targets:
        raise UserError(
            f"dataset.roles maps to {', '.join(sorted(bad_targets))}; a role must map to one of {', '.join(ROLES)}."
        )
    if fmt in ("chat", "sharegpt"):
        return _chat(columns, roles, ignored)
    if fmt == "alpaca":
        return _alpaca(columns, ignored)
    if fmt == "prompt_completion":
        return _prompt_completion(columns, ignored)
    if fmt == "text":
        return _text(columns, ignored)
    if fmt == "template":
        return _template(source.templates, ignored)
    if fmt == "unpaired":
        return _unpaired(columns, roles, ignored)
    if fmt == "prompt":
        return _prompt(columns, roles, ignored)
    return _preference(columns, roles, ignored)


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


def _chat(columns: dict, roles: dict, ignored: Counter) -> Normaliser:
    key, role_key, content_key = columns["messages"], columns["role"], columns["content"]
    allowed_keys = {role_key, content_key, "name", "weight"}
    used = {key}

    def normalise(row: Any) -> dict:
        row = _object(row)
        if _cell(row, key) is None:
            raise Invalid(f"no '{key}' list (keys: {_keys(row)})")
        if len(row) > 1:
            _count_ignored(row, used, ignored)
        return {"messages": messages(row[key], key, True)}

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
                if type(role) is str and role in roles and type(content) is str and content and not content.isspace():
                    role = roles[role]
                    out.append({"role": role, "content": content})
                    answered = answered or role == "assistant"
                    continue
            if not isinstance(message, dict):
                problems.append(f"message {i} is not an object (got {_type(message)})")
                continue
            padded = [k for k in ("weight", "name") if k in message and message[k] is None]  # Arrow's absent keys
            if padded:
                message = {k: v for k, v in message.items() if k not in padded}
            problem = _message_problem(message, i, role_key, content_key, allowed_keys, roles)
            if problem:
                problems.append(problem)
                continue
            canonical = {"role": roles[message[role_key]], "content": message[content_key]}
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
    if not content.strip():
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


def _alpaca(columns: dict, ignored: Counter) -> Normaliser:
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


def _prompt_completion(columns: dict, ignored: Counter) -> Normaliser:
    used = set(columns.values())

    def normalise(row: Any) -> dict:
        row = _object(row)
        _count_ignored(row, used, ignored)
        return {
            "prompt": _string(row, columns["prompt"], allow_empty=True),
            "completion": _string(row, columns["completion"]),
        }

    return normalise


def _text(columns: dict, ignored: Counter) -> Normaliser:
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


def _template(templates: TemplatesSchema, ignored: Counter) -> Normaliser:
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


def _preference(columns: dict, roles: dict, ignored: Counter) -> Normaliser:
    chat = _chat({"messages": "messages", "role": "role", "content": "content"}, roles, Counter())
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


def _unpaired(columns: dict, roles: dict, ignored: Counter) -> Normaliser:
    chat = _chat({"messages": "messages", "role": "role", "content": "content"}, roles, Counter())
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


def _prompt(columns: dict, roles: dict, ignored: Counter) -> Normaliser:
    chat = _chat({"messages": "messages", "role": "role", "content": "content"}, roles, Counter())
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
