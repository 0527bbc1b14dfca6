"""`hydratune serve` (the real `transformers serve` behind trainer.hosting.gate) on the tiny model, on 127.0.0.1:
16 concurrent openai-SDK clients for 30 s, one of them asking for far more tokens than serve.max_tokens; a client
that gives up mid-generation has its generation stopped (the server's own CPU time goes flat)."""

from __future__ import annotations

import os
import statistics
import threading
import time

import openai
import pytest

from tests.helpers import compose
from trainer.hosting import export
from trainer.hosting.serve import serving

pytestmark = pytest.mark.serial  # counts on the cores being free (make test runs these alone)

KEY_ENV = "HYDRATUNE_TEST_SERVE_KEY"
KEY = "sk-load-test-9f8e7d6c5b4a"
CAP = 20000  # tokens: a request at the cap runs for minutes on any CPU (2,000 took under 4 s on a fast one), so a cancellation shows
TIMEOUT_S = 60.0  # every client's timeout
HELLO = [{"role": "user", "content": "Recipe 1: 2 cups flour, a pinch of salt"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory, cache_dir):
    from trainer.models import tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("load") / "tiny"
    tokenizer = tiny_tokenizer()
    tiny_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    os.environ[KEY_ENV] = KEY
    cfg = compose(
        "serve.port=0", f"serve.max_tokens={CAP}", "serve.queue=8", "serve.queue_timeout_s=20",
        f"serve.api_key_env={KEY_ENV}", "serve.device=cpu", f"cache_dir={cache_dir}",
    )  # fmt: skip
    try:
        with serving(export.find(folder), cfg, log_file=folder.parent / "serve.log") as served:
            yield served
    finally:
        del os.environ[KEY_ENV]


def _client(server, key: str = KEY, timeout: float = TIMEOUT_S) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=timeout)


def _cpu_s(pid: int) -> float:
    """CPU time (user + system, every thread) the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_rate(pid: int, seconds: float) -> float:
    start = _cpu_s(pid)
    time.sleep(seconds)
    return (_cpu_s(pid) - start) / seconds


@pytest.mark.slow
def test_16_clients_for_30_s_are_each_answered_or_refused_within_their_timeout(server):
    records: list[tuple[int, str, float]] = []  # (client, outcome, latency)
    lock = threading.Lock()
    deadline = time.monotonic() + 30

    def client(index: int) -> None:
        api = _client(server)
        greedy = index == 0
        while time.monotonic() < deadline:
            start = time.monotonic()
            wait = 0.0
            try:
                kwargs = {"model": server.model, "messages": HELLO, "max_tokens": 10**8 if greedy else 8}
                if index % 2:
                    chunks = list(api.chat.completions.create(**kwargs, stream=True))  # type: ignore[call-overload]
                    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
                else:
                    api.chat.completions.create(**kwargs)  # type: ignore[call-overload]
                outcome = "200"
            except openai.APIStatusError as exc:
                outcome = str(exc.status_code)
                if exc.status_code == 429:
                    wait = float(exc.response.headers["retry-after"])
            except Exception as exc:  # noqa: BLE001 - a timeout or a broken connection fails the test below
                outcome = type(exc).__name__
            with lock:
                records.append((index, outcome, time.monotonic() - start))
            time.sleep(min(wait, max(0.0, deadline - time.monotonic())))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30 + 2 * TIMEOUT_S)
    outcomes = [o for _, o, _ in records]
    counts = {o: outcomes.count(o) for o in sorted(set(outcomes))}
    answered = sorted(s for _, o, s in records if o == "200")
    print(f"\nload test: {len(records)} requests {counts}; answered latency p50 {statistics.median(answered):.2f} s, "
          f"p95 {statistics.quantiles(answered, n=20)[-1]:.2f} s, max {answered[-1]:.2f} s; "
          f"every request max {max(s for _, _, s in records):.2f} s")  # fmt: skip
    assert set(counts) <= {"200", "400", "429"}, counts  # no timeout, no 500, no broken connection
    assert all(s < TIMEOUT_S for _, _, s in records)
    assert {o for i, o, _ in records if i == 0} == {"400"}  # the greedy client: refused each time, at once
    assert {o for i, o, _ in records if i != 0} <= {"200", "429"} and counts["200"] >= 15
    assert not any(t.is_alive() for t in threads)


@pytest.mark.slow
def test_a_client_that_goes_away_stops_its_generation(server):
    """A non-streaming request at the cap, then a streaming one, each abandoned by its client: the server's CPU
    time goes flat within a second (generation stopped), and the next request is answered."""
    pid = server.process.pid
    assert _cpu_rate(pid, 1.0) < 0.2  # idle before
    for stream in (False, True):
        gone = threading.Event()
        outcome: list[str] = []
        thread = threading.Thread(target=_abandon, args=(server, stream, outcome, gone))
        thread.start()
        time.sleep(1.5)
        busy = _cpu_rate(pid, 1.0) if not gone.is_set() else None
        assert gone.wait(30)
        thread.join(5)
        assert outcome == ["closed" if stream else "timed out"]
        time.sleep(1.0)
        idle = _cpu_rate(pid, 3.0)
        print(f"\nstream={stream}: server CPU {busy} s/s while generating, {idle:.3f} s/s after the client left")
        assert idle < 0.1
        if busy is not None:
            assert busy > 3 * idle
        answer = _client(server).chat.completions.create(model=server.model, messages=HELLO, max_tokens=4)
        assert answer.usage is not None and answer.usage.completion_tokens == 4


def _abandon(server, stream: bool, outcome: list[str], gone: threading.Event) -> None:
    """A request at the cap that its client abandons: a stream closed after 20 chunks, or a 4 s client timeout."""
    try:
        if stream:
            chunks = _client(server, timeout=30).chat.completions.create(
                model=server.model, messages=HELLO, max_tokens=CAP, stream=True
            )
            for i, _ in enumerate(chunks):
                if i == 20:
                    chunks.close()  # the client stops reading and closes the connection
                    break
            outcome.append("closed")
        else:
            _client(server, timeout=4).chat.completions.create(model=server.model, messages=HELLO, max_tokens=CAP)
    except openai.APITimeoutError:
        outcome.append("timed out")
    finally:
        gone.set()


@pytest.mark.slow
def test_the_real_server_checks_the_key_and_answers_bad_requests_with_400(server):
    with pytest.raises(openai.AuthenticationError):
        _client(server, key="sk-wrong").chat.completions.create(model=server.model, messages=HELLO, max_tokens=4)
    api = _client(server)
    for kwargs in ({"messages": []}, {"messages": HELLO, "max_tokens": -5}, {"messages": HELLO, "max_tokens": CAP + 1}):
        with pytest.raises(openai.BadRequestError) as caught:
            api.chat.completions.create(model=server.model, **kwargs)  # type: ignore[call-overload]
        assert caught.value.body["param"] in ("messages", "max_tokens")
    answer = api.chat.completions.create(model=server.model, messages=HELLO, max_tokens=3)
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 3
