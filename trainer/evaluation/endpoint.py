"""Evaluation of a model behind an OpenAI-compatible API: a provider's model (OpenAI, Azure, Together...), a
model served by `hydratune serve`, vLLM or any other server with ``/v1/chat/completions``.

The queries, few-shot prompts and metrics are :mod:`trainer.evaluation.local`'s, so a section written here has the
same metric names, over the same held-out examples, as an in-process evaluation. Only the generation differs:
each query is one chat completion (a raw-prompt dataset uses ``/v1/completions``), with at most ``concurrency``
requests in flight, retries on 408/409/429/5xx and dropped connections (the SDK's own, honouring Retry-After,
unless the caller brings its own retrying ``call``) and a progress bar.

A function-calling query is asked as a local one is: its row's ``tools`` go with it (``tools=``, and earlier calls in
OpenAI's shape, :func:`openai_messages`), and the answer's ``tool_calls`` are written back as the ``<tool_call>``
blocks the tool-call metrics parse (:func:`answer_text`), so a served or provider model is scored on its calls
exactly as the in-process model is on its text.

- :func:`answer_all`: the answers of one model to the queries (used by provider runs with their own client).
- :func:`evaluate`: one metrics.json section for one model.
- :func:`compare_models`: the ``eval.compare_models`` sections (and ``eval.endpoint``), from the config.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.config.endpoints import configured
from trainer.config.errors import UserError
from trainer.data import tool_calls
from trainer.evaluation import local as evaluation
from trainer.evaluation.local import Query

log = logging.getLogger(__name__)
#: Sent as the API key to an endpoint whose ``api_key_env`` is null (a local server checks none).
NO_KEY = "no-key"


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int


def _direct(fn: Callable[..., Any], *args: Any, what: str = "", **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


def generation_args(gen: Any) -> dict[str, Any]:
    """``eval.generation`` as chat-completion arguments (greedy: temperature 0)."""
    args: dict[str, Any] = {"max_tokens": int(gen.max_new_tokens)}
    if gen.do_sample:
        args.update(temperature=float(gen.temperature), top_p=float(gen.top_p))
    else:
        args["temperature"] = 0.0
    return args


def answer_all(
    client: Any,
    model: str,
    qs: list[Query],
    gen_args: dict[str, Any],
    concurrency: int,
    call: Callable[..., Any] = _direct,
    desc: str = "",
) -> list[Answer]:
    """The model's answer to every query, in order; at most ``concurrency`` requests in flight. The first error
    left after the retries cancels the queries not yet sent and propagates."""
    from tqdm.auto import tqdm

    def ask(query: Query) -> Answer:
        if isinstance(query.prompt, str):
            response = call(client.completions.create, model=model, prompt=query.prompt, what="completion", **gen_args)
            text = response.choices[0].text
        else:
            tools = {"tools": query.tools} if query.tools else {}
            response = call(
                client.chat.completions.create,
                model=model,
                messages=openai_messages(query.prompt),
                what="chat completion",
                **tools,
                **gen_args,
            )
            text = answer_text(response.choices[0].message)
        usage = response.usage
        return Answer(text or "", usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)

    answers: list[Answer | None] = [None] * len(qs)
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
    try:
        futures = {pool.submit(ask, q): i for i, q in enumerate(qs)}
        for future in tqdm(as_completed(futures), total=len(qs), desc=desc or f"ask {model}", unit="query"):
            answers[futures[future]] = future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return answers  # type: ignore[return-value]


def openai_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Canonical messages in the chat API's shape: calls' arguments as JSON strings, no empty content beside calls,
    no reasoning (what providers' fine-tuning files take too: launchers/cloud/provider_data.py)."""
    out = []
    for m in messages:
        m = {k: v for k, v in m.items() if k != "reasoning_content"}
        if m.get("tool_calls"):
            m["tool_calls"] = [openai_call(c) for c in m["tool_calls"]]
            if not m.get("content"):
                m.pop("content", None)
        out.append(m)
    return out


def openai_call(call: dict[str, Any]) -> dict[str, Any]:
    fn = call["function"]
    arguments = fn["arguments"] if isinstance(fn["arguments"], str) else json.dumps(fn["arguments"], ensure_ascii=False)
    return {"id": call["id"], "type": "function", "function": {"name": fn["name"], "arguments": arguments}}


def answer_text(message: Any) -> str:
    """A chat completion's message as the text the metrics score: its content, then each of its ``tool_calls`` as a
    ``<tool_call>`` block (arguments that are not JSON are kept as a string, which the metrics count as invalid)."""
    calls = []
    for call in getattr(message, "tool_calls", None) or []:
        try:
            arguments = json.loads(call.function.arguments)
        except (TypeError, ValueError):
            arguments = call.function.arguments
        calls.append({"function": {"name": call.function.name, "arguments": arguments}})
    return tool_calls.answer_text({"content": message.content or "", "tool_calls": calls})


def evaluate(
    client: Any,
    model: str,
    qs: list[Query],
    eval_cfg: Any,
    concurrency: int,
    call: Callable[..., Any] = _direct,
    label: str = "",
    predictions_path: Path | None = None,
) -> dict[str, Any]:
    """One metrics.json section: ``eval.metrics`` over the model's answers to ``qs``, prompt tokens per query (as
    the endpoint counts them), completion tokens per query, the count and 5 samples."""
    answers = answer_all(
        client, model, qs, generation_args(eval_cfg.generation), concurrency, call, f"generate ({label or model})"
    )
    predictions = [a.text for a in answers]
    tokens = [a.prompt_tokens for a in answers], shown(qs), [a.completion_tokens for a in answers]
    result = evaluation.scores(eval_cfg.metrics, qs, predictions, *tokens)
    result["completion_tokens_per_query"] = sum(a.completion_tokens for a in answers) / len(answers)
    if predictions_path is not None:
        with open(predictions_path, "w", encoding="utf-8") as f:
            for query, answer in zip(qs, predictions, strict=True):
                f.write(json.dumps({"prompt": query.prompt, "reference": query.reference, "prediction": answer}) + "\n")
    numbers = {k: v for k, v in result.items() if isinstance(v, float)}
    log.info("%s: %s", label or model, ", ".join(f"{k}={v:.4g}" for k, v in numbers.items()))
    return result


def shown(qs: list[Query]) -> list[str]:
    """The prompts as text for the report's samples: a raw prompt as is, a chat as ``role: content`` lines."""
    return [
        q.prompt if isinstance(q.prompt, str) else "\n".join(f"{m['role']}: {m['content']}" for m in q.prompt)
        for q in qs
    ]


# ---------------------------------------------------------------- endpoints named in the config


def client_for(endpoint: Any, where: str) -> Any:
    """An ``openai.OpenAI`` client for one configured endpoint; the key is read from the environment variable
    the config names (never from the config itself), and the SDK retries ``max_retries`` times."""
    try:
        import openai
    except ImportError:
        raise UserError(
            f"{where} is evaluated through the openai SDK, which is not installed: pip install 'hydratune[cloud]'."
        ) from None

    key = os.environ[endpoint.api_key_env] if endpoint.api_key_env else NO_KEY  # configured() checked it is set
    return openai.OpenAI(
        base_url=endpoint.base_url, api_key=key, max_retries=endpoint.max_retries, timeout=endpoint.timeout_s
    )


def compare_models(eval_cfg: Any, qs: list[Query], run_dir: Path | None = None) -> dict:
    """``{name: section}`` for eval.endpoint and every eval.compare_models entry, on the same queries as the run's
    own columns."""
    out: dict[str, Any] = {}
    if not qs:
        return out
    for where, endpoint in configured(eval_cfg):
        client = client_for(endpoint, where)
        import openai

        path = run_dir / f"predictions_{_file_name(endpoint.name)}.jsonl" if run_dir is not None else None
        try:
            out[endpoint.name] = evaluate(
                client, endpoint.model, qs, eval_cfg, endpoint.concurrency, label=endpoint.name, predictions_path=path
            )
        except openai.APIError as exc:
            raise UserError(
                f"{where} ({endpoint.name}: model {endpoint.model} at {endpoint.base_url}) failed after "
                f"{endpoint.max_retries} retries: {_describe(exc)}. Check that the server runs and knows that model."
            ) from None
    return out


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _describe(exc: BaseException) -> str:
    import openai

    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code} {exc.message}"
    return f"{type(exc).__name__}: {exc}"
