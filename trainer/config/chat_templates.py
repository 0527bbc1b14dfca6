"""Named chat templates: ``model.chat_template`` is a name from this registry (chatml, llama3, mistral, qwen, gemma,
phi, zephyr, alpaca: one Jinja file each in trainer/assets/templates/, written for hydratune), a path to a .jinja
file, or literal Jinja text. Each file's first line names the special tokens the template writes (added to the
tokenizer when it lacks them, the embeddings resized) and the end-of-turn token that ends generation::

    {#- special_tokens: <|im_start|> <|im_end|> ; eos: <|im_end|> -#}

A short word that is no name and holds no Jinja syntax is refused when the config is composed, listing the names.
A new template is one file there."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from trainer.config.errors import UserError, closest

_HEADER = re.compile(r"\{#-?\s*special_tokens:(?P<special>[^;]*);\s*eos:(?P<eos>[^#]*?)\s*-?#\}")


@dataclass(frozen=True)
class ChatTemplate:
    source: str  #: the Jinja text
    special_tokens: tuple[str, ...] = ()  #: tokens the template writes, added to a tokenizer that lacks them
    eos: str | None = None  #: the token that ends an assistant turn (None: the tokenizer's own eos)


def _folder():
    return resources.files("trainer") / "assets" / "templates"


def names() -> list[str]:
    return sorted(f.name.removesuffix(".jinja") for f in _folder().iterdir() if f.name.endswith(".jinja"))


def _parse(source: str) -> ChatTemplate:
    header = _HEADER.match(source)
    if header is None:
        return ChatTemplate(source)
    return ChatTemplate(source, tuple(header["special"].split()), header["eos"].strip() or None)


def is_jinja(value: str) -> bool:
    return any(mark in value for mark in ("{{", "{%", "{#"))


def resolve(value: str) -> ChatTemplate:
    """The template ``model.chat_template`` names: a registered name, a .jinja file, or literal Jinja."""
    if value in names():
        return _parse((_folder() / f"{value}.jinja").read_text(encoding="utf-8"))
    if is_jinja(value):
        return ChatTemplate(value)
    path = Path(value).expanduser()
    if value.endswith((".jinja", ".j2")) or path.is_file():
        try:
            return _parse(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise UserError(
                f"model.chat_template={value} is read as a template file, which cannot be read: "
                f"{exc.strerror or exc}. Give an existing .jinja file, a name ({', '.join(names())}) or Jinja text."
            ) from None
    raise UserError(
        f"model.chat_template={value!r} is not a chat template name hydratune knows.{closest(value, names())} "
        f"Names: {', '.join(names())}. Or give the path of a .jinja file, or the Jinja text itself "
        "(null keeps the tokenizer's own template)."
    )


def check(model) -> None:  # noqa: ANN001 - the composed model group
    """The check pass's rule: model.chat_template resolves (a name, a readable file, or Jinja text)."""
    if model.chat_template is not None:
        resolve(str(model.chat_template))
