"""Atomic file writes: a temporary file beside the target, fsync, rename. A reader (or a rerun after a crash)
sees the old file or the new one, never half of one. A full or read-only disk becomes one UserError paragraph
naming the file, and the temporary file is removed.

    from trainer import atomic
    atomic.write_text(run_dir / "report.md", text)
    atomic.write_json(run_dir / "metrics.json", metrics)
    with atomic.open_atomic(path, "wb") as f: ...
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from trainer.errors import UserError

#: Temporary files are named ``.<name>.tmp-<pid>``; :func:`clean_partials` removes those of dead processes.
TMP_MARK = ".tmp-"

_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}
#: What torch's C++ writer says when a checkpoint or model file cannot be written (full disk, file size limit).
_TORCH_WRITE_ERRORS = (
    "iostream error", "PytorchStreamWriter failed", "file write failed", "No space left", "inline_container.cc",
)  # fmt: skip


def disk_error(exc: OSError, path: Path | str) -> UserError:
    """One paragraph for an OSError met while writing ``path`` (full disk, read-only, permissions, I/O)."""
    folder = Path(path).parent
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    hint = {
        errno.ENOSPC: f"Free space on the disk that holds {folder} (`df -h {folder}`)",
        errno.EDQUOT: f"Free space within your disk quota for {folder}",
        errno.EROFS: f"{folder} is on a read-only file system: choose a writable place",
        errno.EACCES: f"You may not write into {folder}: fix its permissions or choose another place",
        errno.EPERM: f"You may not write into {folder}: fix its permissions or choose another place",
        errno.EFBIG: "The file is larger than this process may write (`ulimit -f`): raise the limit",
    }.get(exc.errno or 0, f"Check the disk that holds {folder}")
    return UserError(
        f"Could not write {path}: {reason}. {hint} (hydra.run.dir=... for run files, HYDRATUNE_CACHE=... for the "
        "cache), then run the same command again: nothing half-written was left behind, and a training run resumes "
        "from its last complete checkpoint."
    )


def is_disk_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS


def explain_io_error(exc: BaseException, where: Path | str) -> UserError | None:
    """One paragraph for a write failure met anywhere in a run (its own files, the Trainer's checkpoints, Hydra's
    run dir), or None when ``exc`` is something else. ``where`` is the run dir (used when the error names no file)."""
    if isinstance(exc, UserError):
        return None
    if isinstance(exc, ValueError) and str(exc).startswith("Unable to configure handler") and exc.__cause__:
        return explain_io_error(exc.__cause__, where)  # Hydra opening hydratune.log in the run dir
    if isinstance(exc, FileExistsError | NotADirectoryError):
        return UserError(
            f"{exc.filename or where} is in the way: a file stands where hydratune needs a folder (the run dir or one "
            "of its parents). Move it, or choose another directory with hydra.run.dir=..."
        )
    if isinstance(exc, OSError) and is_disk_error(exc):
        return disk_error(exc, exc.filename or Path(where) / "?")
    if isinstance(exc, RuntimeError) and any(m in str(exc) for m in _TORCH_WRITE_ERRORS):
        import shutil

        try:
            free = f"{shutil.disk_usage(where).free / 2**20:.0f} MiB free there now"
        except OSError:
            free = "its free space is unknown"
        return UserError(
            f"Writing a checkpoint or the model into {where} failed ({str(exc).strip().splitlines()[0]}): the disk is "
            f"full, failing, or the file size limit was hit ({free}). Free space (`df -h {where}`) or choose another "
            "hydra.run.dir, then run the same command again: the run resumes from its last complete checkpoint, and "
            "the torn one is set aside."
        )
    return None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def open_atomic(path: Path | str, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Write through a temporary file; on success fsync and rename it onto ``path``, on failure remove it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_error(exc):
            raise disk_error(exc, path) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def reading(path: Path | str) -> Iterator[None]:
    """An OSError while reading ``path`` (permissions, a failing disk, a special file) becomes one paragraph."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError):
            raise
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise UserError(
            f"Could not read {path}: {reason}. Check the file (its permissions: `ls -l {path}`; a failing disk: "
            "`dmesg`), or point the config at a readable copy."
        ) from None


def write_bytes(path: Path | str, data: bytes) -> None:
    with open_atomic(path, "wb") as f:
        f.write(data)


def write_text(path: Path | str, text: str, encoding: str = "utf-8") -> None:
    with open_atomic(path, "w", encoding=encoding) as f:
        f.write(text)


def write_json(path: Path | str, obj: Any, indent: int | None = 2, **kwargs: Any) -> None:
    write_text(path, json.dumps(obj, indent=indent, **kwargs) + "\n")


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_partials(folder: Path) -> list[Path]:
    """Remove temporary files and folders (``*.tmp-<pid>``, ``*.partial-<pid>``) that a dead process left in
    ``folder``; returns what was removed."""
    import shutil

    removed: list[Path] = []
    if not Path(folder).is_dir():
        return removed
    for p in Path(folder).iterdir():
        for mark in (TMP_MARK, ".partial-"):
            if mark in p.name:
                pid = p.name.rsplit(mark, 1)[1]
                if pid.isdigit() and not pid_alive(int(pid)):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                    removed.append(p)
    return removed
