"""trainer.hosting.gate on a real uvicorn server on 127.0.0.1, around a stand-in engine app (no model loads): the
bearer key, the 4xx answers in OpenAI's error shape, the token cap, the queue and its 429s, the cancellation of a
request whose client has gone; and the compose-time refusal of a non-loopback host without a key. The same gate
around the real `transformers serve` on the tiny model: tests/test_serve_load.py."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import openai
import pytest

from tests.helpers import compose
from trainer.config.checks import check_config, is_loopback
from trainer.config.errors import UserError
from trainer.hosting import serve as serving
from trainer.hosting.gate import Gate, Limits

KEY_ENV = "HYDRATUNE_TEST_GATE_KEY"
KEY = "sk-test-0123456789abcdef"
HELLO = [{"role": "user", "content": "hello"}]


class Engine:
    """A stand-in for the engine's app: answers a chat completion with the body it received (streamed as SSE
    chunks when asked to stream), or holds it until ``release`` is set; records the bodies and the cancellations."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.cancelled = 0
        self.release: asyncio.Event | None = None
        self.answer_status = 200
        self.text: str | None = None  # the answer (else the max_tokens it was sent)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        message = await receive()
        body = json.loads(message["body"]) if message.get("body") else {}
        self.bodies.append(body)
        if self.answer_status != 200:  # FastAPI's own error shape
            return await _plain(send, self.answer_status, json.dumps({"detail": "engine says no"}).encode())
        try:
            if self.release is not None:
                await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        text = self.text if self.text is not None else json.dumps(body.get("max_tokens"))
        if not body.get("stream"):
            completion = {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                       "finish_reason": "stop"}]}  # fmt: skip
            return await _plain(send, 200, json.dumps(completion).encode())
        chunks = [{"delta": {"role": "assistant"}}, {"delta": {"content": text[:1]}}, {"delta": {"content": text[1:]}},
                  {"delta": {}, "finish_reason": "length"}]  # fmt: skip
        lines = [
            "data: " + json.dumps({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                   "choices": [{"index": 0, **c}]}) + "\n\n"
            for c in chunks
        ]  # fmt: skip
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for line in lines:
            await send({"type": "http.response.body", "body": line.encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b""})


async def _plain(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@contextmanager
def gated(limits: Limits) -> Iterator[tuple[str, Engine, Gate, asyncio.AbstractEventLoop]]:
    """The gate around an Engine, served by uvicorn on 127.0.0.1 in a thread: (base URL, engine, gate, loop)."""
    import uvicorn

    engine = Engine()
    gate = Gate(engine, limits)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(gate, log_level="warning", lifespan="off"))
    loops: list[asyncio.AbstractEventLoop] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        loops.append(loop)
        loop.run_until_complete(server.serve(sockets=[sock]))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", engine, gate, loops[0]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def keyed(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with gated(Limits(max_tokens=64, api_key_env=KEY_ENV, queue=2)) as served:
        yield served


def _client(url: str, key: str = KEY, timeout: float = 10.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=timeout)


def _chat(client: openai.OpenAI, **kwargs):
    return client.chat.completions.create(model="m", **{"messages": HELLO, **kwargs})


def test_a_request_needs_the_bearer_key(keyed):
    url, engine, _, _ = keyed
    for key in ("", "sk-wrong", KEY[:-1], KEY + "x"):
        with pytest.raises(openai.AuthenticationError) as caught:
            _chat(_client(url, key or "unset"), max_tokens=4)
        assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
        assert caught.value.response.headers["www-authenticate"] == "Bearer"
    no_header = httpx.post(f"{url}/chat/completions", json={"messages": HELLO})
    assert no_header.status_code == 401 and no_header.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"{url}/models").status_code == 401
    assert engine.bodies == []  # nothing reached the engine
    answer = _chat(_client(url), max_tokens=4)
    assert answer.choices[0].message.content == "4"
    assert httpx.get(url.removesuffix("/v1") + "/health").status_code == 200  # the readiness check stays open


def _called(arguments) -> dict:
    """An assistant message with one call of f(arguments)."""
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    return {"role": "assistant", "content": None, "tool_calls": [call]}


BAD = [
    ({"messages": []}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": HELLO, "max_tokens": -5}, "max_tokens"),
    ({"messages": HELLO, "max_tokens": 0}, "max_tokens"),
    ({"messages": HELLO, "max_tokens": 2.5}, "max_tokens"),
    ({"messages": HELLO, "max_tokens": "10"}, "max_tokens"),
    ({"messages": HELLO, "max_tokens": True}, "max_tokens"),
    ({"messages": HELLO, "max_completion_tokens": 100000000}, "max_completion_tokens"),
    ({"messages": HELLO, "max_tokens": 65}, "max_tokens"),
    ({"messages": HELLO, "temperature": "hot"}, "temperature"),
    ({"messages": HELLO, "temperature": 3}, "temperature"),
    ({"messages": HELLO, "stream": "yes"}, "stream"),
    ({"messages": HELLO, "n": 3}, "n"),
    ({"messages": HELLO, "stop": [1, 2]}, "stop"),
    ({"messages": HELLO, "generation_config": '{"max_new_tokens": 100000000}'}, "generation_config"),
    ([1, 2], None),
    ({"messages": HELLO, "tools": [{"type": "function"}]}, "tools[0]"),
    ({"messages": HELLO, "tools": "get_weather"}, "tools"),
    ({"messages": [_called("{city: Oslo}")]}, "messages[0].tool_calls[0]"),
    ({"messages": [_called('["Oslo"]')]}, "messages[0].tool_calls[0]"),
]


def test_bad_requests_get_400_with_the_reason(keyed):
    url, engine, _, _ = keyed
    for body, param in BAD:
        answer = httpx.post(f"{url}/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
        assert answer.status_code == 400, (body, answer.text)
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"], body
    assert engine.bodies == []


def test_a_body_that_is_not_json_gets_400_and_the_sdk_reads_the_reason(keyed):
    url, _, _, _ = keyed
    answer = httpx.post(f"{url}/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 400 and "not valid JSON" in answer.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="above this server's limit of 64 new tokens"):
        _chat(_client(url), max_tokens=100000000)


def test_the_cap_is_the_default_and_a_request_within_it_passes_as_sent(keyed):
    url, engine, _, _ = keyed
    assert _chat(_client(url)).choices[0].message.content == "64"
    assert _chat(_client(url), max_tokens=64).choices[0].message.content == "64"
    assert [b["max_tokens"] for b in engine.bodies] == [64, 64]


def test_a_non_streaming_request_is_generated_as_a_stream_and_answered_as_one_object(keyed):
    url, engine, _, _ = keyed
    answer = _chat(_client(url), max_tokens=12)
    assert engine.bodies[-1]["stream"] is True  # cancellable upstream
    assert answer.object == "chat.completion" and answer.choices[0].message.content == "12"
    assert answer.choices[0].finish_reason == "length"
    chunks = list(_chat(_client(url), max_tokens=7, stream=True))  # a streaming client gets the stream
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "7"


def test_the_engines_own_errors_come_in_openais_shape(keyed):
    url, engine, _, _ = keyed
    engine.answer_status = 422
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        _chat(_client(url), max_tokens=4)
    assert caught.value.body == {"message": "engine says no", "type": "invalid_request_error", "param": None,
                                 "code": None}  # fmt: skip
    answer = httpx.post(f"{url.removesuffix('/v1')}/reset", headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 404 and "not served here" in answer.json()["error"]["message"]


def test_beyond_the_queue_requests_get_429_with_retry_after():
    """One slot, one waiting place: the third concurrent request is refused at once; the waiting one is served
    when the slot frees; one that waits past queue_timeout_s is refused too."""
    with gated(Limits(max_tokens=64, concurrency=1, queue=1, queue_timeout_s=30.0)) as (url, engine, gate, loop):
        engine.release = asyncio.Event()
        results: dict[str, object] = {}

        def call(name: str) -> None:
            try:
                results[name] = _chat(_client(url, timeout=30), max_tokens=3).choices[0].message.content
            except openai.APIStatusError as exc:
                results[name] = exc

        first = threading.Thread(target=call, args=("first",))
        first.start()
        _until(lambda: len(engine.bodies) == 1)
        second = threading.Thread(target=call, args=("second",))
        second.start()
        _until(lambda: gate.admission is not None and gate.admission.waiting == 1)
        call("third")
        refused = results["third"]
        assert isinstance(refused, openai.RateLimitError) and refused.status_code == 429
        assert int(refused.response.headers["retry-after"]) >= 1
        assert refused.body["type"] == "rate_limit_error"
        loop.call_soon_threadsafe(engine.release.set)
        first.join(10), second.join(10)
        assert results["first"] == results["second"] == "3"
    with gated(Limits(max_tokens=64, concurrency=1, queue=4, queue_timeout_s=0.5)) as (url, engine, gate, loop):
        engine.release = asyncio.Event()
        first = threading.Thread(target=call, args=("held",))
        first.start()
        _until(lambda: len(engine.bodies) == 1)
        call("late")
        assert isinstance(results["late"], openai.RateLimitError) and "within 0.5 s" in str(results["late"])
        loop.call_soon_threadsafe(engine.release.set)
        first.join(10)


def test_a_client_that_disconnects_has_its_request_cancelled_and_its_slot_freed():
    with gated(Limits(max_tokens=64, concurrency=1, queue=0)) as (url, engine, gate, loop):
        engine.release = asyncio.Event()
        with pytest.raises(openai.APITimeoutError):
            _chat(_client(url, timeout=0.5), max_tokens=3)  # the client gives up while the engine generates
        _until(lambda: engine.cancelled == 1)
        assert gate.cancelled == 1 and gate.admission is not None and gate.admission.active == 0
        loop.call_soon_threadsafe(engine.release.set)
        assert _chat(_client(url), max_tokens=5).choices[0].message.content == "5"  # the slot is free again


def _until(condition, timeout: float = 10.0) -> None:
    event = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        event.wait(0.01)
    raise AssertionError("condition not reached")


def test_a_non_loopback_host_without_a_key_is_refused_at_compose_time():
    with pytest.raises(UserError, match="serve.host=0.0.0.0 makes `hydratune serve` reachable") as caught:
        check_config(compose("serve.host=0.0.0.0"))
    assert "serve.api_key_env=HYDRATUNE_SERVE_KEY" in str(caught.value)
    check_config(compose("serve.host=0.0.0.0", "serve.api_key_env=HYDRATUNE_SERVE_KEY"))


def test_only_loopback_addresses_count_as_this_machine():
    assert all(map(is_loopback, ["127.0.0.1", "127.0.0.2", "localhost", "LOCALHOST", "::1", "[::1]"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "", "192.168.1.5", "10.0.0.1", "example.com", "127.0.0.1.x"]))


def test_serve_refuses_0_0_0_0_without_a_key_and_a_named_key_that_is_unset(tmp_path, monkeypatch):
    """Before the target is even looked at (an empty folder here), so before any model loads."""
    with pytest.raises(UserError, match="serve.host=0.0.0.0 makes `hydratune serve` reachable"):
        serving.main([f"hydra.run.dir={tmp_path}", "serve.host=0.0.0.0"])
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(UserError, match=f"the environment variable {KEY_ENV} is empty or unset"):
        serving.main([f"hydra.run.dir={tmp_path}", "serve.host=0.0.0.0", f"serve.api_key_env={KEY_ENV}"])


def test_the_engine_gets_the_gates_settings_but_never_the_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    cfg = compose(f"serve.api_key_env={KEY_ENV}", "serve.max_tokens=99", "serve.queue=3")
    settings = serving.gate_settings(cfg.serve)
    assert KEY not in settings
    assert Limits(**json.loads(settings)) == Limits(max_tokens=99, concurrency=1, queue=3, api_key_env=KEY_ENV)


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}}}}}]  # fmt: skip
TWO_CALLS = (
    'Checking both.\n<tool_call>\n{"arguments": {"city": "Oslo"}, "name": "get_weather"}\n</tool_call>\n'
    '<tool_call>\n{"arguments": {"city": "Lima"}, "name": "get_weather"}\n</tool_call>'
)


def _streamed_calls(stream) -> tuple[str, dict[int, dict], str | None]:
    """(content, {index: {id, name, arguments}}, finish reason) of an SDK chat-completion stream."""
    content, calls, finish = "", {}, None
    for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                got = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                got["id"] += call.id or ""
                got["name"] += call.function.name or ""
                got["arguments"] += call.function.arguments or ""
            finish = choice.finish_reason or finish
    return content, calls, finish


def test_a_request_with_tools_gets_the_models_calls_as_tool_calls(keyed):
    """The engine's text with two <tool_call> blocks, through the openai SDK with tools=: two parsed calls (arguments
    as JSON strings), the text before them as the content, finish_reason tool_calls; streamed the same."""
    url, engine, _, _ = keyed
    engine.text = TWO_CALLS
    client = _client(url)
    answer = _chat(client, tools=TOOLS)
    message = answer.choices[0].message
    assert answer.choices[0].finish_reason == "tool_calls" and message.content == "Checking both."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Lima"}),
    ]  # fmt: skip
    assert len({c.id for c in message.tool_calls}) == 2 and engine.bodies[-1]["stream"] is True
    content, calls, finish = _streamed_calls(_chat(client, tools=TOOLS, stream=True))
    assert content == "Checking both." and finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        ("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Lima"}),
    ]  # fmt: skip
    assert [c["id"] for c in calls.values()] == [c.id for c in message.tool_calls]


def test_a_broken_call_or_a_request_without_tools_keeps_the_text_as_the_models_content(keyed):
    """A call that is not valid JSON is no tool call: the client sees what the model wrote (and the evaluation
    scores it invalid); a request without tools is answered as text even when the text looks like a call."""
    url, engine, _, _ = keyed
    client = _client(url)
    engine.text = '<tool_call>\n{"arguments": {"city": }, "name": "get_weather"}\n</tool_call>'
    broken = _chat(client, tools=TOOLS)
    assert broken.choices[0].message.content == engine.text and broken.choices[0].message.tool_calls is None
    assert broken.choices[0].finish_reason == "length"  # the engine's own
    engine.text = TWO_CALLS
    plain = _chat(client)
    assert plain.choices[0].message.content == TWO_CALLS and plain.choices[0].message.tool_calls is None
    engine.text = "It is sunny."
    content, calls, finish = _streamed_calls(_chat(client, tools=TOOLS, stream=True))
    assert (content, calls, finish) == ("It is sunny.", {}, "length")
