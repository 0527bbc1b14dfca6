"""``serve=vllm``: `vllm serve` on CUDA, with hydratune's gate as its ASGI middleware; a LoRA adapter is loaded as an
adapter (``--enable-lora``) with the run's tokenizer, unless training added tokens (then the merged export)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from trainer.config.errors import UserError
from trainer.hosting import export

#: vllm cancels a non-streaming request whose client has gone by itself.
STREAM_UPSTREAM = False


def check(serve_cfg: Any) -> None:
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            "serve=vllm needs a CUDA GPU and torch sees none on this machine. Use serve=transformers here "
            "(CPU or GPU), or run `hydratune serve serve=vllm` on a machine with an NVIDIA GPU and vLLM installed."
        )
    if not shutil.which("vllm"):
        raise UserError("serve=vllm: the `vllm` command is not installed (pip install vllm, on the GPU machine).")


def command(source: export.Source, serve_cfg: Any, cache_dir: str, port: int, workdir: Path) -> tuple[list[str], str]:
    name = serve_cfg.model_name or source.name
    if source.adapter and not source.added_tokens:
        rank = json.loads((source.folder / export.ADAPTER_CONFIG).read_text())["r"]
        base = export.base_path(source, cache_dir)
        argv = ["vllm", "serve", base, "--enable-lora", "--lora-modules", f"{name}={source.folder}"]
        argv += ["--max-lora-rank", str(rank), "--tokenizer", str(source.folder)]
    else:
        argv = ["vllm", "serve", str(export.merged_folder(source, cache_dir)), "--served-model-name", name]
    argv += ["--host", serve_cfg.host, "--port", str(port)]
    argv += ["--max-num-seqs", str(serve_cfg.concurrency), "--middleware", "trainer.hosting.gate.Gate"]
    argv += ["--override-generation-config", json.dumps({"max_new_tokens": serve_cfg.max_tokens})]
    if serve_cfg.dtype != "auto":
        argv += ["--dtype", serve_cfg.dtype]
    return argv + list(serve_cfg.engine_args), name
