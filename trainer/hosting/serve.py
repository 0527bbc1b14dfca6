"""`hydratune serve hydra.run.dir=RUN` (or a model / adapter folder): the fine-tuned model behind an
OpenAI-compatible chat-completions endpoint, served by a real engine started as a child process.

- ``serve=transformers``: `transformers serve` (CPU or GPU). It loads full models only, so a LoRA run is served as
  its merged export (trainer.hosting.export: training tokenizer and chat template, generation stops at the training EOS).
- ``serve=vllm``: `vllm serve` on CUDA; a LoRA adapter is loaded as an adapter (``--enable-lora``) with the run's
  tokenizer, unless training added tokens (then the merged export is served).

Both engines run behind trainer.hosting.gate, inside the engine's process: the API key (serve.api_key_env), the
new-token cap (serve.max_tokens), 400s for bad requests, the concurrency limit with its queue and 429s, the
cancellation of a request whose client has gone, and a ``tools=`` request's calls returned as ``tool_calls`` (the
served folder's chat template renders the tools as training did: trainer.hosting.tool_template).

The server is ready when its /health answers 200; the address and model name are printed and written to
RUN/serve.json. SIGTERM or Ctrl-C stops the engine (SIGTERM, then SIGKILL after 30 s). ``--bench`` runs the load
test of trainer.hosting.bench against it instead of waiting, then stops it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.config.errors import UserError
from trainer.hosting import engines, export, gate
from trainer.run.signals import sigterm_interrupts

log = logging.getLogger(__name__)
STOP_TIMEOUT_S = 30.0
#: The folder that holds the trainer package, first on the engine's path: it runs trainer.hosting.gate.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


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
    """Refuse an engine that cannot run here, or a key variable that is unset, before any model loads."""
    engine = engines.get(str(serve_cfg.engine))
    key_env = serve_cfg.api_key_env
    if key_env is not None and not os.environ.get(key_env):
        raise UserError(
            f"serve.api_key_env={key_env}, but the environment variable {key_env} is empty or unset. Export the "
            f"key first (export {key_env}=$(openssl rand -hex 24)) and give it to the clients as their api_key."
        )
    engine.check(serve_cfg)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def engine_command(
    source: export.Source, serve_cfg: Any, cache_dir: str, port: int, workdir: Path
) -> tuple[list[str], str]:
    """(argv, served model name) for the configured engine (trainer.hosting.engines); run with cwd=workdir."""
    return engines.get(str(serve_cfg.engine)).command(source, serve_cfg, cache_dir, port, workdir)


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
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
            gate.ENV: gate_settings(serve_cfg),
        }
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))
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


def gate_settings(serve_cfg: Any) -> str:
    """The gate's settings for the engine process (trainer.hosting.gate.ENV): no secret, the key's variable name."""
    return gate.Limits(
        max_tokens=serve_cfg.max_tokens,
        concurrency=serve_cfg.concurrency,
        queue=serve_cfg.queue,
        queue_timeout_s=serve_cfg.queue_timeout_s,
        api_key_env=serve_cfg.api_key_env,
        stream_upstream=engines.get(str(serve_cfg.engine)).STREAM_UPSTREAM,
    ).to_env()


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
    with sigterm_interrupts():  # SIGTERM stops the engine as Ctrl-C does
        try:
            with serving(source, cfg) as server:
                info = {"base_url": server.base_url, "model": server.model, "engine": cfg.serve.engine}
                state.write_text(json.dumps(info, indent=1) + "\n")
                print(f"hydratune: serving {source.folder} as model '{server.model}' at {server.base_url} (ready)")
                if "--bench" in flags:
                    from trainer.hosting import bench as serve_bench

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
