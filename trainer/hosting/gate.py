"""The gate in front of the serving engine: an ASGI layer that wraps the engine's own app, in the engine's process.

For every request it checks, in this order: the bearer key (``serve.api_key_env``; 401), the route (chat
completions, models and health only; 404), the body (400 with the reason: empty ``messages``, a ``max_tokens``
that is not a whole number from 1 to ``serve.max_tokens``, wrong types, tools without a name, an earlier call whose
arguments are not a JSON object or its text), then the concurrency limit
(``serve.concurrency`` requests generate at once, ``serve.queue`` more wait at most ``serve.queue_timeout_s``; any
beyond: 429 with Retry-After). A request that names no ``max_tokens`` gets ``serve.max_tokens``. When the client
disconnects, the request's task in the engine is cancelled: `transformers serve` then stops ``model.generate`` at
its next token (``stream_upstream``: a non-streaming request is generated as a stream and answered as one JSON
object, because only the engine's streaming path can be cancelled). A request with ``tools`` is answered once the
whole answer is in: its ``<tool_call>`` blocks (the format the saved chat template asks for,
trainer.hosting.tool_template) become OpenAI's ``tool_calls`` (:func:`with_tool_calls`), sent as one object or as a
short stream. Every error, the engine's own included, has OpenAI's shape:
``{"error": {"message", "type", "param", "code"}}``.

:func:`install` puts the gate around the app `transformers serve` builds (its ``build_server`` factory, wrapped:
nothing of the library's server is copied); the settings come from the environment variable ``ENV`` (JSON, no
secret in it: the key is read from the variable ``api_key_env`` names).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

log = logging.getLogger(__name__)
ENV = "HYDRATUNE_SERVE_GATE"
CHAT = "/v1/chat/completions"
OPEN_ROUTES = {("GET", "/health")}  # the readiness check: no key, no body
ROUTES = {("POST", CHAT), ("GET", "/v1/models")}
MAX_BODY = 4 * 1024 * 1024
ROLES = {"system", "developer", "user", "assistant", "tool"}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]


@dataclasses.dataclass(frozen=True)
class Limits:
    max_tokens: int = 1024
    concurrency: int = 1
    queue: int = 16
    queue_timeout_s: float = 30.0
    api_key_env: str | None = None
    stream_upstream: bool = True

    def to_env(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_env(cls) -> Limits:
        return cls(**json.loads(os.environ.get(ENV, "{}")))


class Refused(Exception):
    """A request answered by the gate: HTTP status, OpenAI error fields, extra headers."""

    def __init__(self, status: int, message: str, kind: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code
        self.headers: list[tuple[bytes, bytes]] = []


def bad(message: str, param: str | None = None) -> Refused:
    return Refused(400, message, "invalid_request_error", param)


def check_chat(body: Any, limits: Limits) -> dict:
    """The chat-completions body, checked; a request naming no token limit gets ``limits.max_tokens``."""
    if not isinstance(body, dict):
        raise bad("The request body must be a JSON object.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty list of {role, content} objects.", "messages")
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise bad(f"{param} must be an object whose 'role' is one of {', '.join(sorted(ROLES))}.", param)
        content = message.get("content")
        if not (isinstance(content, str | list) or (content is None and message["role"] == "assistant")):
            raise bad(f"{param}.content must be a string or a list of content parts.", f"{param}.content")
        if isinstance(content, list) and not all(
            isinstance(p, dict) and isinstance(p.get("type"), str) for p in content
        ):
            raise bad(f"{param}.content: each content part must be an object with a 'type'.", f"{param}.content")
    named = [k for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None]
    for key in named:
        value = body[key]
        if not _is_int(value) or value < 1:
            raise bad(f"'{key}' must be a whole number of at least 1 (got {json.dumps(value)}).", key)
        if value > limits.max_tokens:
            raise bad(
                f"'{key}'={value} is above this server's limit of {limits.max_tokens} new tokens a request "
                "(serve.max_tokens). Ask for fewer.",
                key,
            )
    if not named:
        body["max_tokens"] = limits.max_tokens
    if "generation_config" in body:
        raise bad(
            "'generation_config' is not accepted here: use max_tokens, temperature, top_p, stop, seed.",
            "generation_config",
        )
    if body.get("n") not in (None, 1):
        raise bad("'n' must be 1: this server writes one choice a request.", "n")
    for key, low, high in (("temperature", 0, 2), ("top_p", 0, 1), ("frequency_penalty", -2, 2)):
        value = body.get(key)
        if value is not None and (not _is_number(value) or not low <= value <= high):
            raise bad(f"'{key}' must be a number from {low} to {high} (got {json.dumps(value)}).", key)
    kinds: tuple[tuple[str, type | tuple[type, ...], str], ...] = (
        ("model", str, "a string"), ("stream", bool, "true or false"), ("stop", (str, list), "a string or a list"),
        ("seed", int, "a whole number"), ("tools", list, "a list"), ("logit_bias", dict, "an object"),
    )  # fmt: skip
    for key, kind, what in kinds:
        value = body.get(key)
        if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise bad(f"'{key}' must be {what} (got {json.dumps(value)}).", key)
    if isinstance(body.get("stop"), list) and not all(isinstance(s, str) for s in body["stop"]):
        raise bad("'stop' must be a string or a list of strings.", "stop")
    _check_tools(body)
    return body


def _check_tools(body: dict) -> None:
    """``tools`` are function definitions with a name; an earlier call's ``arguments`` are a JSON object (or its
    text)."""
    for k, tool in enumerate(body.get("tools") or []):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            shape = '{"type": "function", "function": {"name": ..., "parameters": {...}}}'
            raise bad(f"tools[{k}] must be a function definition: {shape}.", f"tools[{k}]")
    for i, message in enumerate(body["messages"]):
        calls = message.get("tool_calls")
        if calls is None:
            continue
        param = f"messages[{i}].tool_calls"
        if not isinstance(calls, list) or message["role"] != "assistant":
            raise bad(f"{param} must be a list, on an assistant message.", param)
        for k, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, dict) else None
            arguments = fn.get("arguments") if isinstance(fn, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not _json_object(arguments):
                shape = '{"id": ..., "type": "function", "function": {"name": ..., "arguments": "{...}"}}'
                raise bad(
                    f"{param}[{k}] must be {shape}, its arguments a JSON object (or a string holding one).",
                    f"{param}[{k}]",
                )


def _json_object(arguments: Any) -> bool:
    """A JSON object's text (OpenAI's shape), or the object itself (a canonical row's)."""
    if isinstance(arguments, dict):
        return True
    try:
        return isinstance(arguments, str) and isinstance(json.loads(arguments), dict)
    except ValueError:
        return False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class Admission:
    """``concurrency`` requests at once, ``queue`` more waiting; a request that cannot wait gets 429."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.active = self.waiting = 0
        self.free = asyncio.Condition()
        self.mean_s = 1.0  # moving mean of a request's time in the engine, for Retry-After

    async def enter(self) -> None:
        limits = self.limits
        async with self.free:
            if self.active >= limits.concurrency and self.waiting >= limits.queue:
                raise self.busy(f"{self.active} requests are generating and {self.waiting} are waiting")
            self.waiting += 1
            try:
                await asyncio.wait_for(
                    self.free.wait_for(lambda: self.active < limits.concurrency), limits.queue_timeout_s
                )
            except TimeoutError:
                raise self.busy(f"no generation slot freed within {limits.queue_timeout_s:g} s") from None
            finally:
                self.waiting -= 1
            self.active += 1

    async def leave(self, seconds: float) -> None:
        self.mean_s = 0.8 * self.mean_s + 0.2 * seconds
        async with self.free:
            self.active -= 1
            self.free.notify_all()

    def busy(self, why: str) -> Refused:
        wait = max(1, math.ceil(self.mean_s * (self.waiting + 1) / self.limits.concurrency))
        refused = Refused(429, f"The server is busy ({why}); retry after {wait} s.", "rate_limit_error")
        refused.headers.append((b"retry-after", str(wait).encode()))
        return refused


class Gate:
    """The ASGI app: checks, limits and cancellation (see the module docstring) around the engine's ``app``."""

    def __init__(self, app: App, limits: Limits | None = None) -> None:
        self.app = app
        self.limits = limits or Limits.from_env()
        env = self.limits.api_key_env
        key = os.environ.get(env, "") if env else ""
        if env and not key:
            raise RuntimeError(f"serve.api_key_env={env}: the environment variable {env} is empty or unset")
        self.key = f"Bearer {key}".encode() if key else None
        self.admission: Admission | None = None
        self.cancelled = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)  # lifespan: the engine's own start-up and shut-down
        route = (scope["method"], scope["path"])
        try:
            if route in OPEN_ROUTES:
                return await self.app(scope, receive, send)
            self.check_key(scope)
            if route not in ROUTES:
                raise Refused(404, f"{scope['method']} {scope['path']} is not served here.", "invalid_request_error")
            if route != ("POST", CHAT):
                return await self.app(scope, receive, _openai_errors(send))
            body = check_chat(await _json_body(receive), self.limits)
        except Refused as refused:
            return await _answer(send, refused)
        await self.generate(scope, body, receive, send)

    def check_key(self, scope: Scope) -> None:
        if self.key is None:
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.key):
            refused = Refused(
                401, "Missing or wrong API key: send the header 'Authorization: Bearer KEY'.",
                "invalid_request_error", code="invalid_api_key",
            )  # fmt: skip
            refused.headers.append((b"www-authenticate", b"Bearer"))
            raise refused

    async def generate(self, scope: Scope, body: dict, receive: Receive, send: Send) -> None:
        """Wait for a slot, run the engine's handler; cancel it (and so its generation) if the client goes."""
        self.admission = self.admission or Admission(self.limits)
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, gone))
        try:
            entered = asyncio.create_task(self.admission.enter())
            if not await _first(entered, gone):
                return
            try:
                await entered
            except Refused as refused:
                return await _answer(send, refused)
            start = time.monotonic()
            try:
                await self.run_engine(scope, body, gone, send)
            finally:
                await self.admission.leave(time.monotonic() - start)
        finally:
            watcher.cancel()

    async def run_engine(self, scope: Scope, body: dict, gone: asyncio.Event, send: Send) -> None:
        tools, stream = bool(body.get("tools")), bool(body.get("stream"))
        collect = tools or (self.limits.stream_upstream and not stream)  # a call is parsed from the whole answer
        if collect and self.limits.stream_upstream:
            body = {**body, "stream": True}
            body.pop("stream_options", None)
        raw = json.dumps(body).encode()
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
        sent = False

        async def inner_receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        collector = _Collector()
        inner = {**scope, "headers": headers}
        task = asyncio.create_task(self.app(inner, inner_receive, collector.send if collect else _openai_errors(send)))
        if not await _first(task, gone):
            self.cancelled += 1
            log.warning("client disconnected: its request was cancelled (%d so far)", self.cancelled)
            return
        await task
        if collect:
            await collector.answer(send, tools, stream)


async def _first(task: asyncio.Task, gone: asyncio.Event) -> bool:
    """Wait for ``task`` or the client's disconnect; False (and ``task`` cancelled and awaited) if the client went."""
    waiter = asyncio.create_task(gone.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        return True
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the client is gone; nothing to answer
        pass
    return False


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


async def _json_body(receive: Receive) -> Any:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Refused(400, "The client disconnected before sending its body.", "invalid_request_error")
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_BODY:
            raise Refused(413, f"The request body is over {MAX_BODY // 2**20} MiB.", "invalid_request_error")
        if not message.get("more_body"):
            break
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"The request body is not valid JSON: {exc}.") from None


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


async def _answer(send: Send, refused: Refused) -> None:
    await _send_json(send, refused.status, error_body(str(refused), refused.kind, refused.param, refused.code),
                     refused.headers)  # fmt: skip


async def _send_json(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def _reshape(status: int, raw: bytes) -> bytes:
    """The engine's error body (FastAPI's {"detail": ...}, {"error": "..."} or plain text) in OpenAI's shape."""
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = raw.decode(errors="replace")
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return raw
    if isinstance(parsed, dict):
        parsed = parsed.get("detail", parsed.get("error", parsed))
    message = parsed if isinstance(parsed, str) else json.dumps(parsed)
    return error_body(message, "invalid_request_error" if status < 500 else "server_error")


def _openai_errors(send: Send) -> Send:
    """``send`` with the engine's error answers (status 400 and up) rewritten in OpenAI's error shape."""
    held: dict[str, Any] = {}

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            held.update(status=message["status"], body=b"")
            return
        if held and message["type"] == "http.response.body":
            held["body"] += message.get("body", b"")
            if not message.get("more_body"):
                await _send_json(send, held["status"], _reshape(held["status"], held["body"]))
            return
        await send(message)

    return wrapped


class _Collector:
    """The engine's stream of chat-completion chunks, answered as one ``chat.completion`` object."""

    def __init__(self) -> None:
        self.status = 200
        self.raw = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.raw += message.get("body", b"")

    async def answer(self, send: Send, tools: bool = False, stream: bool = False) -> None:
        if self.status != 200:
            return await _send_json(send, self.status, _reshape(self.status, self.raw))
        completion = self.completion()
        if "error" in completion:
            return await _send_json(send, 500, error_body(completion["error"], "server_error"))
        if tools:
            with_tool_calls(completion)
        if stream:
            return await _send_stream(send, completion)
        await _send_json(send, 200, json.dumps(completion).encode())

    def completion(self) -> dict[str, Any]:
        """The answer as one ``chat.completion`` object (from the engine's chunks, or its JSON answer); or
        ``{"error": message}`` when the engine's stream reported one."""
        text = self.raw.decode()
        if not text.lstrip().startswith("data:"):
            return json.loads(text)
        content, reasoning = "", ""
        tool_calls: list[dict] = []
        last: dict[str, Any] = {}
        for line in text.splitlines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            if "error" in chunk:
                return {"error": chunk["error"] if isinstance(chunk["error"], str) else json.dumps(chunk["error"])}
            last = {**last, **{k: v for k, v in chunk.items() if k != "choices"}}
            for choice in chunk.get("choices", []):
                delta = choice.get("delta") or {}
                content += delta.get("content") or ""
                reasoning += delta.get("reasoning_content") or ""
                tool_calls += [{k: v for k, v in t.items() if k != "index"} for t in delta.get("tool_calls") or []]
                last["finish_reason"] = choice.get("finish_reason") or last.get("finish_reason")
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reasoning:
            message["reasoning_content"] = reasoning
        if tool_calls:
            message["tool_calls"] = tool_calls
        return {
            "id": last.get("id"),
            "object": "chat.completion",
            "created": last.get("created"),
            "model": last.get("model"),
            "choices": [{"index": 0, "message": message, "finish_reason": last.get("finish_reason")}],
            "usage": last.get("usage"),
        }


def with_tool_calls(completion: dict[str, Any]) -> None:
    """The answer's ``<tool_call>`` blocks (trainer.data.tool_calls' format, which the saved chat template asks for)
    as OpenAI's ``tool_calls``, with ``finish_reason`` "tool_calls"; the text around them stays the content. An
    answer with no call, or a call that is not valid JSON with a name, is left as the model wrote it."""
    from trainer.data.tool_calls import CALL, parse_calls

    choice = completion["choices"][0]
    message = choice["message"]
    if message.get("tool_calls") or not isinstance(message.get("content"), str):
        return  # the engine parsed the calls itself
    calls, found = parse_calls(message["content"])
    if not found or not calls:
        return
    content = CALL.sub("", message["content"]).strip() if CALL.search(message["content"]) else ""
    message["content"] = content or None
    message["tool_calls"] = [
        {
            "id": f"{completion.get('id') or 'call'}_tool_call_{i}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)},
        }
        for i, (name, arguments) in enumerate(calls)
    ]
    choice["finish_reason"] = "tool_calls"


async def _send_stream(send: Send, completion: dict[str, Any]) -> None:
    """A collected answer as a chat-completion stream: its content, its calls, then the finish reason and usage."""
    (choice,) = completion["choices"]
    message = choice["message"]
    head = {k: completion.get(k) for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": message.get("content") or ""}]
    if message.get("tool_calls"):
        deltas.append({"tool_calls": [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]})
    chunks = [{**head, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    last = {"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason")}
    chunks.append({**head, "choices": [last], "usage": completion.get("usage")})
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": body.encode()})


def install(limits: Limits | None = None) -> None:
    """Wrap `transformers serve`'s app factory so that the app it builds is served behind the gate."""
    from transformers.cli.serving import server

    build = server.build_server

    def gated(*args: Any, **kwargs: Any) -> Gate:
        return Gate(build(*args, **kwargs), limits)

    server.build_server = gated  # type: ignore[assignment]


def main() -> None:
    """`python -m trainer.hosting.gate serve ...`: `transformers serve ...` behind the gate."""
    install()
    from transformers.cli.transformers import main as transformers_main

    transformers_main()


if __name__ == "__main__":
    main()
