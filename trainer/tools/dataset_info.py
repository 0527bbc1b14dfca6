"""LLaMA-Factory's dataset registry (``data/dataset_info.json``) -> one ``conf/dataset/<name>.yaml`` per entry, for
``hydratune import data/dataset_info.json --out conf/dataset``.

hydratune's registry of named datasets is the Hydra group itself: ``dataset=NAME`` picks ``conf/dataset/NAME.yaml``
(or ``<--config-dir>/dataset/NAME.yaml``), checked against the schema when the config is composed, like every other
choice. So a LLaMA-Factory registry is imported once into such files rather than read at run time: each entry
becomes an option (its file resolved against the registry's folder, its columns and role tags as
``dataset.columns`` / ``dataset.roles``), and every entry that would read differently is listed with the reason."""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from trainer.config.errors import UserError

#: Keys that only a dataset_info.json entry has; a mapping whose values carry them is a registry.
ENTRY_KEYS = ("file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
#: LLaMA-Factory's alpaca columns -> hydratune's alpaca fields.
ALPACA = {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}
#: LLaMA-Factory's sharegpt columns and tags -> hydratune's sharegpt fields.
SHAREGPT = {"messages": "messages", "tools": "tools", "role_tag": "role", "content_tag": "content"}
ROLE_TAGS = {"user_tag": "user", "assistant_tag": "assistant", "system_tag": "system", "observation_tag": "tool"}
UNREAD = ("images", "videos", "audios", "kto_tag", "history")


def is_registry(spec: Any) -> bool:
    return (
        isinstance(spec, dict)
        and bool(spec)
        and all(isinstance(v, dict) and any(k in v for k in ENTRY_KEYS) for v in spec.values())
    )


def option(name: str, entry: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The conf/dataset option of one entry (a UserError naming what hydratune would read differently)."""
    refused = []
    if not entry.get("file_name") and not entry.get("hf_hub_url"):
        sources = ", ".join(k for k in ENTRY_KEYS if entry.get(k))
        refused.append(f"{sources} (neither a local file nor a Hugging Face dataset)")
    refused += [f"{k} ({entry[k]})" for k in ("subset", "folder") if entry.get(k)]
    columns: dict[str, str] = dict(entry.get("columns") or {})
    refused += [f"columns.{c}" for c in UNREAD if c in columns]
    formatting = entry.get("formatting", "alpaca")
    if entry.get("ranking") and (formatting != "alpaca" or "query" in columns):
        refused.append("ranking (preference pairs in a shape other than alpaca's prompt / chosen / rejected)")
    if formatting == "sharegpt" and "system" in columns:
        refused.append("columns.system (a system prompt beside the messages)")
    if refused:
        raise UserError(f"{name}: {', '.join(refused)}")
    if entry.get("file_name"):
        path = (folder / str(entry["file_name"])).resolve()
        cwd = Path.cwd().resolve()
        location = os.path.relpath(path, cwd) if path.is_relative_to(cwd) else str(path)
    else:
        location = str(entry["hf_hub_url"])
    out: dict[str, Any] = {"defaults": ["schema_dataset", "_self_"], "name": name, "path": location}
    if entry.get("ranking"):
        mapping = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}
        out["format"] = "preference"
        out["columns"] = {mapping[k]: v for k, v in columns.items() if k in mapping and v != mapping[k]}
    elif formatting == "sharegpt":
        tags = dict(entry.get("tags") or {})
        out["format"] = "sharegpt"
        given = {**columns, **{k: v for k, v in tags.items() if k in SHAREGPT}}
        defaults = {"messages": "conversations", "role": "from", "content": "value", "tools": "tools"}  # the format's
        out["columns"] = {SHAREGPT[k]: v for k, v in given.items() if k in SHAREGPT and defaults[SHAREGPT[k]] != v}
        tag_defaults = {
            "user_tag": "human",
            "assistant_tag": "gpt",
            "system_tag": "system",
            "observation_tag": "observation",
        }
        out["roles"] = {str(tags.get(tag, default)): ROLE_TAGS[tag] for tag, default in tag_defaults.items()}
    elif set(columns) == {"prompt"}:  # LLaMA-Factory's pre-training entries name only the text column
        out["format"] = "text"
        out["columns"] = {"text": columns["prompt"]} if columns["prompt"] != "text" else {}
    else:
        out["format"] = "alpaca"
        out["columns"] = {ALPACA[k]: v for k, v in columns.items() if k in ALPACA and ALPACA[k] != v}
    if not out["columns"]:
        del out["columns"]
    if entry.get("split"):
        out["split"] = str(entry["split"])
    if entry.get("num_samples"):
        out["max_train_examples"] = int(entry["num_samples"])
    return out


def convert(spec: dict[str, Any], source: Path, out_dir: Path, force: bool) -> None:
    """Write one option per entry into ``out_dir`` (a conf/dataset folder); list those refused and why."""
    written, refused = [], []
    for name, entry in spec.items():
        try:
            node = option(str(name), entry, source.parent)
        except UserError as exc:
            refused.append(str(exc))
            continue
        file = out_dir / f"{name}.yaml"
        if file.exists() and not force:
            refused.append(f"{name}: {file} already exists (--force overwrites it)")
            continue
        header = f"# Imported from {source} (LLaMA-Factory), entry {name}, by `hydratune import`.\n"
        if node["format"] == "sharegpt":
            header += "# Turns tagged function_call (LLaMA-Factory's function_tag) map to no role here.\n"
        header += f"#   hydratune dataset={name}\n"
        out_dir.mkdir(parents=True, exist_ok=True)
        file.write_text(header + yaml.safe_dump(node, sort_keys=False, width=116), encoding="utf-8")
        written.append(name)
    if not written:
        raise UserError(
            f"{source}: no entry could be imported ({'; '.join(refused)}). Nothing was written: hydratune's "
            "formats read local files and Hugging Face datasets as alpaca, sharegpt, text or preference rows."
        )
    conf = out_dir.resolve().parent
    search = (
        "" if conf == Path(str(resources.files("trainer.conf"))).resolve() else f" 'hydra.searchpath=[file://{conf}]'"
    )
    sys.stdout.write(f"wrote {len(written)} dataset option(s) into {out_dir}: {', '.join(written)}\n")
    if out_dir.name != "dataset":
        sys.stdout.write("(Hydra finds dataset options in a folder named dataset/)\n")
    sys.stdout.write(f"use one with: hydratune dataset={written[0]}{search}\n")
    for reason in refused:
        sys.stdout.write(f"not imported: {reason}\n")
