"""trainer.run.memory: heap memory that was freed goes back to the system (glibc)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trainer.run import memory

# 200 MB in 64 KB blocks (below glibc's mmap threshold, so they live in the heap), all freed but the block
# allocated last, which sits at the heap's top and keeps glibc from shrinking the heap by itself.
PROBE = """
from trainer.run import memory

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) // 1024

blocks = [bytearray(b"x") * 65536 for _ in range(3200)]
top = bytearray(b"y") * 65536
full = rss_mb()
del blocks
freed = rss_mb()
memory.release()
print(full, freed, rss_mb())
"""


@pytest.mark.skipif(memory._trim() is None, reason="no glibc malloc_trim on this platform")
def test_release_returns_freed_heap_pages_to_the_system():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    full, freed, released = map(int, out.split())
    assert full - freed < 50, "glibc returned the blocks by itself: the probe no longer tests anything"
    assert freed - released > 150, (full, freed, released)


def test_a_failed_allocation_is_found_anywhere_in_the_chain_and_only_under_a_limit(monkeypatch):
    """What explains a failed allocation under RLIMIT_AS: the error itself or one it was raised while handling; a
    paragraph of hydratune's own and an unrelated error that merely says "alloc" are left as they are."""
    import resource

    from trainer.config.errors import UserError
    from trainer.run.memory import explain_memory_limit

    arrow = type("ArrowException", (Exception,), {})("Unknown error: Failed to launch worker thread: Resource busy")
    try:
        try:
            raise arrow
        except Exception:
            raise SystemError("error return without exception set") from None
    except SystemError as unset:
        chained = unset
    try:
        try:
            raise MemoryError
        except MemoryError:
            raise KeyError("tokenizer") from None
    except KeyError as key:
        during = key
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (2**30, resource.RLIM_INFINITY))
    assert "(SystemError: error return without exception set)" in str(explain_memory_limit(chained))
    assert "(ArrowException: Unknown error: Failed to launch worker thread" in str(explain_memory_limit(arrow))
    assert "an allocation failed (MemoryError)" in str(explain_memory_limit(during))
    assert explain_memory_limit(UserError("train.max_steps=0: cannot allocate a schedule")) is None
    assert explain_memory_limit(ValueError("the allocation column is empty")) is None
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert explain_memory_limit(MemoryError()) is None
