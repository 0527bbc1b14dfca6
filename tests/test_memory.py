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
