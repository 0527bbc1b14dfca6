"""The config reference (docs/reference/config.md), generated from the schema when the site is built.

Nothing here names a schema class or a module below the one import: the schemas are found by walking what
``schema.register()`` put in Hydra's ConfigStore, then every dataclass their fields reach; the options are the YAML
files of the installed ``trainer.conf`` package. Each field's text is its ``#:`` comment in the dataclass (the one
place a field is documented), so the page cannot drift from the code.

As a MkDocs hook (``hooks:`` in mkdocs.yml) it replaces the ``<!-- config-reference -->`` marker of the reference page;
``python docs/hooks/config_reference.py`` prints the generated Markdown.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import io
import sys
import textwrap
import tokenize
import typing
from importlib import resources
from typing import Any

import yaml

from trainer.config import schema  # the one line to change if the schema moves

MARKER = "<!-- config-reference -->"

#: Library classes whose own arguments a pass-through node takes, and where their documentation is.
LIBRARY_DOCS = {
    "trl.SFTConfig": "https://huggingface.co/docs/trl/sft_trainer#trl.SFTConfig",
    "trl.DPOConfig": "https://huggingface.co/docs/trl/dpo_trainer#trl.DPOConfig",
    "trl.KTOConfig": "https://huggingface.co/docs/trl/kto_trainer#trl.KTOConfig",
    "trl.experimental.orpo.ORPOConfig": "https://huggingface.co/docs/trl/orpo_trainer",
    "trl.RewardConfig": "https://huggingface.co/docs/trl/reward_trainer#trl.RewardConfig",
    "trl.GRPOConfig": "https://huggingface.co/docs/trl/grpo_trainer#trl.GRPOConfig",
    "trl.DistillationConfig": "https://huggingface.co/docs/trl/index",
    "peft.LoraConfig": "https://huggingface.co/docs/peft/package_reference/lora#peft.LoraConfig",
    "transformers.BitsAndBytesConfig": (
        "https://huggingface.co/docs/transformers/main_classes/quantization#transformers.BitsAndBytesConfig"
    ),
    "transformers.TrainingArguments": (
        "https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments"
    ),
}
#: Pass-through nodes: config key -> the library class whose arguments it takes (objective.args: the option's own).
PASS_THROUGH = {
    "train": "trl.SFTConfig",
    "method.peft": "peft.LoraConfig",
    "method.quantization": "transformers.BitsAndBytesConfig",
}


# ---------------------------------------------------------------- what the schema holds


@dataclasses.dataclass
class Field:
    owner: type  # the dataclass that declares it
    name: str
    type: str
    default: str
    allowed: str
    comment: str
    nested: type | None  # a dataclass this field holds (documented in its own section)


def registered() -> dict[tuple[str | None, str], type]:
    """(group, option name) -> dataclass of every schema in Hydra's ConfigStore (``schema_*`` entries)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    schema.register()
    found: dict[tuple[str | None, str], type] = {}

    def walk(node: dict, group: str | None) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, key if group is None else f"{group}/{key}")
            elif key.startswith("schema_") and key.endswith(".yaml"):
                kind = OmegaConf.get_type(value.node)
                if dataclasses.is_dataclass(kind):
                    found[(group, key[: -len(".yaml")])] = typing.cast(type, kind)

    walk(ConfigStore.instance().repo, None)
    return found


def _hints(cls: type) -> dict[str, Any]:
    module = sys.modules[cls.__module__]
    return typing.get_type_hints(cls, globalns=vars(module))


def _dataclasses_in(hint: Any) -> list[type]:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return [hint]
    return [c for arg in typing.get_args(hint) for c in _dataclasses_in(arg)]


def reachable(roots: list[type]) -> list[type]:
    """Every dataclass the roots hold, at any depth (base classes of the roots included), roots first."""
    seen: list[type] = []
    todo = list(roots)
    while todo:
        cls = todo.pop(0)
        if cls in seen:
            continue
        seen.append(cls)
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            todo += _dataclasses_in(hints[f.name])
        todo += [b for b in cls.__mro__[1:] if dataclasses.is_dataclass(b)]
    return seen


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its ``#:`` comment (the comment lines right above it) in the class's own source."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[str, str] = {}
    pending: list[str] = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            if tok.string.startswith("#:"):
                pending.append(tok.string[2:].strip())
        elif tok.type == tokenize.NAME and tok.line[: tok.start[1]].strip() == "" and tok.start[1] == 4:
            after = tok.line[tok.end[1] :].lstrip()
            if after.startswith(":") and pending:
                comments[tok.string] = " ".join(pending)
            pending = []
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            if tok.start[1] <= 4 and tok.type != tokenize.STRING:
                pending = []
    return comments


def _declared_by(cls: type, name: str) -> type:
    for base in cls.__mro__:
        if name in base.__dict__.get("__annotations__", {}):
            return base
    return cls


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if hint is Any:
        return "any"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(hint))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "str"
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint.__name__
    return getattr(hint, "__name__", str(hint))


def _enum_in(hint: Any) -> type[enum.Enum] | None:
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint
    for arg in typing.get_args(hint):
        found = _enum_in(arg)
        if found is not None:
            return found
    return None


def _value(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return "(its section)"
    if value is None:
        return "null"
    if value == "???":
        return "required"
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def fields_of(cls: type) -> list[Field]:
    hints = _hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        owner = _declared_by(cls, f.name)
        hint = hints[f.name]
        if f.default is not dataclasses.MISSING:
            default = _value(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = _value(f.default_factory())
        else:
            default = "required"
        allowed = []
        choice = _enum_in(hint)
        if choice is not None:
            allowed.append(", ".join(f"`{m.value}`" for m in choice))
        low, high = f.metadata.get("min"), f.metadata.get("max")
        if low is not None:
            allowed.append(f"{'>' if f.metadata.get('exclusive') else '>='} {low:g}")
        if high is not None:
            allowed.append(f"<= {high:g}")
        nested = _dataclasses_in(hint)
        out.append(
            Field(
                owner=owner,
                name=f.name,
                type=_type_name(hint),
                default=default,
                allowed="; ".join(allowed),
                comment=field_comments(owner).get(f.name, ""),
                nested=nested[0] if nested else None,
            )
        )
    return out


# ---------------------------------------------------------------- the YAML options


def options() -> dict[str, dict[str, tuple[str, dict]]]:
    """Group -> option name -> (the file's leading comment, its YAML), for every conf/<group>/*.yaml."""
    conf = resources.files("trainer.conf")
    out: dict[str, dict[str, tuple[str, dict]]] = {}
    for group in sorted(d.name for d in conf.iterdir() if d.is_dir() and not d.name.startswith(("_", "hydra"))):
        out[group] = {}
        for path in sorted((conf / group).iterdir(), key=lambda p: p.name):
            if not path.name.endswith(".yaml"):
                continue
            text = path.read_text()
            head = []
            for line in text.splitlines():
                if not line.startswith("#"):
                    break
                if not line.startswith("# @package"):
                    text_line = line[1:].strip()
                    if text_line.startswith("hydratune "):  # an example command: shown as code
                        text_line = f"`{text_line.split('  #')[0].strip()}`"
                    head.append(text_line)
            out[group][path.name[:-5]] = (" ".join(head), yaml.safe_load(text) or {})
    return out


def _schema_of(body: dict, group_options: dict[str, tuple[str, dict]] | None = None) -> str | None:
    """The schema an option extends: named in its defaults list, or through another option of its group that it
    extends (``dora``: ``defaults: [lora, _self_]``)."""
    for item in body.get("defaults", []):
        if isinstance(item, str) and item.startswith("schema_"):
            return item
        if isinstance(item, str) and group_options and item in group_options:
            return _schema_of(group_options[item][1], group_options)
    return None


def _flat(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict) and node and not any(k == "_target_" for k in node):
        return [pair for k, v in node.items() for pair in _flat(v, f"{prefix}.{k}" if prefix else str(k))]
    return [(prefix, node)]


# ---------------------------------------------------------------- Markdown


def _anchor(cls: type) -> str:
    return cls.__name__.lower()


def _cell(text: str) -> str:
    """Text for a table cell: pipes escaped, and ``<run dir>``-style words outside code spans kept from reading as
    HTML tags."""
    parts = text.replace("|", "\\|").replace("\n", " ").split("`")
    for i in range(0, len(parts), 2):  # the even parts are outside code spans
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _link(cls_name: str) -> str:
    url = LIBRARY_DOCS.get(cls_name)
    return f"[`{cls_name}`]({url})" if url else f"`{cls_name}`"


def section(cls: type, paths: list[str], used_by: list[str], rendered: set[tuple[type, str]]) -> str:
    doc = inspect.getdoc(cls) or ""
    if doc.startswith(f"{cls.__name__}("):  # dataclass's generated signature, not a docstring
        doc = ""
    where = paths[0] if paths else cls.__name__
    title = "Root keys" if where == "" else f"`{where}`"
    if 0 < len(used_by) <= 5:  # which options of the group this is (hardware=cpu vs hardware=ddp ...)
        title += f": {', '.join(used_by)}"
    lines = [f"### {title} {{#{_anchor(cls)}}}", ""]
    intro = f"Schema `{cls.__name__}`."
    if doc:
        intro += f" {' '.join(doc.split(chr(10) + chr(10))[0].split())}"
    if len(paths) > 1:
        intro += " Also at " + ", ".join(f"`{p}`" for p in paths[1:]) + "."
    if used_by:
        intro += f" Options: {', '.join(f'`{o}`' for o in used_by)}."
    lines += [intro, ""]
    lines += ["| key | type | default | allowed | what it is |", "|---|---|---|---|---|"]
    for f in fields_of(cls):
        comment = f.comment
        if f.nested is not None:
            comment += f" See [{f.nested.__name__}](#{_anchor(f.nested)})."
        for path in paths:
            full = f"{path}.{f.name}" if path else f.name
            if full in PASS_THROUGH:
                comment += f" Takes the arguments of {_link(PASS_THROUGH[full])}, under their own names."
        name = f"`{f.name}`"
        lines.append(
            f"| {name} | {_cell(f.type)} | {_cell(f'`{f.default}`' if f.default else '')} | {_cell(f.allowed)} "
            f"| {_cell(comment.strip())} |"
        )
        rendered.add((f.owner, f.name))
    return "\n".join(lines) + "\n"


def _paths(roots: dict[tuple[str | None, str], type]) -> dict[type, list[str]]:
    """Dataclass -> the dotted config paths it is found at (``hardware.sky``, ``eval.compare_models[]`` ...)."""
    paths: dict[type, list[str]] = {}

    def walk(cls: type, path: str) -> None:
        if path in paths.setdefault(cls, []) or path.count(".") > 4:
            return
        paths[cls].append(path)
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            origin = typing.get_origin(hint)
            suffix = "[]" if origin is list else ".<name>" if origin is dict else ""
            for nested in _dataclasses_in(hint):
                walk(nested, f"{path}.{f.name}{suffix}" if path else f"{f.name}{suffix}")

    for (group, _name), cls in roots.items():
        walk(cls, group or "")
    return paths


def render() -> tuple[str, set[tuple[type, str]]]:
    """The reference's Markdown and the (dataclass, field) pairs it documents."""
    roots = registered()
    classes = reachable(list(roots.values()))
    paths = _paths(roots)
    rendered: set[tuple[type, str]] = set()
    by_option = {name: cls for (_group, name), cls in roots.items()}
    out = []

    out.append("## Groups and their options\n")
    out.append(
        "Pick an option with `GROUP=OPTION` (`hydratune model=tiny_random`); each option is a YAML file under "
        "`conf/GROUP/` that extends its group's schema and sets the values listed. Any key can then be overridden "
        "(`hydratune model.dtype=float32`).\n"
    )
    for group, opts in options().items():
        out.append(f"### `{group}` {{#group-{group}}}\n")
        out.append("| option | schema | what it is | sets |\n|---|---|---|---|")
        for name, (head, body) in opts.items():
            schema_name = _schema_of(body, opts)
            target = by_option.get(schema_name) if schema_name else None
            schema_cell = f"[`{target.__name__}`](#{_anchor(target)})" if target else "overlay"
            values = [
                f"`{k}: {_value(v)}`" for k, v in _flat({k: v for k, v in body.items() if k not in ("defaults",)})
            ]
            if group == "objective" and isinstance(body.get("config"), str):
                head += f" `objective.args` and `train` take the arguments of {_link(body['config'])}."
            out.append(f"| `{name}` | {schema_cell} | {_cell(head)} | {'<br>'.join(_cell(v) for v in values)} |")
        out.append("")

    out.append("## Keys\n")
    out.append(
        "Every key of every schema, with its type, default, the values it allows and what it is. A key marked "
        "*required* must be set by the option you pick or on the command line. Nested blocks have their own "
        "section, linked from the key that holds them.\n"
    )
    users: dict[type, list[str]] = {}
    for opts in options().values():
        for name, (_head, body) in opts.items():
            target = by_option.get(_schema_of(body, opts) or "")
            if target is not None:
                users.setdefault(target, []).append(name)
    for cls in classes:
        out.append(section(cls, paths.get(cls, []), users.get(cls, []), rendered))
    return "\n".join(out), rendered


def all_fields() -> set[tuple[type, str]]:
    """Every (declaring dataclass, field name) the schema has, found as render() finds them."""
    classes = reachable(list(registered().values()))
    return {(f.owner, f.name) for cls in classes for f in fields_of(cls)}


# ---------------------------------------------------------------- MkDocs hook


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    text, _ = render()
    return markdown.replace(MARKER, text)


if __name__ == "__main__":
    print(render()[0])
