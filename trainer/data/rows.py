"""Canonical rows kept on disk, not in memory: a spool of JSON texts in an Arrow file, read back a batch at a time.

Preparation reads every source once into a :class:`Spool` (one canonical row per entry, in file order) and keeps
only small per-row numbers in memory (a key hash, a position, a few flags). :class:`Rows` is a read-only sequence
over a selection of a spool's entries: ``len``, indexing, slicing and iteration decode rows on demand, so a dataset
of millions of rows costs a few megabytes of memory wherever ``Examples.train`` is used. The file is read with
ordinary reads (never memory-mapped): the pages read are not counted in the process's resident memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Rows per Arrow record batch of a spool (the unit read back from disk).
BATCH = 4096
_ENCODER = json.JSONEncoder(ensure_ascii=False)


class Spool:
    """Append canonical rows (as JSON text) to an Arrow IPC file; :meth:`close` returns the readable :class:`Store`."""

    def __init__(self, path: Path):
        import pyarrow as pa

        self.path = Path(path)
        self._schema = pa.schema([("row", pa.large_string())])
        self._sink = pa.OSFile(str(self.path), "wb")
        self._writer = pa.ipc.new_file(self._sink, self._schema)
        self._pending: list[str] = []
        self.count = 0

    def add_text(self, text: str) -> int:
        """Append one row given as its JSON text; returns its index."""
        self._pending.append(text)
        self.count += 1
        if len(self._pending) >= BATCH:
            self._flush()
        return self.count - 1

    def add(self, row: dict) -> int:
        return self.add_text(_ENCODER.encode(row))

    def _flush(self) -> None:
        import pyarrow as pa

        if self._pending:
            self._writer.write_batch(pa.record_batch([pa.array(self._pending, pa.large_string())], self._schema))
            self._pending = []

    def close(self, unlink: bool = False) -> Store:
        """Finish the file and open it for reading (``unlink``: remove its name at once; the open file lives on
        until the last reader is gone, so a temporary spool never outlives the process)."""
        self._flush()
        self._writer.close()
        self._sink.close()
        store = Store(self.path)
        if unlink:
            os.unlink(self.path)
        return store


class Store:
    """A finished spool, open for reading by batch."""

    def __init__(self, path: Path):
        import pyarrow as pa

        self._file = pa.OSFile(str(path), "rb")
        self._reader = pa.ipc.open_file(self._file)
        n = self._reader.num_record_batches  # every batch holds BATCH rows but the last
        self.count = BATCH * (n - 1) + self._reader.get_batch(n - 1).num_rows if n else 0
        self._cached: tuple[int, list[str]] | None = None

    def batch_texts(self, b: int) -> list[str]:
        if self._cached is None or self._cached[0] != b:
            self._cached = (b, self._reader.get_batch(b).column(0).to_pylist())
        return self._cached[1]

    def text(self, i: int) -> str:
        return self.batch_texts(i // BATCH)[i % BATCH]

    def texts(self, indices: np.ndarray) -> Iterator[str]:
        """The JSON texts of ``indices``, in their order (consecutive indices share one read of their batch)."""
        for i in indices.tolist():
            yield self.batch_texts(i // BATCH)[i % BATCH]


class Rows(Sequence):
    """The rows ``indices`` of a :class:`Store`, decoded on access; compares equal to a list of the same rows."""

    def __init__(self, store: Store | None, indices: np.ndarray | None = None):
        self.store = store
        self.indices = np.zeros(0, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: Any) -> Any:
        if isinstance(item, slice):
            return list(self.select(self.indices[item]))
        if item < 0:
            item += len(self)
        if not 0 <= item < len(self):
            raise IndexError(item)
        assert self.store is not None
        return json.loads(self.store.text(int(self.indices[item])))

    def select(self, indices: np.ndarray) -> Rows:
        return Rows(self.store, indices)

    def texts(self) -> Iterator[str]:
        if self.store is not None:
            yield from self.store.texts(self.indices)

    def __iter__(self) -> Iterator[dict]:
        loads = json.loads
        for text in self.texts():
            yield loads(text)

    def __add__(self, other) -> list:
        return [*self, *other]

    def __radd__(self, other) -> list:
        return [*other, *self]

    def __eq__(self, other) -> bool:
        if isinstance(other, Rows | list | tuple):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Rows({len(self)} rows)"

    def __reduce__(self):  # pickled (a worker process, a deep copy) as the plain list it stands for
        return (list, (list(self),))
