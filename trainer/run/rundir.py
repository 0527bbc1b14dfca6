"""The run directory: one per run. Locks it while a run uses it, guards a finished run's results (a finished run
is never modified: every command refuses, or with overwrite=true moves the whole old run into
``previous-<time>/``), checks that a resumed run has the config it started with, records the resolved config
(secrets redacted) and the overrides, and marks the run finished, failed or interrupted (status.json).
Every file here is written atomically (trainer.run.atomic)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainer.config.errors import UserError
from trainer.config.secrets import REDACTED, SECRET_KEY, redact_override, redacted, token_to_env  # noqa: F401 - re-exported
from trainer.run import atomic

log = logging.getLogger(__name__)

STATUS = "status.json"
LOCK = "run.lock"
#: Config keys that may differ when a run resumes: where things go and how they are logged and evaluated.
RESUME_FREE = (
    "output_dir", "overwrite", "cache_dir", "resume", "run_name", "hardware", "logger", "eval", "optimize", "serve",
    "export",
)  # fmt: skip

_locks: dict[Path, int] = {}
#: Run dirs this process started a run in (past the finished-run guard): only these get a status.json.
_owned: set[Path] = set()


# ---------------------------------------------------------------- lock


def lock(run_dir: Path, command: str) -> None:
    """Hold an exclusive lock on ``run_dir`` (flock on run.lock, which records PID and host) until
    :func:`release` or the process ends (the kernel drops it on any exit, SIGKILL included)."""
    run_dir = Path(run_dir)
    if run_dir in _locks:
        return
    path = run_dir / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise atomic.disk_error(exc, path) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_lock(fd)
        os.close(fd)
        raise UserError(
            f"{run_dir} is in use by another hydratune run: PID {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')} ({holder.get('command', '?')}, started {_when(holder.get('started'))}). "
            f"Nothing was changed. Wait for it to end, stop it (`kill {holder.get('pid', 'PID')}` on that host), or "
            "choose another directory with hydra.run.dir=..."
        ) from None
    previous = _read_lock(fd)
    if previous.get("pid") and previous.get("pid") != os.getpid():
        dead = previous.get("host") == socket.gethostname() and not atomic.pid_alive(int(previous["pid"]))
        if dead:
            log.warning(
                "%s: stale lock of PID %s on %s (no longer running) taken over", path, previous["pid"], previous["host"]
            )
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "started": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    _locks[run_dir] = fd


def _read_lock(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _when(started) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, int | float) else "?"


def release(run_dir: Path | str | None = None) -> None:
    """Drop the lock on ``run_dir`` (every lock this process holds when None)."""
    for folder in [Path(run_dir)] if run_dir is not None else list(_locks):
        _owned.discard(folder.resolve())
        fd = _locks.pop(folder, None)
        if fd is not None:
            try:
                os.ftruncate(fd, 0)  # a record left in run.lock means its run died holding it
            except OSError:
                pass
            os.close(fd)


# ---------------------------------------------------------------- start


def start(cfg: DictConfig, run_dir: Path, command: str, carry: tuple[str, ...] = ()) -> Path:
    """Lock ``run_dir`` for ``command``; refuse to modify a finished run (or move it aside with overwrite=true);
    check a resumed run's config; write config.yaml, overrides.json and status.json ("incomplete"). Returns the
    run dir to use: ``eval`` of a finished run goes into a new ``eval-<time>/`` sub-dir of it (``cfg.output_dir``
    then names it), which starts with a copy of the records in ``carry`` that the evaluation reads."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(
            f"The run dir {run_dir} is a file, not a folder. Choose another directory with hydra.run.dir=..."
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise atomic.disk_error(exc, run_dir / LOCK) from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise UserError(
            f"The run dir {run_dir} is not writable by you. Fix its permissions or choose another directory with "
            "hydra.run.dir=..."
        )
    lock(run_dir, command)
    atomic.clean_partials(run_dir)
    token_to_env({"hub_token": OmegaConf.select(cfg, "train.hub_token", default=None)})  # workers inherit it
    state = _state(run_dir)
    if state and cfg.overwrite:
        move_aside(run_dir)
    elif state == "finished" and command == "eval":
        return start(cfg, eval_dir(cfg, run_dir, carry), command)
    elif state == "finished":
        raise UserError(
            f"{run_dir} already holds a finished run (status.json, metrics.json, report.md). A finished run is never "
            f"modified: nothing was changed. Choose another directory (hydra.run.dir=...), or pass overwrite=true to "
            f"{command} there: the whole old run (config, records, results, model) is then moved into a "
            "'previous-<time>' folder beside it, not deleted. (`hydratune eval` there writes into a new "
            "eval-<time> sub-dir.)"
        )
    elif state == "training" and command != "train":
        raise UserError(
            f"{run_dir} holds an unfinished training run (checkpoints, config.yaml): `hydratune {command}` there would "
            "replace the records its resume checks. Nothing was changed. Choose another directory (hydra.run.dir=...), "
            f"run `hydratune train` with the same overrides to finish it, or pass overwrite=true to move it aside."
        )
    elif state == "training":
        check_resume(cfg, run_dir)
    _owned.add(run_dir.resolve())
    resolved = redacted(OmegaConf.to_container(cfg, resolve=True))
    atomic.write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))
    atomic.write_json(run_dir / "overrides.json", task_overrides(), indent=1)
    _write_status(run_dir, "incomplete", command, time.time())
    return run_dir


def eval_dir(cfg: DictConfig, run_dir: Path, carry: tuple[str, ...]) -> Path:
    """A new ``eval-<time>/`` sub-dir of the finished run in ``run_dir`` (never modified) for ``hydratune eval``."""
    sub = _fresh_subdir(run_dir, "eval")
    for name in carry:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, sub / name)
    cfg.output_dir = str(sub)
    for handler in _reopen_logs_under(run_dir):  # this run's log lines go into the sub-dir from now on
        handler.close()
        handler.baseFilename = str(sub / Path(handler.baseFilename).name)
    log.warning("%s holds a finished run, which is never modified: this evaluation goes into %s", run_dir, sub)
    return sub


def _fresh_subdir(run_dir: Path, prefix: str) -> Path:
    """A new ``<prefix>-<time>[-N]/`` folder in ``run_dir``, made now (never one that exists)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    sub, n = run_dir / f"{prefix}-{stamp}", 1
    while sub.exists():
        n += 1
        sub = run_dir / f"{prefix}-{stamp}-{n}"
    sub.mkdir()
    return sub


def _state(run_dir: Path) -> str:
    """'finished' (status ok, or results), 'training' (an unfinished training run), 'other' (records of an
    unfinished prepare or eval), '' (nothing of a run)."""
    status = _json(run_dir / STATUS)
    if status.get("status") == "ok" or (run_dir / "metrics.json").exists():
        return "finished"
    if (run_dir / "checkpoints").is_dir() or status.get("command") == "train":
        return "training"
    return "other" if any(_entries(run_dir)) else ""


def _entries(run_dir: Path):
    """What a run left (not the lock, earlier runs moved aside, or the log Hydra opened for this run)."""
    for p in run_dir.iterdir():
        if p.name != LOCK and not p.name.startswith(("previous-", "eval-")) and p.suffix != ".log":
            yield p


def move_aside(run_dir: Path) -> Path:
    """overwrite=true: move everything of the old run (config, records, logs, metrics, model, checkpoints) into
    ``previous-<time>/`` beside the new one; nothing is deleted."""
    aside = _fresh_subdir(run_dir, "previous")
    logs = _reopen_logs_under(run_dir)
    for entry in list(run_dir.iterdir()):
        if entry.name == LOCK or entry.name.startswith("previous-"):
            continue
        shutil.move(str(entry), aside / entry.name)
    for handler in logs:  # Hydra's hydratune.log handler: the next line opens a fresh file for this run
        handler.close()
    log.warning("overwrite=true: moved the previous run (config, records, results) to %s", aside)
    return aside


def _reopen_logs_under(run_dir: Path) -> list[logging.FileHandler]:
    handlers = [h for lg in [logging.getLogger(), *_loggers()] for h in lg.handlers]
    return [
        h
        for h in handlers
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename).resolve().parent == run_dir.resolve()
    ]


def _loggers():
    return [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]


def check_resume(cfg: DictConfig, run_dir: Path) -> None:
    """A run that resumes must have the config it started with (unless resume.allow_changes=true)."""
    old_file = run_dir / "config.yaml"
    if not old_file.is_file() or cfg.resume.allow_changes:
        return
    try:
        old = OmegaConf.to_container(OmegaConf.load(old_file), resolve=False)
    except Exception:  # noqa: BLE001 - an unreadable record: nothing to compare with
        log.warning("%s is unreadable: the resumed run's config cannot be checked against it", old_file)
        return
    new = redacted(OmegaConf.to_container(cfg, resolve=True))
    changes = [
        f"{key}: {_show(a)} -> {_show(b)}"
        for key, a, b in _differences(old, new)
        if key.split(".", 1)[0] not in RESUME_FREE
    ]
    if changes:
        shown = "; ".join(changes[:12]) + (f"; and {len(changes) - 12} more" if len(changes) > 12 else "")
        raise UserError(
            f"{run_dir} holds an unfinished run started with a different config, and resuming it would mix the two: "
            f"{shown}. Nothing was changed. Run with the original values to resume, choose another directory "
            "(hydra.run.dir=...), pass resume.allow_changes=true to resume with the new values anyway, or "
            "overwrite=true to start again (the old run is moved into 'previous-<time>')."
        )


def _differences(old, new, prefix: str = ""):
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            yield from _differences(old.get(key, "<unset>"), new.get(key, "<unset>"), f"{prefix}{key}.")
    elif old != new:
        yield prefix.rstrip("."), old, new


def _show(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [o for o in (redact_override(str(o)) for o in HydraConfig.get().overrides.task) if o is not None]


def objective(results: dict, metric: str = "finetuned.eval_loss") -> float | None:
    """The number a sweep optimizes: ``metric`` (a dotted path such as ``finetuned.exact_match``) in the
    results, or None when the run has no such number."""
    value: Any = results
    for part in metric.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# ---------------------------------------------------------------- status.json: how a run (of a sweep) ended


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def finished(cfg: DictConfig, command: str, started: float) -> float | None:
    """Record a run that ended normally (status ok) and return its configured objective from metrics.json."""
    run_dir = Path(cfg.output_dir)
    metrics_file = run_dir / "metrics.json"
    metrics = _json(metrics_file)
    value = objective(metrics, cfg.optimize.metric)
    if value is None and command == "train":
        log.warning("objective %s is not in %s: this run has no objective value", cfg.optimize.metric, metrics_file)
    _write_status(run_dir, "ok", command, started, objective=value, objective_metric=cfg.optimize.metric)
    return value


def failed(cfg: DictConfig, command: str, started: float, exc: BaseException, quiet: bool = False) -> None:
    """Record a failed run in status.json (the error, and the traceback of anything that is not a UserError)
    so that a sweep goes on and its summary reports the failure. Returns None, which Optuna records as a
    failed trial."""
    import traceback

    from trainer.config.secrets import redact_text

    user_error = isinstance(exc, UserError)
    trace = None if user_error else "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if quiet:  # a single run: the CLI prints the error
        pass
    elif user_error:
        log.error("run failed: %s", exc)
    else:
        log.error("run failed with %s: %s\n%s", type(exc).__name__, exc, trace)
    error = str(exc) if user_error else f"{type(exc).__name__}: {exc}"
    _write_status(
        Path(cfg.output_dir),
        "failed",
        command,
        started,
        error=redact_text(error),
        traceback=trace and redact_text(trace),
    )
    return None


def interrupted(cfg: DictConfig, command: str, started: float) -> None:
    """Ctrl-C or SIGTERM: status.json says "interrupted"; the run resumes from its last complete checkpoint."""
    _write_status(Path(cfg.output_dir), "interrupted", command, started)


def _write_status(run_dir: Path, status: str, command: str, started: float, **fields) -> None:
    if not may_record(run_dir):  # never over another run's (or a finished run's) status
        return
    record = {"status": status, "command": command, "overrides": task_overrides(), "pid": os.getpid()}
    record.update(started=started, finished=time.time())
    atomic.write_text(run_dir / STATUS, json.dumps({**record, **fields}, indent=1, default=str) + "\n")


def may_record(run_dir: Path) -> bool:
    """This process may write run_dir's status.json: it started a run there, or the dir is neither locked by
    another run nor holding a finished run (a run that failed before it started, e.g. on a config check)."""
    run_dir = Path(run_dir)
    if run_dir.resolve() in _owned:
        return True
    if not run_dir.is_dir() or _state(run_dir) == "finished":
        return False
    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
