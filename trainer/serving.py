"""`hydratune serve hydra.run.dir=RUN` (or a model / adapter folder): the fine-tuned model behind an
OpenAI-compatible chat-completions endpoint, served by a real engine started as a child process.

- ``serve=transformers``: `transformers serve` (CPU or GPU). It loads full models only, so a LoRA run is served as
  its merged export (trainer.export: training tokenizer and chat template, generation stops at the training EOS).
- ``serve=vllm``: `vllm serve` on CUDA; a LoRA adapter is loaded as an adapter (``--enable-lora``) with the run's
  tokenizer, unless training added tokens (then the merged export is served).

The server is ready when its /health answers 200; the address and model name are printed and written to
RUN/serve.json. SIGTERM or Ctrl-C stops the engine (SIGTERM, then SIGKILL after 30 s). ``--bench`` runs the load
test of trainer.serve_bench against it instead of waiting, then stops it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer import export
from trainer.errors import UserError

log = logging.getLogger(__name__)
ENGINES = ("transformers", "vllm")
STOP_TIMEOUT_S = 30.0


@dataclass
class Server:
    process: subprocess.Popen
    base_url: str  # http://HOST:PORT/v1
    model: str  # the name clients send
    log_file: Path

    def stop(self) -> int:
        """SIGTERM (the engine shuts down cleanly), SIGKILL after STOP_TIMEOUT_S; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("the engine did not stop within %.0f s of SIGTERM: killed", STOP_TIMEOUT_S)
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def check_engine(serve_cfg: Any) -> None:
    """Refuse an engine that cannot run here, before any model loads."""
    if serve_cfg.engine not in ENGINES:
        raise UserError(
            f"serve.engine={serve_cfg.engine} is not an engine hydratune starts. Allowed: {', '.join(ENGINES)}."
        )
    if serve_cfg.engine == "transformers" and serve_cfg.max_tokens != 1024:
        raise UserError(
            f"serve.max_tokens={serve_cfg.max_tokens}: `transformers serve` fixes the default new-token limit at 1024 "
            "(a lower default is raised to 1024), so this setting applies to serve=vllm only. Leave it at 1024 and "
            "have clients send max_tokens with each request."
        )
    if serve_cfg.engine == "vllm":
        import torch

        if not torch.cuda.is_available():
            raise UserError(
                "serve=vllm needs a CUDA GPU and torch sees none on this machine. Use serve=transformers here "
                "(CPU or GPU), or run `hydratune serve serve=vllm` on a machine with an NVIDIA GPU and vLLM installed."
            )
        if not shutil.which("vllm"):
            raise UserError("serve=vllm: the `vllm` command is not installed (pip install vllm, on the GPU machine).")


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def engine_command(
    source: export.Source, serve_cfg: Any, cache_dir: str, port: int, workdir: Path
) -> tuple[list[str], str]:
    """(argv, served model name) for the configured engine; run with cwd=workdir."""
    name = serve_cfg.model_name or source.name
    common = ["--host", serve_cfg.host, "--port", str(port)]
    if serve_cfg.engine == "vllm":
        limits = ["--max-num-seqs", str(serve_cfg.concurrency)]
        limits += ["--override-generation-config", json.dumps({"max_new_tokens": serve_cfg.max_tokens})]
        if source.adapter and not source.added_tokens:
            rank = json.loads((source.folder / export.ADAPTER_CONFIG).read_text())["r"]
            base = export.base_path(source, cache_dir)
            argv = ["vllm", "serve", base, "--enable-lora", "--lora-modules", f"{name}={source.folder}"]
            argv += ["--max-lora-rank", str(rank), "--tokenizer", str(source.folder)]
        else:
            folder = export.merged_folder(source, cache_dir)
            argv = ["vllm", "serve", str(folder), "--served-model-name", name]
        dtype = [] if serve_cfg.dtype == "auto" else ["--dtype", serve_cfg.dtype]
        return argv + common + limits + dtype + list(serve_cfg.engine_args), name
    # transformers serve names a local model by its path: a link named after the run, in the server's cwd
    folder = export.merged_folder(source, cache_dir)
    link = workdir / name
    link.symlink_to(folder.resolve(), target_is_directory=True)
    argv = [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve", name]
    argv += common + ["--device", serve_cfg.device, "--dtype", serve_cfg.dtype, "--log-level", "warning"]
    if serve_cfg.concurrency > 1:
        argv.append("--continuous-batching")
    return argv + list(serve_cfg.engine_args), name


@contextmanager
def serving(source: export.Source, cfg: Any, log_file: Path | None = None) -> Iterator[Server]:
    """Start the engine, wait for its health check, yield the server; stop it however the block ends."""
    serve_cfg = cfg.serve
    port = serve_cfg.port or free_port(serve_cfg.host)
    with tempfile.TemporaryDirectory(prefix="hydratune-serve-") as tmp:
        workdir = Path(tmp)
        argv, name = engine_command(source, serve_cfg, cfg.cache_dir, port, workdir)
        log_file = log_file or (source.run_dir or source.folder) / "serve.log"
        log.info("starting %s: %s", serve_cfg.engine, " ".join(argv))
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        with open(log_file, "ab") as out:
            # its own session: a Ctrl-C in the terminal reaches hydratune, which stops the engine cleanly
            process = subprocess.Popen(
                argv, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        server = Server(process, f"http://{_client_host(serve_cfg.host)}:{port}/v1", name, log_file)
        try:
            wait_ready(server, serve_cfg.startup_timeout_s)
            yield server
        finally:
            code = server.stop()
            log.info("%s stopped (exit code %s)", serve_cfg.engine, code)


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def wait_ready(server: Server, timeout_s: float) -> None:
    """Poll /health until it answers 200; a UserError with the engine's last lines if it exits or times out."""
    health = server.base_url.removesuffix("/v1") + "/health"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise UserError(
                f"The serving engine exited with code {server.process.returncode}:\n{_tail(server.log_file)}"
            )
        try:
            with urllib.request.urlopen(health, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise UserError(
        f"The serving engine did not pass its health check within {timeout_s:.0f} s:\n{_tail(server.log_file)}"
    )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def main(args: list[str]) -> None:
    target, cfg, flags = export.command_config("serve", args)
    unknown = [f for f in flags if f != "--bench"]
    if unknown:
        raise UserError(f"`hydratune serve` knows the flag --bench only (got {' '.join(unknown)}).")
    check_engine(cfg.serve)
    source = export.find(target)
    state = (source.run_dir or source.folder) / "serve.json"
    with _signals_interrupt():
        try:
            with serving(source, cfg) as server:
                info = {"base_url": server.base_url, "model": server.model, "engine": cfg.serve.engine}
                state.write_text(json.dumps(info, indent=1) + "\n")
                print(f"hydratune: serving {source.folder} as model '{server.model}' at {server.base_url} (ready)")
                if "--bench" in flags:
                    from trainer import serve_bench

                    serve_bench.run(server, cfg, source)
                    return
                print("hydratune: Ctrl-C or SIGTERM stops the server.", flush=True)
                while server.process.poll() is None:
                    time.sleep(0.2)
                raise UserError(
                    f"The serving engine exited on its own (code {server.process.returncode}):\n{_tail(server.log_file)}"
                )
        except KeyboardInterrupt:
            print("hydratune: server stopped.", flush=True)
        finally:
            state.unlink(missing_ok=True)


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM interrupts like Ctrl-C, so that one path stops the engine cleanly."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
