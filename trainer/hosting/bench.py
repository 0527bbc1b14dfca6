"""`hydratune serve --bench`: N concurrent clients for T seconds against the model `hydratune serve` started.

Each client keeps one streaming chat completion in flight, cycling through held-out prompts of the run's dataset,
and records the latency, the time to the first token and the output tokens of each request. The results go to
RUN/serve_bench.json, into metrics.json (``serving``) and into report.md (a serving table and the cost per 1,000
queries: the machine's price per hour over the measured throughput, beside the per-token prices of the models in
eval.compare_models, zero-shot and with the few-shot prompt).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from trainer.config.errors import UserError
from trainer.report import markdown as report

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def prompts(cfg: Any, source: Any, count: int) -> list[list[dict]]:
    """Held-out chat prompts of the run's dataset (the run's saved config when there is one)."""
    from trainer import data
    from trainer.evaluation import local as evaluation

    dataset = source.run_cfg.dataset if source.run_cfg is not None else cfg.dataset
    examples = data.load_examples(dataset)
    chats = [q.prompt for q in evaluation.queries(examples.validation or examples.train, None)]
    prompts = [p for p in chats if not isinstance(p, str)]
    if not prompts:
        raise UserError("serve --bench needs chat prompts: the run's dataset has no held-out chat examples.")
    return (prompts * (count // len(prompts) + 1))[:count]


def load_test(
    base_url: str,
    model: str,
    messages: list[list[dict]],
    clients: int,
    seconds: float,
    max_tokens: int,
    api_key: str = "no-key",
) -> dict:
    """``clients`` threads send streaming requests for ``seconds``; per-request figures, then the summary."""
    import openai

    records: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        api = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=max(300.0, 10 * seconds))
        i = index
        while time.monotonic() < deadline:
            start = time.monotonic()
            first = None
            tokens = 0
            stopped = False
            try:
                stream: Any = api.chat.completions.create(  # type: ignore[call-overload]  # plain dict messages
                    model=model,
                    messages=messages[i % len(messages)],
                    max_tokens=max_tokens,
                    temperature=0.0,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                chunks = 0
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        chunks += 1
                        first = first or time.monotonic()
                    if chunk.choices and chunk.choices[0].finish_reason:
                        stopped = chunk.choices[0].finish_reason == "stop"  # else "length": cut at max_tokens
                    if chunk.usage is not None:
                        tokens = chunk.usage.completion_tokens
                tokens = tokens or chunks
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            end = time.monotonic()
            with lock:
                records.append(
                    {
                        "latency_s": end - start,
                        "ttft_s": (first or end) - start,
                        "tokens": tokens,
                        "stopped": stopped,
                        "end": end,
                    }
                )
            i += clients

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 300)
    elapsed = time.monotonic() - started
    return summary(records, errors, elapsed, clients, seconds, max_tokens)


def summary(
    records: list[dict], errors: list[str], elapsed: float, clients: int, seconds: float, max_tokens: int
) -> dict:
    latencies = sorted(r["latency_s"] for r in records)
    ttfts = sorted(r["ttft_s"] for r in records)
    tokens = sum(r["tokens"] for r in records)
    return {
        "clients": clients,
        "seconds": seconds,
        "elapsed_s": elapsed,
        "max_tokens": max_tokens,
        "requests": len(records),
        #: answers that ended at the model's end-of-sequence token (finish_reason "stop"), not at max_tokens
        "stopped": sum(bool(r.get("stopped")) for r in records),
        "errors": len(errors),
        "error_samples": errors[:5],
        "requests_per_s": len(records) / elapsed,
        "output_tokens_per_s": tokens / elapsed,
        "output_tokens_per_request": tokens / len(records) if records else 0.0,
        "latency_p50_s": _percentile(latencies, 50),
        "latency_p95_s": _percentile(latencies, 95),
        "ttft_p50_s": _percentile(ttfts, 50),
        "ttft_p95_s": _percentile(ttfts, 95),
    }


def _percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1]


def costs(bench: dict, usd_per_hour: float, metrics: dict, eval_cfg: Any) -> list[dict]:
    """USD per 1,000 queries: the served model (machine price over measured throughput), then each compared model
    with per-token prices (its measured tokens per query; with the few-shot prompt, the demonstrations' extra
    prompt tokens as counted by the run's tokenizer: an estimate)."""
    rows = []
    if bench["requests_per_s"] > 0:
        usd = usd_per_hour / 3600 / bench["requests_per_s"] * 1000
        rows.append(
            {"model": "fine-tuned, served here", "usd_per_1k_queries": usd, "basis": f"${usd_per_hour:g}/hour measured"}
        )
    base, shots = metrics.get("base") or {}, metrics.get("few_shot") or {}
    extra = shots.get("prompt_tokens_per_query", 0) - base.get("prompt_tokens_per_query", 0) if shots and base else None
    for endpoint in eval_cfg.compare_models:
        section = (metrics.get("compare") or {}).get(endpoint.name)
        price_in, price_out = endpoint.usd_per_million_input_tokens, endpoint.usd_per_million_output_tokens
        if not section or price_in is None or price_out is None:
            continue
        out = section.get("completion_tokens_per_query", 0.0)
        basis = f"${price_in:g} / ${price_out:g} per 1M input / output tokens"
        usd = (section["prompt_tokens_per_query"] * price_in + out * price_out) / 1000
        rows.append({"model": endpoint.name, "usd_per_1k_queries": usd, "basis": basis})
        if extra is not None:
            usd = ((section["prompt_tokens_per_query"] + extra) * price_in + out * price_out) / 1000
            rows.append(
                {"model": f"{endpoint.name} + few-shot prompt (estimate)", "usd_per_1k_queries": usd, "basis": basis}
            )
    return rows


def run(server: Any, cfg: Any, source: Any) -> dict:
    bench_cfg = cfg.serve.bench
    host = server.base_url.split("//", 1)[1].rsplit(":", 1)[0]
    if host not in LOOPBACK:
        raise UserError(f"serve --bench runs on this machine only (loopback); serve.host={cfg.serve.host} is not.")
    messages = prompts(cfg, source, bench_cfg.prompts)
    print(
        f"hydratune: bench: {bench_cfg.clients} clients for {bench_cfg.seconds:g} s, {bench_cfg.max_tokens} new tokens each"
    )
    key = os.environ[cfg.serve.api_key_env] if cfg.serve.api_key_env else "no-key"  # checked set at start-up
    result = load_test(
        server.base_url, server.model, messages, bench_cfg.clients, bench_cfg.seconds, bench_cfg.max_tokens, key
    )
    result.update(engine=cfg.serve.engine, model=server.model, usd_per_hour=bench_cfg.usd_per_hour, cpu=_cpu())
    out = source.run_dir or source.folder
    metrics_file = out / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    run_eval = source.run_cfg.eval if source.run_cfg is not None else cfg.eval
    if bench_cfg.usd_per_hour > 0:
        result["cost_per_1k_queries"] = costs(result, bench_cfg.usd_per_hour, metrics, run_eval)
    (out / "serve_bench.json").write_text(json.dumps(result, indent=1) + "\n")
    if metrics_file.is_file():
        metrics["serving"] = result
        metrics_file.write_text(json.dumps(metrics, indent=2, default=str) + "\n")
        _rewrite_report(out, metrics)
    print(
        f"hydratune: bench: {result['requests']} requests, {result['errors']} errors, "
        f"{result['requests_per_s']:.2f} req/s, {result['output_tokens_per_s']:.1f} output tokens/s, "
        f"latency p50 {_s(result['latency_p50_s'])} p95 {_s(result['latency_p95_s'])}, TTFT p50 {_s(result['ttft_p50_s'])}"
    )
    if result["errors"]:
        raise UserError(f"serve --bench: {result['errors']} requests failed, e.g. {result['error_samples'][0]}")
    return result


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _cpu() -> str:
    import torch

    return f"{torch.backends.cpu.get_cpu_capability()} CPU" + (", CUDA" if torch.cuda.is_available() else "")


def _rewrite_report(run_dir: Path, metrics: dict) -> None:
    """report.md again, with the serving section; the title and loss curve of the run's report are kept."""
    path = run_dir / "report.md"
    title = path.read_text().splitlines()[0].removeprefix("# ") if path.is_file() else f"hydratune: {run_dir.name}"
    plot = run_dir / "loss_curve.png"
    path.write_text(report.render_markdown(metrics, title, plot if plot.is_file() else None))
