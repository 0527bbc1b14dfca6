"""Atomic writes: a temporary file or folder beside the target, fsync, rename. A reader (or a rerun after a
crash) sees the old file or the new one, never half of one. A full or read-only disk, however the library that
wrote reports it (an OSError, safetensors' SafetensorError, torch's stream writer), becomes one UserError paragraph
(:func:`disk_error`: the path, the free space there, what to do), and the temporary file or folder is removed.

    from trainer.run import atomic
    atomic.write_text(run_dir / "report.md", text)
    atomic.write_json(run_dir / "metrics.json", metrics)
    with atomic.open_atomic(path, "wb") as f: ...
    with atomic.staged_folder(run_dir / "merged") as tmp: model.save_pretrained(tmp)
    with atomic.writing(path, partial=tmp): library_save(tmp)
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from trainer.config.errors import UserError

#: Temporary files are named ``.<name>.tmp-<pid>``; :func:`clean_partials` removes those of dead processes.
TMP_MARK = ".tmp-"

_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}
#: What torch's C++ writer says when a checkpoint or model file cannot be written (full disk, file size limit): it
#: names no errno.
_TORCH_WRITE_ERRORS = (
    "iostream error", "PytorchStreamWriter failed", "file write failed", "No space left", "inline_container.cc",
)  # fmt: skip
#: How Rust libraries (safetensors' SafetensorError, tokenizers) and Arrow quote the OS error inside their own message.
#: (Rust's io::Error prints "(os error 28)" or "Os { code: 28, ... }"; Arrow "[errno 28]".)
_QUOTED_ERRNO = re.compile(r"\(os error (\d+)\)|\[errno (\d+)\]|\bOs \{ code: (\d+)", re.IGNORECASE)


def write_errno(exc: BaseException) -> int | None:
    """The errno of a failed write behind ``exc``, however a library wrapped it: an OSError (pyarrow's too),
    safetensors' SafetensorError ("... (os error 28)"), torch's stream writer (a RuntimeError without an errno:
    EIO stands for it), or any of these as the cause or context of another exception; None when ``exc`` is not a
    write failure of the disk (full, over quota, read-only, not permitted, failing, over the file size limit)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and not isinstance(current, UserError):
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_ERRNOS:
            return current.errno
        if not isinstance(current, FileNotFoundError | IsADirectoryError | NotADirectoryError):
            for match in _QUOTED_ERRNO.finditer(str(current)):
                number = int(next(g for g in match.groups() if g))
                if number in _DISK_ERRNOS:
                    return number
        if isinstance(current, RuntimeError) and any(m in str(current) for m in _TORCH_WRITE_ERRORS):
            return errno.ENOSPC if "No space left" in str(current) else errno.EIO
        current = current.__cause__ or current.__context__
    return None


def is_disk_error(exc: BaseException) -> bool:
    return write_errno(exc) is not None


def _free_space(path: Path) -> str:
    import shutil

    for folder in (path, *path.parents):
        try:
            return f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB are free there now"
        except OSError:
            continue
    return "its free space is unknown"


def disk_error(exc: BaseException, path: Path | str) -> UserError:
    """The one paragraph for a failed write of ``path`` (full disk, quota, read-only, permissions, I/O, file size
    limit): which path, the free space there, what to do. The caller has removed what it half-wrote."""
    path = Path(path)
    folder = path.parent
    number = write_errno(exc) or errno.EIO
    if number == errno.EIO and not isinstance(exc, OSError):  # torch names no errno: quote its own words
        reason = f"the write failed ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})"
        hint = f"The disk is full, failing, or the file size limit was hit: free space (`df -h {folder}`)"
    else:
        reason = os.strerror(number)
        hint = {
            errno.ENOSPC: f"Free space on the disk that holds {folder} (`df -h {folder}`)",
            errno.EDQUOT: f"Free space within your disk quota for {folder}",
            errno.EROFS: f"{folder} is on a read-only file system: choose a writable place",
            errno.EACCES: f"You may not write into {folder}: fix its permissions or choose another place",
            errno.EPERM: f"You may not write into {folder}: fix its permissions or choose another place",
            errno.EFBIG: "The file is larger than this process may write (`ulimit -f`): raise the limit",
        }.get(number, f"Check the disk that holds {folder}")
    space = f" ({_free_space(folder)})" if number in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO) else ""
    return UserError(
        f"Could not write {path}: {reason}{space}. {hint} (hydra.run.dir=... for run files, "
        "HYDRATUNE_CACHE=... for the cache), then run the same command again: nothing half-written was left under "
        "its final name, and a training run resumes from its last complete checkpoint."
    )


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
    if is_disk_error(exc):
        named = getattr(exc, "filename", None)
        return disk_error(exc, named or Path(where) / "?")
    return None


@contextmanager
def writing(path: Path | str, partial: Path | str | None = None) -> Iterator[None]:
    """Around a library's write of ``path`` (save_pretrained, torch.save, safetensors, Arrow): on any failure the
    temporary file or folder ``partial`` is removed, and a full disk (however the library wrapped it) becomes the
    one paragraph of :func:`disk_error`."""
    try:
        yield
    except BaseException as exc:
        if partial is not None:
            remove(Path(partial))
        if isinstance(exc, Exception) and not isinstance(exc, UserError) and is_disk_error(exc):
            raise disk_error(exc, path) from None
        raise


def remove(path: Path) -> None:
    """Remove a file, a folder tree or a symlink (never what a symlink points at); missing is fine."""
    import shutil

    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def partial_name(final: Path) -> Path:
    """The temporary sibling this process writes ``final`` into (removed by :func:`clean_partials` once the
    process is gone)."""
    return final.with_name(f"{final.name}.partial-{os.getpid()}")


@contextmanager
def staged_folder(final: Path | str, keep_if: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder to write ``final`` into; when the block completes, rename it onto
    ``final``, so a reader sees the old folder or the new complete one, never half of one. An existing ``final``
    is replaced, unless it holds the file ``keep_if`` (a cache entry that a concurrent writer completed first:
    its content is the same). On a failure the temporary folder is removed and a full disk is one paragraph."""
    final = Path(final)
    tmp = partial_name(final)
    with writing(final, partial=tmp):
        clean_partials(final.parent)
        remove(tmp)
        tmp.mkdir(parents=True)
        yield tmp
        publish(tmp, final, keep_if)


def publish(tmp: Path, final: Path, keep_if: str | None = None) -> None:
    """Rename the complete folder ``tmp`` onto ``final`` (see :func:`staged_folder`)."""

    def complete() -> bool:
        return keep_if is not None and not final.is_symlink() and (final / keep_if).is_file()

    if complete():
        remove(tmp)
        return
    old = final.with_name(f"{final.name}.old.partial-{os.getpid()}")  # the folder replaced, until the new one is in
    if final.exists() or final.is_symlink():
        remove(old)
        final.rename(old)
    try:
        tmp.rename(final)
    except OSError:
        if not complete():  # else another process renamed its complete folder into place first
            raise
        remove(tmp)
    remove(old)
    _fsync_dir(final.parent)


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
    with writing(path, partial=tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)


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
