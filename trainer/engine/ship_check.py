"""After training (``eval.ship_check``): the model a user deploys answers like the model that was evaluated.

The held-out prompts are asked, greedily, of:

- ``in-process``: the fine-tuned model inside the run (the reference the verdict used);
- ``merged``: the merged folder (trainer.hosting.export) reloaded from disk with plain transformers, stopping where
  its own generation_config says (what vLLM and ``model.generate`` do);
- ``gguf`` (with ``export.gguf``): llama.cpp's converter's file, loaded by transformers' GGUF loader (no prebuilt
  llama-cpp-python wheel exists for these machines), stopping at the EOS id in the GGUF metadata;
- ``served``: ``hydratune serve`` (trainer.hosting.serve) on 127.0.0.1, through the openai SDK.

Each row: exact agreement with the reference's answers, the task metrics, the stop rate (answers that ended on an
end-of-sequence token before max_new_tokens) and the mean answer length in tokens. A row whose agreement is below
``1 - eval.ship_check_max_disagreement``, or whose stop rate falls short of the reference's by as much, or that
failed to load, is named in ``problems`` (the report's verdict headline flags it).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from trainer.config.errors import UserError
from trainer.evaluation import endpoint
from trainer.evaluation import local as evaluation
from trainer.hosting import export, serve

log = logging.getLogger(__name__)


def run(cfg: Any, model, tokenizer, queries: list[evaluation.Query], run_dir: Path) -> dict:
    """metrics.json's ``ship_check`` section: one row per artifact, the problems found, the check's own seconds."""
    start = time.perf_counter()
    max_new = int(cfg.eval.generation.max_new_tokens)
    rows: dict[str, dict] = {}
    stops = evaluation.end_of_answer_tokens(model, tokenizer)
    rows["in-process"] = _ask_local(model, tokenizer, queries, max_new, cfg.eval.batch_size, stops)
    source = export.find(run_dir)
    merged = export.merged_folder(source, cfg.cache_dir, as_is=True)
    rows["merged"] = _attempt(lambda: _ask_folder(merged, None, queries, max_new, cfg.eval.batch_size))
    if cfg.export.gguf:
        gguf_file = run_dir / "export" / f"{source.name}-{cfg.export.gguf}.gguf"

        def from_gguf() -> dict:
            export.to_gguf(merged, gguf_file, cfg.export.gguf, cfg.export.gguf_tools)
            return _ask_folder(gguf_file.parent, gguf_file.name, queries, max_new, cfg.eval.batch_size)

        rows["gguf"] = _attempt(from_gguf) | {"runtime": "transformers GGUF loader"}
    if all(not isinstance(q.prompt, str) for q in queries):
        rows["served"] = _attempt(lambda: _ask_served(source, cfg, queries, max_new)) | {"engine": cfg.serve.engine}
    reference = rows["in-process"]["answers"]
    for row in rows.values():
        if "answers" in row:
            row |= _scores(cfg, queries, reference, row)
    result: dict[str, Any] = {"rows": rows, "max_disagreement": float(cfg.eval.ship_check_max_disagreement)}
    result["problems"] = problems(result)
    result["seconds"] = time.perf_counter() - start
    for problem in result["problems"]:
        log.warning("ship check: %s", problem)
    return result


def problems(section: dict) -> list[str]:
    """One sentence per artifact that does not answer like the in-process model, saying what to look at."""
    limit, out = section["max_disagreement"], []
    ref = section["rows"]["in-process"]
    for name, row in section["rows"].items():
        if "error" in row:
            out.append(f"{name}: could not be asked ({row['error'][:300]})")
            continue
        if name == "in-process":
            continue
        if 1 - row["agreement"] > limit:
            out.append(
                f"{name} answers differ from the in-process model's on {1 - row['agreement']:.0%} of the held-out "
                f"prompts (eval.ship_check_max_disagreement={limit}): compare its chat template, generation_config "
                "and dtype with the run's"
            )
        if ref["stop_rate"] - row["stop_rate"] > limit:
            out.append(
                f"{name} stops on an end-of-sequence token in {row['stop_rate']:.0%} of answers, the in-process model "
                f"in {ref['stop_rate']:.0%}: its EOS ids (generation_config.json / the GGUF's tokenizer.ggml.eos_token_id) "
                "lack the template's end-of-turn token; add it"
            )
    return out


def _attempt(ask) -> dict:
    try:
        return ask()
    except Exception as exc:  # noqa: BLE001 - a broken artifact is the finding, named in the report
        log.warning("ship check: %s", exc)
        text = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return {"error": lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"}  # one line: a table cell


def _ask_local(model, tokenizer, queries, max_new: int, batch_size: int, stops: list[int] | None) -> dict:
    """Greedy answers of a transformers model; ``stops``: the eos ids to pass (None: its generation_config's)."""
    import torch

    prompts = [evaluation.render(tokenizer, q) for q in queries]
    stop_set = set(stops or _configured_eos(model))
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    answers, stopped, lengths = [], [], []
    try:
        for at in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[at : at + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(model.device)
            extra = {"eos_token_id": stops} if stops else {}
            with torch.inference_mode():
                out = model.generate(
                    **enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tokenizer.pad_token_id, **extra
                )
            for ids in out[:, enc["input_ids"].shape[1] :].tolist():
                end = next((i for i, t in enumerate(ids) if t in stop_set), None)
                stopped.append(end is not None)
                kept = ids if end is None else ids[:end]
                lengths.append(len(kept))
                answers.append(tokenizer.decode(kept, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return {"answers": answers, "stopped": stopped, "lengths": lengths}


def _configured_eos(model) -> list[int]:
    eos = model.generation_config.eos_token_id
    return [e for e in (eos if isinstance(eos, list) else [eos]) if e is not None]


def _ask_folder(folder: Path, gguf_file: str | None, queries, max_new: int, batch_size: int) -> dict:
    """The artifact as a user loads it: plain transformers, its own tokenizer, template and generation_config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if gguf_file and not tokenizer.chat_template:
        raise UserError(f"{gguf_file} carries no chat template (tokenizer.chat_template metadata): re-export it")
    return _ask_local(model, tokenizer, queries, max_new, batch_size, None)


def _ask_served(source, cfg, queries, max_new: int) -> dict:
    """``hydratune serve``'s engine on 127.0.0.1, asked through the openai SDK (finish_reason stop = stopped)."""
    import openai

    key = os.environ.get(cfg.serve.api_key_env) if cfg.serve.api_key_env else None
    answers, stopped, lengths = [], [], []
    log_file = source.run_dir / "ship_check_serve.log" if source.run_dir else None
    with serve.serving(source, cfg, log_file) as server:
        api = openai.OpenAI(base_url=server.base_url, api_key=key or "none", max_retries=2, timeout=300.0)
        for q in queries:
            tools = {"tools": q.tools} if q.tools else {}  # a function-calling row: its calls come as tool_calls
            messages: Any = q.prompt if isinstance(q.prompt, str) else endpoint.openai_messages(q.prompt)
            stream: Any = api.chat.completions.create(
                model=server.model,
                messages=messages,
                max_tokens=max_new,
                temperature=0.0,
                stream=True,
                stream_options={"include_usage": True},
                **tools,
            )
            text: list[str] = []
            calls: dict[int, dict[str, str]] = {}
            reason, tokens = None, 0
            for chunk in stream:
                delta = chunk.choices[0].delta if chunk.choices else None
                if delta is not None and delta.content:
                    text.append(delta.content)
                for part in (delta.tool_calls or []) if delta is not None else []:
                    call = calls.setdefault(part.index, {"name": "", "arguments": ""})
                    if part.function is not None:
                        call["name"] += part.function.name or ""
                        call["arguments"] += part.function.arguments or ""
                if chunk.choices and chunk.choices[0].finish_reason:
                    reason = chunk.choices[0].finish_reason
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
            answers.append(_served_text("".join(text), [calls[i] for i in sorted(calls)]))
            stopped.append(reason in ("stop", "tool_calls"))
            lengths.append(tokens)
    return {"answers": answers, "stopped": stopped, "lengths": lengths}


def _served_text(content: str, calls: list[dict[str, str]]) -> str:
    """A served answer as the text the in-process model generates: its content, then each call as training renders
    it (the gate parsed the model's calls out of that text; this puts them back)."""
    if not calls:
        return content
    from types import SimpleNamespace

    message = SimpleNamespace(
        content=content,
        tool_calls=[SimpleNamespace(function=SimpleNamespace(name=c["name"], arguments=c["arguments"])) for c in calls],
    )
    return endpoint.answer_text(message)


def _same(answer: str, reference: str) -> bool:
    """Equal answers, up to surrounding whitespace and a last character cut in its middle by max_new_tokens (decoded
    whole it is U+FFFD; a streaming server holds the incomplete bytes back)."""
    return answer.strip().rstrip("\ufffd") == reference.strip().rstrip("\ufffd")


def _scores(cfg, queries, reference: list[str], row: dict) -> dict:
    answers = row.pop("answers")
    agree = [_same(a, r) for a, r in zip(answers, reference, strict=True)]
    metrics = evaluation.scores(cfg.eval.metrics, queries, answers, [0] * len(queries), [""] * len(queries))
    names = list(metrics["per_example"]["scores"])
    n = len(answers)
    return {
        "agreement": sum(agree) / n,
        "metrics": {name: metrics[name] for name in names},
        "stop_rate": sum(row.pop("stopped")) / n,
        "answer_tokens": sum(row.pop("lengths")) / n,
        "examples": n,
        "disagreeing": [
            {"example": i, "answer": answers[i], "in_process": reference[i]} for i, ok in enumerate(agree) if not ok
        ][:5],
    }
