"""``serve=transformers``: `transformers serve` (CPU or GPU), which loads full models only, so a LoRA run is served as
its merged export (trainer.hosting.export: the training tokenizer and chat template, generation stops at the
training EOS). It runs as ``python -m trainer.hosting.gate serve``: the library's server with hydratune's gate."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from trainer.hosting import export

#: The gate generates every request as a stream: the library cancels only a streamed generation whose client left.
STREAM_UPSTREAM = True


def check(serve_cfg: Any) -> None:
    """transformers serve runs wherever torch does."""


def command(source: export.Source, serve_cfg: Any, cache_dir: str, port: int, workdir: Path) -> tuple[list[str], str]:
    name = serve_cfg.model_name or source.name
    # transformers serve names a local model by its path: a link named after the run, in the server's cwd
    folder = export.merged_folder(source, cache_dir)
    (workdir / name).symlink_to(folder.resolve(), target_is_directory=True)
    argv = [sys.executable, "-m", "trainer.hosting.gate", "serve", name, "--host", serve_cfg.host, "--port", str(port)]
    argv += ["--device", serve_cfg.device, "--dtype", serve_cfg.dtype, "--log-level", "warning"]
    if serve_cfg.concurrency > 1:
        argv.append("--continuous-batching")
    return argv + list(serve_cfg.engine_args), name
