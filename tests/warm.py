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

Scripts that call the ``hydratune`` command themselves (the documentation's run blocks) get it on PATH from
:func:`command_dir`: a ``hydratune`` that runs ``python tests/warm.py --client STATE ARGS``, a client importing only
the standard library that hands its own streams, directory and environment to the server, forwards SIGINT and SIGTERM
to the child and exits with its status. The child then runs as the console script does (``trainer.cli:main``, the
script's directory first on sys.path); a refused environment runs the real console script instead.
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
    """The variables of ``env`` read when the libraries are imported (PYTHONPATH is not: the child rebuilds sys.path
    from it)."""
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME) and k != "PYTHONPATH"}


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
    import resource

    for name, limits in request.get("rlimits", {}).items():  # as a preexec_fn would set them, before the run starts
        resource.setrlimit(getattr(resource, name), tuple(limits))
    if request.get("path0"):  # the console script's own directory, as its interpreter puts it first
        sys.path[0] = request["path0"]
    try:
        if request.get("entry"):  # as the console script runs: `sys.exit(main())`
            import importlib

            module, function = request["entry"].split(":")
            sys.argv = [request["argv0"], *request["args"]]
            code = _exit_code(getattr(importlib.import_module(module), function)())
        else:
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
    """``python -m trainer.cli ARGS`` in a warm child (:class:`Popen`), to its end, its output captured: None when a
    fork would not be faithful (the caller then starts a real process)."""
    import tempfile

    if not server().accepts(env):
        return None
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = Popen(args, env, cwd, stdout=out, stderr=err)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise subprocess.TimeoutExpired(["hydratune", *args], timeout) from None
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    return subprocess.CompletedProcess(process.args, process.wait(), stdout, stderr)


class Popen:
    """What the tests use of :class:`subprocess.Popen`, for ``python -m trainer.cli ARGS`` in a warm child. ``pid`` is
    the child's own, so a signal (SIGKILL included) reaches the run itself; its exit status comes over the socket.
    stdin is /dev/null; stdout and stderr are None (this process's), PIPE, DEVNULL, a file, or (stderr) STDOUT;
    ``rlimits`` (``{"RLIMIT_FSIZE": (soft, hard)}``) are set in the child before the run, as a preexec_fn would."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, stdout: Any = None, stderr: Any = None,
                 text: bool = False, rlimits: dict[str, tuple[int, int]] | None = None) -> None:  # fmt: skip
        self.args = [sys.executable, "-m", "trainer.cli", *args]
        self.returncode: int | None = None
        self.stdout: Any = None
        self.stderr: Any = None
        opened: list[int] = [os.open(os.devnull, os.O_RDONLY)]
        ends: list[int] = [opened[0]]
        for name, target in (("stdout", stdout), ("stderr", stderr)):
            if target is None:
                ends.append(1 if name == "stdout" else 2)
            elif target == subprocess.STDOUT:
                ends.append(ends[1])
            elif target == subprocess.DEVNULL:
                opened.append(os.open(os.devnull, os.O_WRONLY))
                ends.append(opened[-1])
            elif target == subprocess.PIPE:
                read, write = os.pipe()
                opened.append(write)
                ends.append(write)
                setattr(self, name, os.fdopen(read, "r" if text else "rb"))
            else:
                ends.append(target.fileno())
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._conn.connect(server().path)
        request = {"module": "trainer.cli", "args": args, "env": env, "cwd": str(cwd), "sigint": True}
        request["rlimits"] = rlimits or {}
        socket.send_fds(self._conn, [json.dumps(request).encode()], ends)
        for fd in opened:  # the child holds its own copies: a pipe ends when the child exits
            os.close(fd)
        self._buffer = b""
        self.pid = int(json.loads(self._line(None))["pid"])

    def _line(self, timeout: float | None) -> bytes:
        while b"\n" not in self._buffer:
            self._conn.settimeout(timeout)
            try:
                chunk = self._conn.recv(4096)
            except (TimeoutError, BlockingIOError):
                raise subprocess.TimeoutExpired(self.args, timeout or 0) from None
            if not chunk:
                raise RuntimeError("the warm server went away")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            status = json.loads(self._line(timeout))["status"]
            self.returncode = os.waitstatus_to_exitcode(status)
            self._conn.close()
        return self.returncode

    def poll(self) -> int | None:
        try:
            return self.wait(0)
        except subprocess.TimeoutExpired:
            return None

    def communicate(self, timeout: float | None = None) -> tuple[Any, Any]:
        """Read the pipes to their end (each in a thread: neither can fill up and block the child), then wait."""
        results: dict[str, Any] = {}
        readers = [
            threading.Thread(target=lambda n=name, f=stream: results.__setitem__(n, f.read()), daemon=True)
            for name, stream in (("stdout", self.stdout), ("stderr", self.stderr)) if stream is not None
        ]  # fmt: skip
        for reader in readers:
            reader.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        for reader in readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return results.get("stdout"), results.get("stderr")

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass  # exited; its status is on its way

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def popen(args: list[str], env: dict[str, str], cwd: Path, **streams: Any) -> Popen | subprocess.Popen:
    """``python -m trainer.cli ARGS`` started as :class:`subprocess.Popen` would start it: a warm child, or a real
    process where a fork would not be faithful."""
    if server().accepts(env):
        return Popen(args, env, cwd, **streams)
    return fresh_popen(args, env, cwd, **streams)


def fresh_popen(args: list[str], env: dict[str, str], cwd: Path, **streams: Any) -> subprocess.Popen:
    """The same in a fresh interpreter: SIGINT raises KeyboardInterrupt there too (a shell running the tests in the
    background ignores it, and children inherit that), ``rlimits`` are set before it starts."""
    limits = streams.pop("rlimits", None) or {}

    def before() -> None:
        import resource

        signal.signal(signal.SIGINT, signal.SIG_DFL)
        for name, pair in limits.items():
            resource.setrlimit(getattr(resource, name), pair)

    command = [sys.executable, "-m", "trainer.cli", *args]
    return subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, preexec_fn=before, **streams)


def command_dir(root: Path) -> Path:
    """A folder holding a ``hydratune`` command that runs through this process's warm server (put it first on PATH)."""
    warm = server()
    folder = root / "warm-bin"
    folder.mkdir(parents=True, exist_ok=True)
    state = folder / "state.json"
    console = Path(sys.executable).parent / "hydratune"
    state.write_text(json.dumps({"socket": warm.path, "env": import_time_env(warm.env), "console": str(console)}))
    script = folder / "hydratune"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" --client "{state}" "$@"\n')
    script.chmod(0o755)
    return folder


def client(state_file: str, args: list[str]) -> int:
    """The ``hydratune`` of :func:`command_dir`: this process's streams, directory and environment to a warm child."""
    state = json.loads(Path(state_file).read_text())
    env = dict(os.environ)
    if import_time_env(env) != state["env"] or not Path(state["socket"]).exists():
        os.execv(state["console"], [state["console"], *args])
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(state["socket"])
    request = {
        "entry": "trainer.cli:main", "argv0": state["console"], "path0": str(Path(state["console"]).parent),
        "args": args, "env": env, "cwd": os.getcwd(), "sigint": signal.getsignal(signal.SIGINT) is not signal.SIG_IGN,
    }  # fmt: skip
    socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
    reader = conn.makefile("rb")
    pid = json.loads(reader.readline())["pid"]
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, lambda number, _frame: os.kill(pid, number))
    status = json.loads(reader.readline())["status"]
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # the child died by a signal: so does this process, as a shell expects
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    if sys.argv[1] == "--client":
        sys.exit(client(sys.argv[2], sys.argv[3:]))
    serve(sys.argv[1])
