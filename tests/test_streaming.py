"""dataset.streaming=true: rows read, tokenized and packed on the fly, and a killed run resumed at the exact sample.

The fast tests drive trainer.data.streaming.PackedStream with the tiny tokenizer: a stream started at a recorded
position yields exactly what the uninterrupted stream yields from there, without reading a byte before it, and
wraps into the next pass at the end of the files. The slow test SIGKILLs a streamed run after a checkpoint and
reruns it: the rerun seeks to the position that checkpoint recorded and its losses are those of an uninterrupted
run, step by step.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import REPO, cli_run, compose

RECIPES = REPO / "trainer" / "assets" / "quickstart" / "recipes.jsonl"
MAX_LENGTH = 256


def stream_of(path: Path, tokenizer, on_error: str = "fail"):
    from trainer.config.schema import dataset_schema
    from trainer.data.formats import make_normaliser
    from trainer.data.streaming import PackedStream
    from trainer.data.tokenize import Encoder

    cfg = compose("dataset=chat_jsonl", f"dataset.path={path}")
    normalise = make_normaliser(dataset_schema(cfg.dataset), Counter())
    return PackedStream([path], normalise, Encoder(tokenizer, MAX_LENGTH), MAX_LENGTH, on_error)


def take(stream, count: int) -> list[dict]:
    out = []
    for sequence in stream:
        out.append(sequence)
        if len(out) == count:
            return out
    raise AssertionError("the stream ended")


def test_a_resumed_stream_seeks_to_its_position_and_yields_the_same_sequences(tmp_path, tiny_tokenizer):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(RECIPES.read_bytes())
    straight = stream_of(path, tiny_tokenizer)
    expected = take(straight, 12)
    position = straight.position_of(7)
    assert position.line > 7 and position.offset > 0  # a few rows per sequence at most, never the file's start
    assert sum(expected[6]["seq_lengths"]) <= MAX_LENGTH and len(expected[6]["input_ids"]) == len(expected[6]["labels"])

    data = bytearray(path.read_bytes())  # every byte before the position garbled: a stream re-reading it would fail
    data[: position.offset - 1] = b"x" * (position.offset - 1)
    path.write_bytes(bytes(data))
    resumed = stream_of(path, tiny_tokenizer)
    resumed.start_at(7, position)
    placeholders = {"input_ids": [0], "labels": [-100], "seq_lengths": [1]}  # skipped by the resumed Trainer
    assert take(resumed, 12) == [placeholders] * 7 + expected[7:]
    assert resumed.position_of(11) == straight.position_of(11)


def test_the_stream_starts_the_next_pass_after_the_last_row(tmp_path, tiny_tokenizer):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(RECIPES.read_text().splitlines()[:3]) + "\n\n")
    stream = stream_of(path, tiny_tokenizer)
    first = take(stream, 6)
    positions = [stream.position_of(k) for k in range(6) if k in stream._starts]
    assert {p.epoch for p in positions} >= {0, 1}
    assert first[0] in first[1:]  # the first row's sequence comes round again


def test_a_bad_row_names_its_file_and_line(tmp_path, tiny_tokenizer):
    from trainer.config.errors import UserError

    path = tmp_path / "rows.jsonl"
    lines = RECIPES.read_text().splitlines()[:4]
    path.write_text("\n".join([*lines[:2], "{not json", *lines[2:]]) + "\n")
    with pytest.raises(UserError, match=rf"{re.escape(str(path))}:3: not a JSON object"):
        take(stream_of(path, tiny_tokenizer), 4)
    skipping = stream_of(path, tiny_tokenizer, on_error="skip")
    take(skipping, 4)
    assert skipping.skipped >= 1


STREAM = [
    "model=tiny_random",
    "hardware=cpu",
    "hardware.threads=1",
    "dataset=chat_jsonl",
    f"dataset.path={RECIPES}",
    "dataset.streaming=true",
    "dataset.validation_size=0",
    "eval.enabled=false",
    "train.packing=true",
    f"train.max_length={MAX_LENGTH}",
    "train.per_device_train_batch_size=2",
]


def checked(*overrides: str) -> None:
    from launchers import check
    from trainer.cli import _pass_through

    check(compose(*map(_pass_through, overrides)))


def test_the_check_pass_says_what_streaming_needs():
    from trainer.config.errors import UserError

    broken = ["train.max_steps=4", "train.packing=false", "eval.enabled=true", "dataset.validation_size=0.1"]
    with pytest.raises(UserError) as caught:
        checked(*STREAM, *broken, "hardware=ddp")
    message = str(caught.value)
    assert message.startswith("dataset.streaming=true: "), message
    for expected in (
        "set train.packing=true",
        "set eval.enabled=false",
        "set dataset.validation_size=0 (it is 0.1)",
        "hardware=ddp does not",
    ):
        assert expected in message, message
    with pytest.raises(UserError, match="epochs cannot end it: set train.max_steps"):
        checked(*STREAM)
    checked(*STREAM, "train.max_steps=4")  # the run below passes


# ---------------------------------------------------------------- killed and resumed


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def stream_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]["StreamPosition"]


@pytest.mark.slow  # trains and kills a run
def test_a_killed_streaming_run_resumes_at_the_same_sample_and_loss(tmp_path, cache_dir, capsys):
    steps = ["train.max_steps=12", "train.save_steps=2", "train.save_total_limit=6", "train.learning_rate=3e-3"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    code, _, err = cli_run(capsys, *STREAM, *steps, f"hydra.run.dir={straight}")
    assert code == 0, err[-3000:]

    env = {**os.environ, "HYDRATUNE_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "trainer.cli", *STREAM, *steps, f"hydra.run.dir={killed}"]
    child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "checkpoint-4").is_dir() and child.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint-4 within 300 s"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    assert not (killed / "metrics.json").exists(), "the run finished before the kill"
    done = sorted(int(p.name.split("-")[1]) for p in (killed / "checkpoints").glob("checkpoint-*"))
    assert 4 <= done[-1] < 12, done
    resumed_from = killed / "checkpoints" / f"checkpoint-{done[-1]}"
    saved = stream_state(resumed_from)
    assert saved == stream_state(straight / "checkpoints" / f"checkpoint-{done[-1]}")  # same sample, same byte
    assert saved["attributes"]["sequence"] == done[-1] * 2

    code, _, err = cli_run(capsys, *STREAM, *steps, f"hydra.run.dir={killed}")
    assert code == 0, err[-3000:]
    log = (killed / "hydratune.log").read_text()
    position = saved["attributes"]["position"]
    expected = f"the stream resumes at sequence {saved['attributes']['sequence']}: recipes.jsonl line {position['line']} (byte {position['offset']})"
    assert expected in log, log[-3000:]
    assert losses(killed) == losses(straight)
    assert sorted(losses(killed)) == list(range(1, 13))
