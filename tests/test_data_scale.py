"""Data at scale (issue 26): preparation streams in bounded memory, and the cache is the same bytes for any number of
tokenizing workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import compose
from trainer.data import load_examples, prepare
from trainer.data.rows import Rows

REPO = Path(__file__).resolve().parents[1]


def write_texts(path: Path, rows: int) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            f.write(json.dumps({"text": f"row {i} says {i % 13} things"}) + "\n")
    return path


def write_chats(path: Path, rows: int, start: int = 0) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(start, start + rows):
            messages = [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"What is {i} plus {i % 7}?"},
                {"role": "assistant", "content": f"{i + i % 7}."},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def cfg_for(tmp_path: Path, data: Path, *overrides: str):
    return compose(
        "model=tiny_random",
        "dataset=chat_jsonl",
        f"dataset.path={data}",
        f"cache_dir={tmp_path / 'cache'}",
        "++train.max_length=64",
        *overrides,
    )


def test_examples_are_rows_on_disk_that_behave_as_a_list(tmp_path):
    data = write_chats(tmp_path / "chat.jsonl", 10)
    examples = load_examples(compose("dataset=chat_jsonl", f"dataset.path={data}", "dataset.validation_size=0").dataset)
    expected = [json.loads(line) for line in data.read_text().splitlines()]
    train = examples.train
    assert isinstance(train, Rows) and len(train) == 10
    assert train == expected and list(train) == expected and train[-1] == expected[-1] and train[2:4] == expected[2:4]
    assert train + [] == expected and sum(1 for _ in train) == 10
    with pytest.raises(IndexError):
        train[10]


def _entry_bytes(cache: Path) -> dict[str, bytes]:
    (entry,) = (cache / "datasets").iterdir()
    return {p.name: p.read_bytes() for p in sorted(entry.iterdir())}


@pytest.mark.slow  # forks tokenizing processes
def test_the_cache_is_the_same_bytes_for_one_and_two_workers(tmp_path, tiny_tokenizer, monkeypatch):
    """Several chunks and a ragged end, a validation split, and packing in several windows: every file of the entry
    is byte-identical for 1 and 2 workers."""
    from trainer.data import parallel, tokenize

    monkeypatch.setattr(tokenize, "CHUNK", 64)  # the same cut as 4096 rows, on less data
    monkeypatch.setattr(parallel, "PACK_WINDOW_TOKENS", 5000)  # two chunks a window
    data = write_chats(tmp_path / "chat.jsonl", 6 * 64 + 21)
    entries = {}
    for workers in (1, 2):
        for packing in ("false", "true"):
            folder = tmp_path / f"w{workers}-{packing}"
            overrides = (f"hardware.threads={workers}", "dataset.validation_size=0.05", f"++train.packing={packing}")
            overrides += ("++train.max_length=256",)
            prepared = prepare(cfg_for(folder, data, *overrides), tiny_tokenizer, None)
            assert len(prepared.examples.train) + len(prepared.examples.validation) == 6 * 64 + 21
            if packing == "true":
                assert len(prepared.train) < len(prepared.examples.train)
            entries[workers, packing] = _entry_bytes(folder / "cache")
    for packing in ("false", "true"):
        one, two = entries[1, packing], entries[2, packing]
        assert one.keys() == two.keys() and "train.arrow" in one
        assert [name for name in one if one[name] != two[name]] == []
    assert entries[1, "false"]["train.arrow"] != entries[1, "true"]["train.arrow"]


PROBE = """
import json, sys
from pathlib import Path
from omegaconf import OmegaConf
from trainer.config.schema import DatasetSchema
from trainer.data import prepare
from trainer.models import tiny_tokenizer

data, cache = sys.argv[1], sys.argv[2]
fields = {"name": "probe", "path": data, "format": "text", "validation_size": 0.01}
dataset = OmegaConf.merge(OmegaConf.structured(DatasetSchema), fields)
cfg = OmegaConf.create({"dataset": dataset, "train": {"max_length": 64}, "cache_dir": cache, "hardware": {"threads": 1}})
prepared = prepare(cfg, tiny_tokenizer(), None)
status = Path("/proc/self/status").read_text().splitlines()
hwm = [int(line.split()[1]) for line in status if line.startswith("VmHWM:")][0]
print(json.dumps({"rows": len(prepared.examples.train) + len(prepared.examples.validation), "hwm_kb": hwm}))
"""


def _peak_rss_kb(tmp_path: Path, rows: int) -> int:
    data = write_texts(tmp_path / f"text-{rows}.jsonl", rows)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", PROBE, str(data), str(tmp_path / f"cache-{rows}")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["rows"] == rows
    return got["hwm_kb"]


@pytest.mark.slow  # two preparing processes
def test_peak_memory_of_preparation_does_not_grow_with_the_row_count(tmp_path):
    """Ten times the rows, about the same peak RSS: rows are spooled to disk and tokenized a chunk at a time. (Before,
    every row was a Python dict in memory: 50k rows took 1.38x the peak of 5k, 100k rows 1.75x the peak of 10k; now
    1.05x.)"""
    small, large = _peak_rss_kb(tmp_path, 5_000), _peak_rss_kb(tmp_path, 50_000)
    assert large < 1.2 * small, f"peak RSS {small / 1024:.0f} MB at 5k rows, {large / 1024:.0f} MB at 50k rows"
