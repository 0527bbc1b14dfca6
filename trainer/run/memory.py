"""Give memory that PyTorch has freed back to the operating system between a run's phases.

glibc's malloc keeps what a process frees for reuse. A training step frees hundreds of 1-4 MB tensors whose sizes
change with every batch, and the holes they leave rarely fit the next step's: the process's resident memory climbs
step after step although what it holds alive does not (the default job, bf16, one thread: 2.6 -> 4.4 GB over 45
steps), and the fine-tuned evaluation used to run on top of all of it. ``malloc_trim(0)`` returns the free pages,
holes included, to the system: the evaluation after training starts from 1.6 GB, not 4.4. Trimming after every
step as well was measured and rejected: 27% slower steps (the pages are faulted in again), no lower peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc

from trainer.config.errors import UserError, first_line


@functools.cache
def _trim():
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release() -> None:
    """Collect garbage, then hand every free page of the heap back to the system (glibc only; else a no-op)."""
    gc.collect()
    trim = _trim()
    if trim is not None:
        trim(0)


def explain_memory_limit(exc: BaseException) -> UserError | None:
    """An allocation that failed under an address-space limit (``ulimit -v``, RLIMIT_AS) as one paragraph with the
    limit: Python's MemoryError, ENOMEM, a Rust library's panic (tokenizers, safetensors: pyo3's PanicException,
    which is not an Exception), a C++ allocator's error, a thread that could not be started (pyarrow's pool), or C
    code that could not even create its MemoryError; the exception itself or any it was raised from or during. None
    without a limit (a failed allocation is then not a setting to change) or for any other error. Imports nothing
    heavy: the interpreter is out of memory."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft == resource.RLIM_INFINITY or isinstance(exc, UserError):  # a paragraph of ours already says what to do
        return None
    failed = next((link for link in _chain(exc) if _is_failed_allocation(link)), None)
    if failed is None:
        return None
    what = type(failed).__name__ + (f": {first_line(str(failed))[:160]}" if str(failed).strip() else "")
    return UserError(
        f"Out of memory: this process may use at most {soft / 2**30:.2f} GiB of address space (ulimit -v "
        f"{soft // 1024}, the RLIMIT_AS limit of this shell or job), and an allocation failed ({what}). torch, the "
        "model and the data loaders reserve far more address space than they use; raise the limit "
        "(`ulimit -v unlimited`, or the memory setting of your scheduler) and run the same command again: a run "
        "resumes from its last complete checkpoint."
    )


#: What a failed allocation says in Python, C++ (torch: bad_alloc), Rust (a thread's stack refused) and the dynamic
#: loader (a shared library that cannot be mapped: an ImportError), in a RuntimeError, ImportError, OSError or a Rust
#: panic.
_ALLOCATION = (
    "alloc", "out of memory", "os error 12", "failed to map", "failed to spawn thread", "threadpoolbuild",
    "can't start new thread", "cannot allocate memory",
)  # fmt: skip
#: A thread pool that could not start a thread, in whatever class its library raises (pyarrow's ArrowException:
#: "Failed to launch worker thread: Resource temporarily unavailable").
_THREAD_START = ("failed to launch worker thread",)


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, then what it was raised from or while handling, without cycles."""
    seen: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and all(link is not s for s in seen) and len(seen) < 16:
        seen.append(link)
        link = link.__cause__ or link.__context__
    return seen


def _is_failed_allocation(exc: BaseException) -> bool:
    import errno

    if isinstance(exc, UserError):  # hydratune's own paragraph says what is wrong, whatever words it uses
        return False
    if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM):
        return True
    text = str(exc).lower()
    if isinstance(exc, SystemError):  # C code that could not even create its MemoryError
        return "without exception set" in text or "without setting an exception" in text
    if isinstance(exc, Exception) and any(t in text for t in _THREAD_START):
        return True
    said = type(exc).__name__ == "PanicException" or isinstance(exc, RuntimeError | ImportError | OSError)
    return said and any(a in text for a in _ALLOCATION)
