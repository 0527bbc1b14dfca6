"""Run `hydratune` in a child forked from a warm interpreter: the tests' subprocess runs without paying torch's import
each time (seconds of CPU per run, hundreds of runs in the slow tier).

A server process (``python tests/warm.py SOCKET``) imports the heavy libraries hydratune uses (torch, transformers,
TRL, PEFT, datasets, Hydra) and none of hydratune itself, then forks one child per request. The child is set up as
``python -m trainer.cli ARGS`` would be in a fresh interpreter: the request's working directory, environment,
sys.path (its cwd, then its PYTHONPATH), standard streams (the caller's file descriptors, passed over the socket),
SIGINT disposition and argv; hydratune's own modules are imported fresh in the child. At exit it does what the
interpreter does (join threads, run atexit handlers, flush), and dies by the signal that killed it.

What a fork cannot reproduce is refused, and the caller (tests.helpers.hydratune) then starts a real subprocess: an
environment that differs from the server's in a variable read when the libraries are imported (HF_*, TORCH*, OMP_* ...).
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

#: Environment variables the preloaded libraries read when imported: a request whose value differs gets a real process.
IMPORT_TIME = (
    "HF_", "HUGGINGFACE", "TRANSFORMERS", "TRL", "PEFT", "ACCELERATE", "DATASETS", "TORCH", "PYTORCH", "OMP_", "MKL_",
    "KMP_", "GOMP", "CUDA", "NCCL", "TOKENIZERS", "HYDRA_", "PYTHON", "LD_", "MALLOC", "XDG_", "TMPDIR", "WANDB",
    "MLFLOW", "TRITON", "DEEPSPEED", "DS_", "BNB", "MPL",
)  # fmt: skip
PRELOAD = (
    "torch", "torch._dynamo", "torch.distributed.tensor", "transformers", "transformers.modeling_utils", "trl",
    "peft", "datasets", "accelerate", "hydra", "omegaconf",
    # what a tiny run imports lazily (measured: 2.3 s of its 4.7 s): the trainers, the tiny model's architecture, the
    # report's plots and statistics, wandb (transformers' is_wandb_available imports it)
    "transformers.trainer", "transformers.models.llama.modeling_llama", "trl.trainer.sft_trainer",
    "trl.trainer.dpo_trainer", "scipy.stats", "matplotlib.pyplot", "wandb",
)  # fmt: skip


def import_time_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME)}


# ---------------------------------------------------------------- the server


def serve(path: str) -> None:
    import gc

    import matplotlib

    matplotlib.use("Agg")  # as the report selects it, before pyplot is imported
    for name in PRELOAD:
        __import__(name)
    # What is preloaded is never garbage: frozen, a child's gc.collect() (trainer.run.memory.release, three per run)
    # walks only its own objects (0.27 s each otherwise), and no collection writes to the pages the fork shares.
    gc.freeze()
    assert not any(m.split(".")[0] in ("trainer", "launchers", "tests") for m in sys.modules), "hydratune preloaded"
    own = set(filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    base = [p for p in sys.path[1:] if p not in own]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        for _ready in selector.select(timeout=0.02):
            conn, _ = listener.accept()
            message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            request = json.loads(message)
            pid = os.fork()
            if pid == 0:
                listener.close()
                for other in children.values():
                    other.close()
                _child(request, fds, base)  # never returns
            for fd in fds:
                os.close(fd)
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            children[pid] = conn
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = children.pop(pid)
            try:
                conn.sendall(json.dumps({"status": status}).encode() + b"\n")
            except OSError:
                pass  # the caller went away
            conn.close()
        if os.getppid() == 1:  # the test session is gone
            return


def _child(request: dict[str, Any], fds: list[int], base: list[str]) -> None:
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    signal.signal(signal.SIGINT, signal.default_int_handler if request["sigint"] else signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL if sig != signal.SIGPIPE else signal.SIG_IGN)  # as Python starts
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [request["cwd"], *extra, *base]
    sys.path_importer_cache.clear()
    code = 0
    try:
        import runpy

        sys.argv = [request["module"], *request["args"]]
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except KeyboardInterrupt:
        import traceback

        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:  # noqa: BLE001 - as the interpreter does: the traceback, then exit status 1
        import traceback

        traceback.print_exc()
        code = 1
    _finish(code)


def _exit_code(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    sys.stderr.write(f"{value}\n")
    return 1


def _finish(code: int) -> None:
    """What the interpreter does at exit: wait for non-daemon threads, run atexit handlers, flush the streams."""
    try:
        threading._shutdown()  # type: ignore[attr-defined]
    except BaseException:  # noqa: BLE001
        pass
    try:
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            pass
    if code < 0:  # killed by a signal (Ctrl-C): die by it, as Python does after a KeyboardInterrupt
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


# ---------------------------------------------------------------- the client


class Server:
    """The warm server of this test process, started on first use and stopped at exit."""

    def __init__(self) -> None:
        self.path = f"/tmp/hydratune-warm-{os.getpid()}-{time.monotonic_ns()}.sock"
        self.env = dict(os.environ)
        self.process = subprocess.Popen(
            [sys.executable, __file__, self.path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=self.env,
            cwd=Path(__file__).resolve().parents[1],
        )
        assert self.process.stdout is not None
        line = b""
        while line.strip() != b"ready":  # what the preloaded libraries print first ("Running in WANDB offline mode")
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError("the warm server did not start")
        atexit.register(self.stop)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        Path(self.path).unlink(missing_ok=True)

    def accepts(self, env: dict[str, str]) -> bool:
        return import_time_env(env) == import_time_env(self.env) and self.process.poll() is None


_server: Server | None = None


def server() -> Server:
    global _server
    if _server is None:
        _server = Server()
    return _server


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess | None:
    """``python -m trainer.cli ARGS`` in a warm child, its output captured: None when a fork would not be faithful
    (the caller then starts a real process)."""
    import tempfile

    warm = server()
    if not warm.accepts(env):
        return None
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, open(os.devnull) as null:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(warm.path)
        request = {"module": "trainer.cli", "args": args, "env": env, "cwd": str(cwd), "sigint": True}
        socket.send_fds(conn, [json.dumps(request).encode()], [null.fileno(), out.fileno(), err.fileno()])
        reader = conn.makefile("rb")
        pid = json.loads(reader.readline())["pid"]
        conn.settimeout(timeout)
        try:
            line = reader.readline()
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            raise subprocess.TimeoutExpired(["hydratune", *args], timeout) from None
        finally:
            conn.settimeout(None)
        status = json.loads(line)["status"]
        conn.close()
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    return subprocess.CompletedProcess([sys.executable, "-m", "trainer.cli", *args], code, stdout, stderr)


if __name__ == "__main__":
    serve(sys.argv[1])
