"""Tokenizing a split in chunks, over the cores the run may use, into an Arrow file, in bounded memory.

The rows are cut into chunks of ``tokenize.CHUNK`` rows, always the same chunks for the same data; each chunk is
encoded from the same encoder state (:meth:`Encoder.encode_chunk`) by one of ``workers`` processes (forked from this
one, so the tokenizer is not copied through pickling), and the results are written in chunk order. The output is
therefore the same bytes for any number of workers. At most two chunks per worker are in flight, so memory holds a
few chunks, not the dataset. Packing (``train.packing``) packs windows of ``PACK_WINDOW_TOKENS`` tokens, again the
same windows for the same data, with TRL's own packer.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data import tokenize
from trainer.data.tokenize import Encoded, Encoder, SkeletonMismatch

#: Tokens per packing window: sequences are packed among the ones of their window (TRL's best-fit decreasing).
PACK_WINDOW_TOKENS = 1 << 24


def workers_for(requested: int | None) -> int:
    """Tokenizing processes: ``hardware.threads`` when set, else the usable cores (trainer/run/threads.py)."""
    from trainer.run.threads import threads_per_process

    return threads_per_process(requested, 1)[0]


@dataclass
class Chunk:
    """One encoded chunk, as flat arrays (cheap to send between processes)."""

    ids: np.ndarray  # int32, every kept row's ids one after another
    labels: np.ndarray  # int32
    lengths: np.ndarray  # int32, per kept row
    tokens: np.ndarray  # int32, per input row, before truncation
    loss_tokens: np.ndarray  # int32, per input row, before truncation
    truncated: int
    no_loss: int
    messages: np.ndarray  # int32, messages per input row (-1: not a chat row)


def _encode_rows(encoder: Encoder, texts: list[str]) -> Chunk:
    loads = json.loads
    rows = [loads(t) for t in texts]
    messages = np.fromiter((len(r["messages"]) if "messages" in r else -1 for r in rows), np.int32, len(rows))
    return _flat(encoder.encode_chunk(rows), messages)


def _flat(enc: Encoded, messages: np.ndarray) -> Chunk:
    empty = np.zeros(0, dtype=np.int32)
    return Chunk(
        np.concatenate(enc.input_ids) if enc.input_ids else empty,
        np.concatenate(enc.labels) if enc.labels else empty,
        np.fromiter((len(a) for a in enc.input_ids), dtype=np.int32, count=len(enc.input_ids)),
        np.asarray(enc.tokens, dtype=np.int32),
        np.asarray(enc.loss_tokens, dtype=np.int32),
        enc.truncated,
        len(enc.no_loss),
        messages,
    )


_WORKER: Encoder | None = None


def _init(encoder: Encoder) -> None:
    global _WORKER
    _WORKER = encoder


def _work(texts: list[str], fast: bool) -> Chunk | None:
    """A worker's chunk: None when the template turned out not to be content-transparent."""
    assert _WORKER is not None
    _WORKER.fast = fast
    try:
        return _encode_rows(_WORKER, texts)
    except SkeletonMismatch:
        return None


def _chunks(texts: Iterable[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == tokenize.CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def encode_chunks(encoder: Encoder, texts: Iterable[str], workers: int) -> Iterator[Chunk]:
    """The encoded chunks of ``texts`` (rows as JSON), in order. Raises SkeletonMismatch (see Encoder.encode_chunk)."""
    fast = encoder.fast
    chunks = _chunks(texts)
    first, second = next(chunks, None), next(chunks, None)
    if workers <= 1 or second is None:  # one chunk (or one worker): no pool to start, the same bytes
        for chunk in (c for c in (first, second) if c is not None):
            yield _encode_rows(encoder, chunk)
        for chunk in chunks:
            yield _encode_rows(encoder, chunk)
        return
    context = multiprocessing.get_context("fork")
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker (and no warning after the fork)
    try:
        pool = context.Pool(workers, initializer=_init, initargs=(encoder,))
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
    try:
        pending: deque = deque()
        assert first is not None
        for chunk in itertools.chain((first, second), chunks):
            pending.append(pool.apply_async(_work, (chunk, fast)))
            if len(pending) >= 2 * workers:
                yield _checked(pending.popleft().get())
        while pending:
            yield _checked(pending.popleft().get())
    finally:
        pool.terminate()
        pool.join()


def _checked(chunk: Chunk | None) -> Chunk:
    if chunk is None:
        raise SkeletonMismatch
    return chunk


@dataclass
class Written:
    """What encoding a split wrote: per-row counts for the statistics, and the packed sequence count."""

    rows: int = 0
    kept: int = 0
    tokens: list[np.ndarray] = field(default_factory=list)
    loss_tokens: list[np.ndarray] = field(default_factory=list)
    messages: list[np.ndarray] = field(default_factory=list)
    truncated: int = 0
    no_loss: int = 0
    sequences: int = 0

    def counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: tokens, loss tokens (before truncation), messages (chat rows only)."""

        def cat(parts):
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

        messages = cat(self.messages)
        return cat(self.tokens), cat(self.loss_tokens), messages[messages >= 0]


def encode_split(encoder: Encoder, texts, path: Path, workers: int, packing: tuple[int, str] | None = None) -> Written:
    """Encode the rows ``texts()`` (a callable giving the rows as JSON texts, called again after a restart) into the
    Arrow stream ``path``; ``packing``: (max_length, strategy) packs the sequences."""
    while True:
        try:
            return _encode_split(encoder, texts(), path, workers, packing)
        except SkeletonMismatch:  # every chunk again, each conversation rendered in full
            encoder.fast = False


def _encode_split(encoder: Encoder, texts, path: Path, workers: int, packing) -> Written:
    import pyarrow as pa

    out = Written()
    writer = ArrowWriter(path)
    window: list[pa.RecordBatch] = []
    window_tokens = 0
    try:
        for chunk in encode_chunks(encoder, texts, workers):
            out.rows += len(chunk.tokens)
            out.kept += len(chunk.lengths)
            out.tokens.append(chunk.tokens)
            out.loss_tokens.append(chunk.loss_tokens)
            out.messages.append(chunk.messages)
            out.truncated += chunk.truncated
            out.no_loss += chunk.no_loss
            batch = record_batch(chunk)
            if packing is None:
                writer.write(batch)
                continue
            window.append(batch)
            window_tokens += len(chunk.ids)
            if window_tokens >= PACK_WINDOW_TOKENS:
                out.sequences += _pack_window(window, packing, writer)
                window, window_tokens = [], 0
        if window:
            out.sequences += _pack_window(window, packing, writer)
    finally:
        writer.close()
    return out


def record_batch(chunk: Chunk):
    import pyarrow as pa

    offsets = np.zeros(len(chunk.lengths) + 1, dtype=np.int32)
    np.cumsum(chunk.lengths, out=offsets[1:])
    off = pa.array(offsets, pa.int32())
    return pa.record_batch(
        {
            "input_ids": pa.ListArray.from_arrays(off, pa.array(chunk.ids, pa.int32())),
            "labels": pa.ListArray.from_arrays(off, pa.array(chunk.labels, pa.int32())),
        }
    )


def _pack_window(batches: list, packing: tuple[int, str], writer: ArrowWriter) -> int:
    import datasets
    import pyarrow as pa

    from trainer.data.pack import pack

    max_length, strategy = packing
    packed = pack(datasets.Dataset(pa.Table.from_batches(batches)), max_length, strategy)
    table = packed.with_format(None).data.table
    if packed._indices is not None:
        table = packed.flatten_indices().data.table
    for batch in table.to_batches():
        writer.write(batch)
    return len(packed)


class ArrowWriter:
    """Record batches into an Arrow IPC stream file (what ``datasets.Dataset.from_file`` memory-maps), its schema
    taken from the first batch; a file without batches holds an empty input_ids/labels table."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._sink: Any = None
        self._writer: Any = None

    def write(self, batch) -> None:
        import pyarrow as pa

        if self._writer is None:
            self._sink = pa.OSFile(str(self.path), "wb")
            self._writer = pa.ipc.new_stream(self._sink, batch.schema)
        self._writer.write_batch(batch)

    def close(self) -> None:
        import pyarrow as pa

        if self._writer is None:
            empty = pa.list_(pa.int32())
            schema = pa.schema([("input_ids", empty), ("labels", empty)])
            self._sink = pa.OSFile(str(self.path), "wb")
            self._writer = pa.ipc.new_stream(self._sink, schema)
        self._writer.close()
        assert self._sink is not None
        self._sink.close()
