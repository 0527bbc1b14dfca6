"""`hydratune record` against the fake OpenAI server: answers as a chat JSONL dataset, no prompt sent twice after a
SIGKILL, the estimate and its cap before the first request, the pace, retries, and bad input as one paragraph."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from launchers.cloud import record
from tests.fake_provider import FakeProvider, files_containing, write_chat_dataset
from tests.helpers import start
from trainer.config.errors import UserError

KEY = "sk-record-test-7f3a9"
FINETUNE = "ft:gpt-4o-mini-2024-07-18:acme::rec42"


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv("RECORD_TEST_KEY", KEY)
    with FakeProvider(api_key=KEY) as server:
        server.finetunes.add(FINETUNE)
        yield server


def args(fake: FakeProvider | None, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "dataset=chat_jsonl", f"dataset.path={data}", f"record.out={out}",
        f"record.endpoint.base_url={fake.openai_url if fake else 'http://127.0.0.1:9/v1'}",
        f"record.endpoint.model={FINETUNE}",
        "record.endpoint.api_key_env=RECORD_TEST_KEY", "record.endpoint.max_retries=3", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def composed():
    """The config of `hydratune record` composed once (Hydra's compose costs ~0.5 s); each test sets its own paths."""
    return record.compose(args(None, Path("data.jsonl"), Path("recorded.jsonl")))


def config(composed, fake: FakeProvider, data: Path, out: Path, **changes):
    """``composed`` for this fake and these files, with ``changes`` (dotted keys) applied."""
    from omegaconf import OmegaConf

    cfg = composed.copy()
    values = {"dataset.path": str(data), "record.out": str(out), "record.endpoint.base_url": fake.openai_url}
    for key, value in (values | changes).items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_answers_become_a_chat_dataset_in_the_prompts_order(fake, tmp_path):
    data = write_chat_dataset(tmp_path / "data.jsonl", 12, fake)
    fake.inject("chat", 429, 500)  # retried by the SDK (Retry-After honoured)
    out = tmp_path / "recorded.jsonl"
    record.main(args(fake, tmp_path / "data.jsonl", out, "record.endpoint.concurrency=3"))
    recorded = rows(out)
    assert [r["messages"] for r in recorded] == [d["messages"] for d in data]  # the fake fine-tune knows every answer
    assert fake.counters["injected.chat"] == 2 and max(fake.prompts.values()) == 1 and len(fake.prompts) == 12
    assert files_containing(tmp_path, KEY) == []
    from tests.helpers import compose
    from trainer.data import load_examples

    loaded = load_examples(compose("dataset=chat_jsonl", f"dataset.path={out}", "dataset.validation_size=0").dataset)
    assert len(loaded.train) == 12  # it trains as it is


@pytest.mark.slow  # kills a run
def test_killed_midway_then_rerun_sends_no_prompt_twice(fake, tmp_path, composed):
    write_chat_dataset(tmp_path / "data.jsonl", 40, fake)
    out = tmp_path / "recorded.jsonl"
    fake.chat_delay_s = 0.2
    command = ["record", *args(fake, tmp_path / "data.jsonl", out), "record.endpoint.concurrency=3"]
    env = {**os.environ, "RECORD_TEST_KEY": KEY}
    proc = start(command, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and out.read_text().count("\n") >= 10) and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    before = dict(fake.prompts)
    written = {r["messages"][1]["content"] for r in rows(out)}
    assert 10 <= len(written) < 40 and all(before[q] == 1 for q in written)

    fake.chat_delay_s = 0.0
    cfg = config(composed, fake, tmp_path / "data.jsonl", out)
    summary = record.record(cfg)
    assert max(fake.prompts.values()) == 1  # nothing the server saw was sent again
    in_flight = set(before) - written  # reached the server, never written: maybe billed
    assert in_flight  # killed with requests at the server (3 in flight, 0.2 s each)
    assert len(summary.in_flight_earlier) >= len(in_flight)  # plus any journaled but killed before leaving
    assert summary.answered_before == len(written) and summary.answered == 40 - len(written) - len(
        summary.in_flight_earlier
    )
    assert len(rows(out)) == 40 - len(summary.in_flight_earlier)

    again = record.record(config(composed, fake, tmp_path / "data.jsonl", out, **{"record.resend_in_flight": True}))
    assert again.answered == len(summary.in_flight_earlier) and len(rows(out)) == 40
    assert {q for q, n in fake.prompts.items() if n == 2} == in_flight  # only when asked, only those
    assert record.record(cfg).answered == 0


def test_the_estimate_and_its_cap_come_before_any_request(fake, tmp_path, capsys, composed):
    write_chat_dataset(tmp_path / "data.jsonl", 10, fake)
    priced = {"record.endpoint.usd_per_million_input_tokens": 0.3, "record.endpoint.usd_per_million_output_tokens": 1.2}
    out = tmp_path / "recorded.jsonl"
    with pytest.raises(UserError, match=r"USD for 10 prompts\) is above record.max_usd=0.001, so nothing was sent"):
        record.record(config(composed, fake, tmp_path / "data.jsonl", out, **priced, **{"record.max_usd": 0.001}))
    assert fake.counters["chat"] == 0
    line = capsys.readouterr().out
    # 10 prompts x (3 + 2 x (3 + role + words)) tokens, answers 512 tokens each at most: (tokens x 0.3 + 5120 x 1.2) / 1e6
    tokens = int(line.split("prompts to send: ")[1].split(" prompt tokens")[0].replace(",", ""))
    assert f"at most {(tokens * 0.3 + 5120 * 1.2) / 1e6:.4f} USD" in line and "tiktoken o200k_base" in line
    record.record(config(composed, fake, tmp_path / "data.jsonl", out, **priced, **{"record.max_usd": 0.01}))
    assert fake.counters["chat"] == 10


def test_requests_per_minute_spaces_the_requests(fake, tmp_path, composed):
    write_chat_dataset(tmp_path / "data.jsonl", 6, fake)
    started = time.monotonic()
    pace = {"record.requests_per_minute": 600, "record.endpoint.concurrency": 4}
    record.record(config(composed, fake, tmp_path / "data.jsonl", tmp_path / "r.jsonl", **pace))
    assert time.monotonic() - started >= 5 * 0.1  # 6 starts, 0.1 s apart whatever the concurrency


@pytest.mark.parametrize(
    ("setup", "changes", "message"),
    [
        (None, {"record.out": None}, "needs record.out"),
        (None, {"record.endpoint.api_key_env": "RECORD_UNSET_VAR"}, "RECORD_UNSET_VAR: that environment variable"),
        (None, {"record.max_usd": 1.0}, "record.max_usd=1.0 caps the cost, but the endpoint has no prices"),
        ("text", {"dataset.format": "text"}, "has rows without a prompt to send"),
        ("foreign", {}, "was not written by `hydratune record`"),
        ("other-model", {}, "holds the answers of model ft:gpt-4o-mini-2024-07-18:other::x"),
        ("edited", {}, r"recorded.jsonl:1 is not a line `hydratune record` wrote"),
        ("down", {"record.endpoint.concurrency": 1}, r"failed after 3 retries: HTTP 429 .*0 answers received so far"),
    ],
)
def test_bad_input_is_one_paragraph(fake, tmp_path, composed, setup, changes, message):
    data, out = tmp_path / "data.jsonl", tmp_path / "recorded.jsonl"
    write_chat_dataset(data, 4, fake)
    if setup == "text":
        data.write_text('{"text": "Flour, eggs and a pinch of salt."}\n' * 4)
    elif setup == "foreign":
        out.write_text('{"messages": []}\n')
    elif setup in ("other-model", "edited"):
        out.write_text("not json\n")
        header = {"model": "ft:gpt-4o-mini-2024-07-18:other::x" if setup == "other-model" else FINETUNE}
        header["base_url"] = fake.openai_url
        Path(f"{out}.sent").write_text(json.dumps({"header": header}) + "\n")
    elif setup == "down":
        fake.inject("chat", *[429] * 4)  # the first try and 3 retries
    with pytest.raises(UserError, match=message) as caught:
        record.record(config(composed, fake, data, out, **changes))
    assert "\n" not in str(caught.value)


def test_a_torn_last_line_is_cut_off_and_its_prompt_counted_as_in_flight(fake, tmp_path, composed):
    data, out = tmp_path / "data.jsonl", tmp_path / "recorded.jsonl"
    write_chat_dataset(data, 3, fake)
    record.record(config(composed, fake, data, out))
    whole = out.read_bytes()
    kept = whole[: whole.rfind(b"\n", 0, len(whole) - 1) + 1]
    out.write_bytes(kept + b'{"messages": [{"ro')  # killed in the middle of writing the last answer
    summary = record.record(config(composed, fake, data, out))
    assert (summary.answered_before, summary.answered, len(summary.in_flight_earlier)) == (2, 0, 1)
    assert out.read_bytes() == kept and max(fake.prompts.values()) == 1  # its answer came (paid): not asked again
