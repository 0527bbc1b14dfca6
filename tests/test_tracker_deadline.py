"""Trackers get a whole-answer deadline: a slow-drip tarpit, a server that never answers, a closed port and a server
whose API hangs each cost at most logger.timeout_s plus a little, then the run trains and finishes with metrics.jsonl.

The servers are real sockets on 127.0.0.1; each stops by itself (daemon threads, bounded waits, closed sockets)."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from contextlib import contextmanager

import pytest

from tests.helpers import hydratune
from trainer.run import tracker_deadline
from trainer.run.tracker_deadline import Unanswered

pytestmark = pytest.mark.serial  # counts on the cores being free (make test runs these alone)

DRIP_EVERY_S = 3.0
TIMEOUT_S = 5
#: What a run may spend past logger.timeout_s on a tracker that does not answer (scheduling on a busy machine).
SLACK_S = 3.0


class Server:
    """A fault on 127.0.0.1: ``drip`` answers ``HTTP/1.1 200 OK`` then one byte every 3 s, forever; ``silent``
    accepts and never answers; ``api_hangs`` answers HEAD at once and never answers anything else; ``closed`` is
    a port nothing listens on. ``held`` collects how long each client kept its connection open (seconds)."""

    def __init__(self, kind: str) -> None:
        self.kind, self.held = kind, []
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        if kind == "closed":
            self.sock.close()
            return
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by close()
                return
            threading.Thread(target=self._handle, args=(conn, time.monotonic()), daemon=True).start()

    def _handle(self, conn: socket.socket, accepted: float) -> None:
        with conn:
            request = self._read(conn, 5.0)
            if self.kind == "api_hangs" and request.startswith(b"HEAD"):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            if self.kind == "drip":
                conn.sendall(b"HTTP/1.1 200 OK")
            while not self.stop.is_set():  # until the client hangs up (or the test ends)
                readable, _, _ = select.select([conn], [], [], DRIP_EVERY_S if self.kind == "drip" else 0.2)
                if readable and not self._recv(conn):
                    self.held.append(time.monotonic() - accepted)
                    return
                if self.kind == "drip" and not readable:
                    try:
                        conn.sendall(b"x")
                    except OSError:
                        self.held.append(time.monotonic() - accepted)
                        return

    @staticmethod
    def _recv(conn: socket.socket) -> bytes:
        try:
            return conn.recv(65536)
        except OSError:
            return b""

    def _read(self, conn: socket.socket, limit_s: float) -> bytes:
        """The request's first bytes (what came within ``limit_s``)."""
        readable, _, _ = select.select([conn], [], [], limit_s)
        return self._recv(conn) if readable else b""

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@contextmanager
def fault(kind: str):
    server = Server(kind)
    try:
        yield server
    finally:
        server.close()


# ------------------------------------------------------------------ the probe and the watchdog


def test_the_probe_gives_up_on_a_slow_drip_at_the_deadline_not_per_read():
    # Each byte comes within 3 s, so a per-read timeout of 4 s never fires; the whole answer must come within 4 s.
    with fault("drip") as server:
        started = time.monotonic()
        with pytest.raises(Unanswered, match=r"the whole answer \(1[56] bytes came\) did not come within 4 s"):
            tracker_deadline.probe(server.url, 4)
        assert time.monotonic() - started < 4 + SLACK_S
        deadline = time.monotonic() + 5
        while not server.held and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(server.held) == 1 and server.held[0] < 4 + SLACK_S  # the probe hung up: the server saw it go


def test_the_probe_names_what_did_not_come():
    with fault("silent") as server, pytest.raises(Unanswered, match="the first byte of the answer did not come"):
        tracker_deadline.probe(server.url, 1)
    with fault("closed") as server, pytest.raises(Unanswered, match="connecting failed: Connection refused"):
        tracker_deadline.probe(server.url, 1)
    with pytest.raises(Unanswered, match=r"ftp://\*\*\*redacted\*\*\*@host is not an http\(s\) URL"):
        tracker_deadline.probe("ftp://user:pw@host", 1)


def test_the_probe_passes_a_server_that_answers():
    with fault("api_hangs") as server:
        tracker_deadline.probe(server.url + "/api", 2)


def test_the_watchdog_returns_raises_or_stops_waiting():
    assert tracker_deadline.within(5, lambda: 42, "answer") == 42
    with pytest.raises(KeyError, match="mine"):
        tracker_deadline.within(5, lambda: {}["mine"], "lookup")
    release = threading.Event()
    try:
        with pytest.raises(Unanswered, match=r"wandb.init did not return within 0.2 s"):
            tracker_deadline.within(0.2, lambda: release.wait(30), "wandb.init")
    finally:
        release.set()  # the abandoned call ends too


def test_the_fallback_line_redacts_the_url():
    line = tracker_deadline.fallback_line(
        "mlflow", "https://bob:PW@mlflow.example/?token=t", 5, Unanswered("x"), "jsonl only", "fix it"
    )
    assert "PW" not in line and line.startswith("mlflow: the server https://***redacted***@mlflow.example")


def test_mlflow_fails_fast_on_a_closed_port_without_the_probe(monkeypatch):
    """MLflow's own client, bounded by hydratune (1 retry, no backoff): seconds, not its default 256 s."""
    mlflow = pytest.importorskip("mlflow")
    from trainer.run import mlflow_tracking

    for name in ("MAX_RETRIES", "BACKOFF_FACTOR", "TIMEOUT"):
        monkeypatch.delenv(f"MLFLOW_HTTP_REQUEST_{name}", raising=False)
    mlflow_tracking.bound_http_retries(TIMEOUT_S)
    with fault("closed") as server:
        started = time.monotonic()
        with pytest.raises(mlflow.exceptions.MlflowException):
            mlflow.MlflowClient(tracking_uri=server.url).get_experiment_by_name("x")
    assert time.monotonic() - started < TIMEOUT_S + SLACK_S


def test_mlflow_bounds_leave_the_users_own_settings(monkeypatch):
    from trainer.run import mlflow_tracking

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", raising=False)
    mlflow_tracking.bound_http_retries(2.5)
    import os

    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"
    assert [mlflow_tracking.networked(u) for u in ("http://h:5000", "sqlite:////tmp/m.db", "/tmp/mlruns", None)] == [
        True,
        False,
        False,
        False,
    ]


# ------------------------------------------------------------------ whole runs (tiny model)

TINY = ["model=tiny_random", "hardware.threads=1", "train.max_steps=2", "eval=none", f"logger.timeout_s={TIMEOUT_S}"]
TRACKERS = {
    "wandb": (["logger=wandb", "logger.mode=online"], "WANDB_BASE_URL"),
    "mlflow": (["logger=mlflow"], "MLFLOW_TRACKING_URI"),
}
#: What the one log line says timed out, per fault.
REASONS = {
    "drip": "bytes came) did not come within 5 s",  # 15 or 16: the status line, then a byte at 3 s
    "silent": "the first byte of the answer did not come within 5 s",
    "closed": "connecting failed: Connection refused",
}
WALL: dict[str, float] = {}


def _run(tmp_path, cache_dir, overrides, env):
    started = time.monotonic()
    result = hydratune(*TINY, *overrides, f"hydra.run.dir={tmp_path}", cache=cache_dir, env=env, timeout=300)
    return result, time.monotonic() - started


def _trained(tmp_path, result) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert [r["step"] for r in losses] == [1, 2]
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "ok"


@pytest.fixture(scope="module")
def baseline_s(tmp_path_factory, cache_dir) -> float:
    """The same run with logger=jsonl (no tracker): what the faults are compared with."""
    run_dir = tmp_path_factory.mktemp("baseline")
    result, wall = _run(run_dir, cache_dir, ["logger=jsonl"], {})
    _trained(run_dir, result)
    WALL["baseline"] = wall
    return wall


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["drip", "silent", "closed"])
@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_an_unanswering_tracker_costs_the_deadline_then_the_run_trains(tmp_path, cache_dir, baseline_s, tracker, kind):
    overrides, variable = TRACKERS[tracker]
    with fault(kind) as server:
        env = {variable: server.url, "WANDB_API_KEY": "k" * 40, "WANDB_MODE": ""}
        result, wall = _run(tmp_path, cache_dir, overrides, env)
        held = list(server.held)
    WALL[f"{tracker}/{kind}"] = wall
    print(f"{tracker}/{kind}: {wall:.1f} s (jsonl alone {baseline_s:.1f} s), connections held {held}")
    _trained(tmp_path, result)
    log = (tmp_path / "hydratune.log").read_text()
    lines = [line for line in log.splitlines() if f"{tracker}: the server {server.url} did not answer" in line]
    assert len(lines) == 1 and REASONS[kind] in lines[0], log[-3000:]
    assert ("logging offline instead" if tracker == "wandb" else "metrics.jsonl only") in lines[0]
    if kind != "closed":  # the server saw hydratune hang up at the deadline
        assert held and max(held) < TIMEOUT_S + SLACK_S, held
    assert wall < baseline_s + TIMEOUT_S + 30  # a generous bound against scheduling noise; before: > 240 s
    if tracker == "wandb":
        assert list((tmp_path / "wandb").glob("offline-run-*"))  # `wandb sync` uploads it later


@pytest.mark.slow
@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_library_start_that_hangs_is_cut_at_the_deadline(tmp_path, cache_dir, baseline_s, tracker):
    """The server answers hydratune's probe, then never answers the library (wandb.init, MLflow's run creation):
    the watchdog, not the library's own timeout, lets the run go on."""
    overrides, variable = TRACKERS[tracker]
    with fault("api_hangs") as server:
        env = {variable: server.url, "WANDB_API_KEY": "k" * 40, "WANDB_MODE": ""}
        result, wall = _run(tmp_path, cache_dir, overrides, env)
    WALL[f"{tracker}/api_hangs"] = wall
    print(f"{tracker}/api_hangs: {wall:.1f} s (jsonl alone {baseline_s:.1f} s)")
    _trained(tmp_path, result)
    log = (tmp_path / "hydratune.log").read_text()
    what = "wandb.init" if tracker == "wandb" else "creating the MLflow run"
    lines = [line for line in log.splitlines() if f"{tracker}: the server {server.url} did not answer" in line]
    assert len(lines) == 1 and f"{what} did not return within 5 s" in lines[0], log[-3000:]
    assert "metrics.jsonl only" in lines[0]
    assert wall < baseline_s + TIMEOUT_S + 30
