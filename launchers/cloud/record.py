"""`hydratune record`: a model's answers to a dataset's prompts, written as a chat JSONL dataset.

    hydratune record dataset=chat_jsonl dataset.path=prompts.jsonl record.out=recorded.jsonl \\
        record.endpoint.base_url=https://api.openai.com/v1 record.endpoint.model=ft:gpt-4o-mini-2024-07-18:acme::X \\
        record.endpoint.api_key_env=OPENAI_API_KEY record.requests_per_minute=300 record.max_usd=5

The prompts come from ``dataset`` in any format hydratune reads (a chat row is asked everything before its last
assistant message; prompt_completion, prompt, preference and unpaired rows their prompt). Each answer becomes one row
``{"messages": [...the prompt..., {"role": "assistant", "content": answer}]}`` that trains an open model when the
original training data is gone (``dataset=chat_jsonl dataset.path=recorded.jsonl``).

Nothing is paid twice. Each answer is appended to ``record.out`` with one write and an fsync the moment it arrives,
and each prompt is written to ``<out>.sent`` before its request leaves. A rerun of the same command sends only the
prompts without an answer; a prompt that was in flight when an earlier run was killed (sent, no answer written) may
have been billed, so it is listed and not sent again unless ``record.resend_in_flight=true``.

Before the first request the cost is estimated (prompt tokens counted with tiktoken, answers at most
``record.max_tokens`` each, times the endpoint's prices) and printed; ``record.max_usd`` refuses a run whose estimate
is higher and stops one whose answers' own usage reaches it. ``record.requests_per_minute`` and
``endpoint.concurrency`` set the pace; the SDK retries 408/409/429/5xx answers (Retry-After honoured). The API key is
read from the environment variable ``endpoint.api_key_env`` names, and written nowhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainer.config.errors import UserError

log = logging.getLogger(__name__)
#: Requests that one prompt's content breaks (too long, refused): the others go on; every other error stops the run.
PER_PROMPT_STATUS = (400, 413, 422)
SENT_SUFFIX = ".sent"


@dataclass
class Prompt:
    #: ``<sha256 of the prompt messages>#<occurrence>``: identical prompts are told apart by their order.
    key: str
    messages: list[dict[str, str]]
    reference: str | None


@dataclass
class Estimate:
    prompts: int
    prompt_tokens: int
    answer_tokens_max: int
    answer_tokens_expected: int | None
    tokenizer: str
    usd_max: float | None
    usd_expected: float | None

    def line(self, endpoint: Any, max_tokens: int) -> str:
        text = (
            f"{self.prompts} prompts to send: {self.prompt_tokens:,} prompt tokens ({self.tokenizer}) + at most "
            f"{self.answer_tokens_max:,} answer tokens (record.max_tokens={max_tokens} each)"
        )
        if self.answer_tokens_expected is not None:
            text += f", ~{self.answer_tokens_expected:,} if the answers are as long as the dataset's own"
        if self.usd_max is None:
            return text + (
                ". No price is set, so no cost is estimated: record.endpoint.usd_per_million_input_tokens and "
                "usd_per_million_output_tokens (the provider's price list) give one."
            )
        text += f" = at most {self.usd_max:.4f} USD"
        if self.usd_expected is not None:
            text += f" (~{self.usd_expected:.4f} USD expected)"
        return text + (
            f" at {endpoint.usd_per_million_input_tokens} / {endpoint.usd_per_million_output_tokens} USD per 1M "
            "input / output tokens."
        )


@dataclass
class Summary:
    answered_before: int = 0
    answered: int = 0
    in_flight_earlier: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    empty: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usd: float | None = None


# ---------------------------------------------------------------- the command


def main(args: list[str]) -> None:
    flags = [a for a in args if a.startswith("-")]
    if flags:
        raise UserError(
            f"`hydratune record` takes no flags (got {' '.join(flags)}); its settings are record.* overrides, e.g. "
            "record.out=recorded.jsonl record.endpoint.base_url=URL record.endpoint.model=NAME."
        )
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    for chatty in ("httpx", "httpx2", "openai"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    cfg = compose(args)
    try:
        summary = record(cfg)
    except KeyboardInterrupt:
        sys.stderr.write(
            f"hydratune: interrupted. The answers received are in {cfg.record.out}; run the same command again to "
            "send only the prompts without an answer.\n"
        )
        raise SystemExit(130) from None
    if summary.failed:
        shown = "; ".join(f"{key}: {why}" for key, why in list(summary.failed.items())[:5])
        raise UserError(
            f"{len(summary.failed)} prompt(s) were refused by the endpoint and have no answer ({shown}"
            f"{' ...' if len(summary.failed) > 5 else ''}). The other answers are kept; fix those rows (or the "
            "endpoint settings) and run the same command again: only the prompts without an answer are sent."
        )


def compose(overrides: list[str]) -> DictConfig:
    """The config these overrides compose (no run dir), its keys and ranges checked."""
    from trainer.config import schema
    from trainer.config.checks import check_schema

    cfg = schema.compose(overrides)
    check_schema(cfg)
    return cfg


def record(cfg: DictConfig) -> Summary:
    """Send every prompt of ``cfg.dataset`` without an answer in ``record.out`` to ``record.endpoint``; append the
    answers. Returns what this run did."""
    from trainer.data import load_examples
    from trainer.evaluation.endpoint import client_for

    rec = cfg.record
    endpoint = _check(rec)
    out = Path(rec.out)
    dataset = cfg.dataset
    if rec.split == "all":  # every row, in the file's order: no held-out split to make
        dataset = OmegaConf.merge(dataset, {"validation_size": 0})
    examples = load_examples(dataset)
    rows = {"all": examples.train + examples.validation, "train": examples.train}.get(
        str(rec.split), examples.validation
    )
    prompts = prompts_of(rows, cfg.dataset)
    journal = Journal(out, endpoint)
    done, in_flight = journal.open()
    summary = Summary(answered_before=sum(done.values()))
    todo = []
    for p in prompts:
        if done[p.key] > 0:
            done[p.key] -= 1
        elif p.key in in_flight and not rec.resend_in_flight:
            summary.in_flight_earlier.append(p.key)
        else:
            todo.append(p)
    estimate = estimate_cost(todo, endpoint, int(rec.max_tokens))
    print(f"record: {estimate.line(endpoint, int(rec.max_tokens))}", flush=True)
    if summary.answered_before or summary.in_flight_earlier:
        print(
            f"record: {summary.answered_before} answers already in {out} are kept; "
            f"{len(summary.in_flight_earlier)} prompt(s) in flight when an earlier run stopped are not sent again.",
            flush=True,
        )
    if rec.max_usd is not None and estimate.usd_max is not None and estimate.usd_max > rec.max_usd:
        raise UserError(
            f"The estimate (at most {estimate.usd_max:.4f} USD for {len(todo)} prompts) is above "
            f"record.max_usd={rec.max_usd}, so nothing was sent. Raise record.max_usd, lower record.max_tokens "
            "(every answer is counted at its maximum), or send fewer prompts (record.split, dataset.max_train_examples)."
        )
    if todo:
        _send(todo, client_for(endpoint, "record.endpoint"), rec, journal, summary)
    journal.sort([p.key for p in prompts])
    _report(summary, out, len(prompts))
    return summary


def _check(rec: Any) -> Any:
    endpoint = rec.endpoint
    missing = [k for k in ("base_url", "model") if not endpoint[k]]
    if not rec.out or missing:
        what = ", ".join(["record.out"] * (not rec.out) + [f"record.endpoint.{k}" for k in missing])
        raise UserError(
            f"`hydratune record` needs {what}: the chat JSONL file to write (record.out=recorded.jsonl), the "
            "base_url of an OpenAI-compatible API (record.endpoint.base_url=https://api.openai.com/v1) and the "
            "model it knows (record.endpoint.model=ft:gpt-4o-mini-2024-07-18:ORG::ID); record.endpoint.api_key_env "
            "names the environment variable that holds the key."
        )
    if rec.max_usd is not None and endpoint.usd_per_million_input_tokens is None:
        raise UserError(
            f"record.max_usd={rec.max_usd} caps the cost, but the endpoint has no prices: set "
            "record.endpoint.usd_per_million_input_tokens and usd_per_million_output_tokens (the provider's price "
            "list for this model), or drop record.max_usd."
        )
    from trainer.config.endpoints import check_key

    check_key(endpoint, "record.endpoint")
    return endpoint


# ---------------------------------------------------------------- prompts


def prompts_of(rows: list[dict], dataset: Any) -> list[Prompt]:
    """The prompt of each canonical row, keyed; a format without prompts (raw text) is refused."""
    out: list[Prompt] = []
    seen: Counter[str] = Counter()
    for row in rows:
        messages, reference = _prompt(row)
        if messages is None:
            raise UserError(
                f"dataset {dataset.name} (format {dataset.format}, {dataset.path}) has rows without a prompt to send. "
                "`hydratune record` sends prompts: chat rows (everything before the last assistant message), "
                "prompt_completion, prompt (dataset.format=prompt for a prompts-only file), preference or unpaired "
                "rows. Raw text (format text) has none."
            )
        digest = prompt_hash(messages)
        seen[digest] += 1
        out.append(Prompt(f"{digest}#{seen[digest]}", messages, reference))
    return out


def _prompt(row: dict) -> tuple[list[dict[str, str]] | None, str | None]:
    if "messages" in row:
        messages = row["messages"]
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            return _plain(messages), None
        if last == 0:
            return None, None
        return _plain(messages[:last]), messages[last]["content"]
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}], row.get("completion") or row.get("reference")
    if isinstance(prompt, list) and prompt:
        chosen = [m["content"] for m in row.get("chosen") or [] if m["role"] == "assistant"]
        return _plain(prompt), row.get("reference") or (chosen[-1] if chosen else None)
    return None, None


def _plain(messages: list[dict]) -> list[dict[str, str]]:
    return [{k: m[k] for k in ("role", "content", "name") if k in m} for m in messages]


def prompt_hash(messages: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:24]


# ---------------------------------------------------------------- the two files: answers and sent prompts


class Journal:
    """``record.out`` (one chat row per answer) and ``<out>.sent`` (a header naming the endpoint, then one line per
    prompt sent, per prompt refused and per empty answer). Every line is one write followed by an fsync."""

    def __init__(self, out: Path, endpoint: Any) -> None:
        from trainer.config.secrets import redact_text

        self.out, self.sent_path = out, out.with_name(out.name + SENT_SUFFIX)
        self.header = {"model": str(endpoint.model), "base_url": redact_text(str(endpoint.base_url))}
        self._lock = threading.Lock()
        self._fds: dict[Path, int] = {}

    def open(self) -> tuple[Counter[str], set[str]]:
        """(answered prompt keys with their count, keys in flight when an earlier run stopped); creates both files."""
        if self.out.exists() and self.out.stat().st_size and not self.sent_path.exists():
            raise UserError(
                f"record.out={self.out} exists and was not written by `hydratune record` (no {self.sent_path.name} "
                "beside it): it is left alone. Pick another record.out, or move the file away."
            )
        self.out.parent.mkdir(parents=True, exist_ok=True)
        events = self._read(self.sent_path, "the list of prompts sent")
        if events and events[0].get("header") != self.header:
            was = events[0].get("header") or {}
            raise UserError(
                f"{self.out} holds the answers of model {was.get('model')} at {was.get('base_url')}, and this command "
                f"asks {self.header['model']} at {self.header['base_url']}: the two would be mixed in one dataset. "
                f"Use another record.out for this model, or delete {self.out} and {self.sent_path} to start over."
            )
        done: Counter[str] = Counter()
        seen: Counter[str] = Counter()
        for row in self._read(self.out, "the recorded answers"):
            done[_row_key(row, seen)] += 1
        state: dict[str, str] = {}  # prompt key -> its last event: sent, failed or empty
        for event in events[1:]:
            kind = next((k for k in ("sent", "failed", "empty") if k in event), None)
            if kind is not None:
                state[event[kind]] = kind
                done[event[kind]] += kind == "empty"
        if not events:
            self._append(self.sent_path, {"header": self.header})
        return done, {key for key, kind in state.items() if kind == "sent" and not done[key]}

    def _read(self, path: Path, what: str) -> list[dict]:
        """The lines of a file this module wrote; a torn last line (a kill during its write) is cut off."""
        if not path.exists():
            return []
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning("%s: cutting off a partly written last line (%d bytes)", path, len(data) - end)
            os.truncate(path, end)
        out = []
        for number, line in enumerate(data[:end].splitlines(), 1):
            try:
                value = json.loads(line)
            except ValueError:
                value = None
            if not isinstance(value, dict):
                raise UserError(
                    f"{path}:{number} is not a line `hydratune record` wrote ({what}): the file was edited or is "
                    "another file. Restore it, or pick another record.out to start a new recording."
                )
            out.append(value)
        return out

    def _append(self, path: Path, value: dict) -> None:
        line = (json.dumps(value, ensure_ascii=False) + "\n").encode()
        with self._lock:
            fd = self._fds.get(path)
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(fd, line)
            os.fsync(fd)

    def sent(self, key: str) -> None:
        self._append(self.sent_path, {"sent": key})

    def failed(self, key: str, why: str) -> None:
        self._append(self.sent_path, {"failed": key, "error": why})

    def empty(self, key: str) -> None:
        self._append(self.sent_path, {"empty": key})

    def answer(self, prompt: Prompt, text: str) -> None:
        self._append(self.out, {"messages": [*prompt.messages, {"role": "assistant", "content": text}]})

    def sort(self, order: list[str]) -> None:
        """Rewrite ``out`` in the prompts' order (answers arrive in any order), atomically; rows of prompts no
        longer in the dataset stay, at the end."""
        self.close()
        seen: Counter[str] = Counter()
        rows = [(_row_key(row, seen), row) for row in self._read(self.out, "the recorded answers")]
        rank = {key: i for i, key in enumerate(order)}
        ordered = sorted(rows, key=lambda kr: rank.get(kr[0], len(rank)))
        if [k for k, _ in ordered] == [k for k, _ in rows]:
            return
        from trainer.run.atomic import write_text

        write_text(self.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for _, r in ordered))

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def _row_key(row: dict, seen: Counter[str]) -> str:
    """The key of a recorded row (its prompt is every message but the last), counting identical prompts."""
    digest = prompt_hash(row["messages"][:-1])
    seen[digest] += 1
    return f"{digest}#{seen[digest]}"


# ---------------------------------------------------------------- the estimate


def estimate_cost(todo: list[Prompt], endpoint: Any, max_tokens: int) -> Estimate:
    from launchers.cloud.tokens import message_tokens

    enc, tokenizer = _encoding()
    prompt_tokens = sum(message_tokens(p.messages, enc) for p in todo)  # as billed: roles and names count too
    references = [p.reference for p in todo]
    expected = sum(len(enc.encode_ordinary(r)) for r in references if r) if todo and all(references) else None
    usd_in, usd_out = endpoint.usd_per_million_input_tokens, endpoint.usd_per_million_output_tokens
    priced = usd_in is not None
    answer_max = max_tokens * len(todo)
    cost = (lambda answers: (prompt_tokens * usd_in + answers * (usd_out or 0.0)) / 1e6) if priced else None
    return Estimate(
        prompts=len(todo),
        prompt_tokens=prompt_tokens,
        answer_tokens_max=answer_max,
        answer_tokens_expected=expected,
        tokenizer=tokenizer,
        usd_max=cost(answer_max) if cost else None,
        usd_expected=cost(expected) if cost and expected is not None else None,
    )


class _FourCharactersAToken:
    """Stands in for a tiktoken encoding where tiktoken's offline copy is not installed."""

    def encode_ordinary(self, text: str) -> range:
        return range(max(1, len(text) // 4))


def _encoding() -> tuple[Any, str]:
    """(the encoding prompts are counted with, its name): tiktoken's o200k_base (OpenAI's gpt-4o encoding; other
    models' tokenizers differ a little), or 4 characters a token."""
    try:
        from launchers.cloud.tokens import get_encoding

        return get_encoding("o200k_base"), "tiktoken o200k_base"
    except (ImportError, UserError):
        return _FourCharactersAToken(), "approximated as 4 characters a token"


# ---------------------------------------------------------------- sending


class Pace:
    """At most ``per_minute`` request starts a minute, spread evenly (null: no limit)."""

    def __init__(self, per_minute: float | None) -> None:
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        time.sleep(max(0.0, start - now))


def _send(todo: list[Prompt], client: Any, rec: Any, journal: Journal, summary: Summary) -> None:
    import openai
    from tqdm.auto import tqdm

    endpoint = rec.endpoint
    pace, lock, stop = Pace(rec.requests_per_minute), threading.Lock(), threading.Event()
    queue = iter(todo)
    fatal: list[BaseException] = []
    usd_in = endpoint.usd_per_million_input_tokens
    usd_out = endpoint.usd_per_million_output_tokens or 0.0
    summary.usd = 0.0 if usd_in is not None else None
    bar = tqdm(total=len(todo), desc=f"record {endpoint.model}", unit="prompt")
    gen = {"max_tokens": int(rec.max_tokens), "temperature": float(rec.temperature)}

    def next_prompt() -> Prompt | None:
        with lock:
            if stop.is_set():
                return None
            if rec.max_usd is not None and summary.usd is not None and summary.usd >= rec.max_usd:
                fatal.append(UserError(f"record.max_usd={rec.max_usd} reached: the answers' usage cost "
                                       f"{summary.usd:.4f} USD. Raise it and run the same command again to go on."))  # fmt: skip
                stop.set()
                return None
            return next(queue, None)

    def worker() -> None:
        while (prompt := next_prompt()) is not None:
            pace.wait()
            if stop.is_set():
                return
            journal.sent(prompt.key)
            try:
                response = client.chat.completions.create(model=endpoint.model, messages=prompt.messages, **gen)
            except openai.APIStatusError as exc:
                journal.failed(prompt.key, f"HTTP {exc.status_code}")
                if exc.status_code in PER_PROMPT_STATUS:
                    with lock:
                        summary.failed[prompt.key] = f"HTTP {exc.status_code} {exc.message}"
                    bar.update()
                    continue
                with lock:
                    fatal.append(exc)
                stop.set()
                return
            except openai.APIError as exc:  # connection errors and timeouts, after the SDK's retries
                journal.failed(prompt.key, type(exc).__name__)
                with lock:
                    fatal.append(exc)
                stop.set()
                return
            text = response.choices[0].message.content if response.choices else None
            usage = response.usage
            if text:
                journal.answer(prompt, text)
            else:
                journal.empty(prompt.key)
            with lock:
                summary.answered += bool(text)
                summary.empty += not text
                if usage is not None:
                    summary.prompt_tokens += usage.prompt_tokens
                    summary.completion_tokens += usage.completion_tokens
                    if summary.usd is not None:
                        summary.usd += (usage.prompt_tokens * usd_in + usage.completion_tokens * usd_out) / 1e6
            bar.update()

    workers = max(1, int(endpoint.concurrency))
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for future in [pool.submit(worker) for _ in range(workers)]:
            future.result()
    except KeyboardInterrupt:
        stop.set()  # the requests in flight finish and are written; nothing new is sent
        raise
    finally:
        pool.shutdown(wait=True)
        bar.close()
        journal.close()
    if fatal:
        raise _stopped(fatal[0], endpoint, summary)


def _stopped(exc: BaseException, endpoint: Any, summary: Summary) -> UserError:
    if isinstance(exc, UserError):
        return exc
    from trainer.evaluation.endpoint import _describe

    return UserError(
        f"record.endpoint ({endpoint.model} at {endpoint.base_url}) failed after {endpoint.max_retries} retries: "
        f"{_describe(exc)}. The {summary.answered_before + summary.answered} answers received so far are kept; check "
        "the key, the model name and the server, then run the same command again: only the prompts without an "
        "answer are sent."
    )


def _report(summary: Summary, out: Path, total: int) -> None:
    cost = f", {summary.usd:.4f} USD by the answers' usage" if summary.usd is not None else ""
    print(
        f"record: {summary.answered} new answers ({summary.prompt_tokens:,} prompt + {summary.completion_tokens:,} "
        f"answer tokens{cost}); {out} holds {summary.answered_before + summary.answered} of {total} prompts.",
        flush=True,
    )
    if summary.empty:
        print(f"record: {summary.empty} prompt(s) got an empty answer (not written; not sent again).", flush=True)
    if summary.in_flight_earlier:
        print(
            f"record: {len(summary.in_flight_earlier)} prompt(s) were in flight when an earlier run stopped: they may "
            "have been answered and billed without the answer arriving, so they were not sent again. "
            "record.resend_in_flight=true sends them.",
            flush=True,
        )
