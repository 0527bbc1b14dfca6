"""Streaming training data (``dataset.streaming=true``), for corpora larger than the preprocessing cache may hold.

Nothing is prepared ahead and nothing is cached: :class:`PackedStream` reads the source's JSONL files line by line,
normalises each row with the format's own normaliser, tokenizes it with the same Encoder as a prepared run, and packs
the examples in file order into sequences of at most ``train.max_length`` tokens (greedy: an example that does not
fit starts the next sequence; ``seq_lengths`` keeps the boundaries, as trainer.data.pack does). At the end of the
last file it starts again from the first (the next pass); ``train.max_steps`` ends training.

Resuming at the exact sample: the stream records, for each packed sequence k, the position of its first row (pass,
file, byte offset, line). trainer.engine.streaming saves the position of the next sequence to train with each
checkpoint (in its trainer_state.json); a resumed run seeks straight to that byte (nothing before it is read again)
and stands in for the sequences before it with placeholders the Trainer's own resume skips.
The stream has no shuffling: rows are trained in file order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections import Counter, OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from trainer.config.errors import UserError
from trainer.config.schema import dataset_schema

log = logging.getLogger(__name__)

#: Rows tokenized together (the Encoder's batch); packing stays row by row.
CHUNK = 64
#: How many recent sequences' start positions the stream remembers (the loader reads a few batches ahead).
REMEMBERED = 4096
#: Usable rows kept for the checks that read rows before training (the chat template lint).
SAMPLE_ROWS = 16
SUFFIXES = (".jsonl", ".ndjson")
#: What a resumed stream yields for each sequence trained before its position (see PackedStream.__iter__).
PLACEHOLDER = {"input_ids": [0], "labels": [-100], "seq_lengths": [1]}


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a row starts: the pass over the files (0 = the first), the file's index, its byte offset and line."""

    epoch: int = 0
    file: int = 0
    offset: int = 0
    line: int = 1


def stream_files(path: str) -> list[Path]:
    """The JSONL files a stream reads: the file itself, or a folder's ``*.jsonl`` files in name order."""
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in SUFFIXES and f.is_file())
        if not files:
            raise UserError(f"dataset.streaming=true: the folder {path} holds no .jsonl file to stream.")
        return files
    if not p.is_file():
        raise UserError(
            f"dataset.streaming=true reads local JSONL files, and dataset.path={path} is not a file or folder here. "
            "Give a .jsonl file or a folder of them."
        )
    if p.suffix.lower() not in SUFFIXES:
        raise UserError(
            f"dataset.streaming=true reads JSONL files line by line, and {path} is a '{p.suffix}' file. Convert it "
            "to .jsonl, or set dataset.streaming=false to prepare it into the cache."
        )
    return [p]


class PackedStream:
    """Packed training sequences ({input_ids, labels, seq_lengths}) read, normalised and tokenized on the fly."""

    def __init__(self, files: list[Path], normalise, encoder, max_length: int, on_error: str):
        self.files, self.normalise, self.encoder = files, normalise, encoder
        self.max_length, self.on_error = max_length, str(on_error)
        self.skipped = 0
        self.start_at(0, Position())

    def start_at(self, sequence: int, position: Position) -> None:
        """The next iteration yields sequence number ``sequence``, whose first row is at ``position``."""
        self.first, self.resume = sequence, position
        self._starts: OrderedDict[int, Position] = OrderedDict({sequence: position})

    def position_of(self, sequence: int) -> Position:
        """Where sequence number ``sequence`` starts (it must be one of the last REMEMBERED the stream reached)."""
        if sequence not in self._starts:
            raise RuntimeError(f"the stream does not remember where sequence {sequence} starts")
        return self._starts[sequence]

    def __iter__(self) -> Iterator[dict]:
        """Sequence ``first`` on; before it, ``first`` one-token placeholders with no loss token, which a resumed
        Trainer skips as it skips the batches it trained before its checkpoint (so it restores its random state
        where an uninterrupted run is): nothing before the position is read or tokenized."""
        for _ in range(self.first):
            yield {key: list(value) for key, value in PLACEHOLDER.items()}
        number, used = self.first, 0
        pending: list[tuple[np.ndarray, np.ndarray]] = []
        for position, ids, labels in self._examples(self.resume):
            if pending and used + len(ids) > self.max_length:
                self._remember(number + 1, position)  # before the yield: known however far the loader has read
                yield _packed(pending)
                number, used = number + 1, 0
                pending = []
            pending.append((ids, labels))
            used += len(ids)

    def _remember(self, number: int, position: Position) -> None:
        self._starts[number] = position
        while len(self._starts) > REMEMBERED:
            self._starts.popitem(last=False)

    def _examples(self, start: Position) -> Iterator[tuple[Position, np.ndarray, np.ndarray]]:
        """Every tokenized example with an answer token, from ``start``, pass after pass."""
        chunk: list[tuple[Position, dict]] = []
        kept, empty_passes = False, 0
        for position, row in self.rows(start):
            if chunk and position.epoch != chunk[-1][0].epoch:  # a pass ends: encode its last rows first
                for item in self._encode(chunk):
                    kept = True
                    yield item
                chunk, empty_passes = [], 0 if kept else empty_passes + 1
                kept = False
                if empty_passes == 2:  # one whole pass at least, and not one example with an answer token
                    raise UserError(
                        f"dataset.streaming=true: no row of {', '.join(map(str, self.files))} has an answer token "
                        f"within train.max_length={self.max_length}. Check the data, or raise train.max_length."
                    )
            chunk.append((position, row))
            if len(chunk) == CHUNK:
                for item in self._encode(chunk):
                    kept = True
                    yield item
                chunk = []

    def _encode(self, chunk: list[tuple[Position, dict]]):
        encoded = self.encoder.encode([row for _, row in chunk])
        for i, ids, labels in zip(encoded.kept, encoded.input_ids, encoded.labels, strict=True):
            yield chunk[i][0], ids, labels

    def rows(self, start: Position = Position()) -> Iterator[tuple[Position, dict]]:
        """Every usable canonical row from ``start`` with its position, pass after pass (endless)."""
        from trainer.data.formats import Invalid

        epoch, first, offset, line = start.epoch, start.file, start.offset, start.line - 1
        while True:
            whole, usable = first == 0 and offset == 0, False
            for index in range(first, len(self.files)):
                path = self.files[index]
                with open(path, "rb") as f:
                    f.seek(offset)
                    while raw := f.readline():
                        at, line = offset, line + 1
                        offset += len(raw)
                        if not raw.strip():
                            continue
                        try:
                            row = self.normalise(_parse(raw))
                        except Invalid as exc:
                            self._bad(path, line, str(exc))
                            continue
                        usable = True
                        yield Position(epoch, index, at, line), row
                offset, line = 0, 0
            if whole and not usable:
                raise UserError(f"dataset.streaming=true: {', '.join(map(str, self.files))} hold no usable row.")
            epoch, first = epoch + 1, 0

    def _bad(self, path: Path, line: int, why: str) -> None:
        if self.on_error == "fail":
            raise UserError(
                f"{path}:{line}: {why}. Fix the row, or set dataset.on_error=skip to train on without it (a "
                "streamed run counts the rows it skips in its log)."
            )
        self.skipped += 1
        log.warning("%s:%d: %s (skipped; %d so far)", path, line, why, self.skipped)


def _parse(raw: bytes):
    from trainer.data.formats import Invalid

    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Invalid(f"not a JSON object ({exc.__class__.__name__}: {exc})") from None


def _packed(examples: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    return {
        "input_ids": np.concatenate([ids for ids, _ in examples]).tolist(),
        "labels": np.concatenate([labels for _, labels in examples]).tolist(),
        "seq_lengths": [len(ids) for ids, _ in examples],
    }


def prepare(cfg: DictConfig, tokenizer, run_dir: Path | None):
    """The stream of the root config ``cfg`` as a data.Prepared: the stream as ``train``, no validation rows, the
    first usable rows as the examples the pre-training checks read."""
    import datasets

    from trainer.data import Prepared
    from trainer.data.examples import Examples
    from trainer.data.formats import make_normaliser
    from trainer.data.tokenize import Encoder

    source = dataset_schema(cfg.dataset)
    max_length = int(OmegaConf.select(cfg, "train.max_length"))
    files = stream_files(source.path)
    encoder = Encoder(tokenizer, max_length, bool(source.train_on_all_tokens), str(source.reasoning))
    stream = PackedStream(files, make_normaliser(source, Counter()), encoder, max_length, source.on_error)
    sample = []
    for _, row in stream.rows():
        sample.append(row)
        if len(sample) == SAMPLE_ROWS:
            break
    h = hashlib.sha256(json.dumps([str(f) for f in files] + [f.stat().st_size for f in files]).encode())
    key = "stream-" + h.hexdigest()[:16]
    stats = {
        "name": source.name,
        "streaming": True,
        "files": [str(f) for f in files],
        "bytes": sum(f.stat().st_size for f in files),
        "max_length": max_length,
        "packing": True,
    }
    if run_dir is not None:
        from trainer.run import atomic

        atomic.write_json(Path(run_dir) / "data_stats.json", stats)
    log.info(
        "dataset %s streamed from %d file(s), %d bytes, packed to %d tokens",
        source.name,
        len(files),
        stats["bytes"],
        max_length,
    )
    empty = datasets.Dataset.from_dict({"input_ids": [], "labels": []})
    return Prepared(as_iterable(stream), empty, Examples(train=sample, validation=[]), stats, key, False)


def as_iterable(stream: PackedStream):
    """The stream as the datasets.IterableDataset TRL's trainers take (``.stream`` is the stream itself). The
    generator is a closure, not a keyword argument, so that no copy datasets makes of its arguments copies the
    stream away from the position records trainer.engine.streaming reads."""
    import datasets
    from datasets.iterable_dataset import ExamplesIterable

    def keyed():
        yield from enumerate(stream)

    dataset = datasets.IterableDataset(ExamplesIterable(lambda: keyed(), {}))
    dataset.stream = stream
    return dataset
