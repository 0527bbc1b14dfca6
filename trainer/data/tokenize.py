"""Canonical rows -> token ids and labels (-100 outside the loss), for any chat template.

Assistant spans are found without ``{% generation %}`` markers: the template is rendered on prefixes of the
conversation, ``messages[:i]`` with the generation prompt and ``messages[:i+1]`` without, and the characters between
the two renderings (the answer and the end-of-turn token the template puts after it) are in the loss. Characters
are mapped to tokens with the fast tokenizer's offsets. Templates whose renderings are not prefixes of each other
fall back to locating each answer's text in the full rendering.

Rows with tool calls, tool results or reasoning (trainer/data/tool_calls.py) are rendered with the row's tools
through the template when it renders tool calls, else through the documented fallback; the assistant's calls are in
the loss, tool results never, and the reasoning as ``dataset.reasoning`` says (train, mask: out of the loss, drop).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainer.config.errors import UserError
from trainer.data import tool_calls

CHUNK = 4096
#: Texts are cut at this many characters per token of max_length before tokenizing (memory stays bounded).
CHARS_PER_TOKEN = 64
_VERIFY_FIRST, _VERIFY_EVERY = 4, 257
_SAFE_TESTS = r"is\s+(?!string\b|defined\b|not\s+none\b|none\b|mapping\b|not\s+string\b)"


def reads_content(template: str) -> bool:
    """Whether template code inspects or transforms message contents (filters, methods, comparisons, ``in``),
    directly or through a variable set from them; such templates get no skeleton."""
    names = {"content", *re.findall(r"set\s+(\w+)\s*=\s*[^%]*content", template)}
    for name in names:
        use = rf"\b{name}['\"]?\]?\s*(\||\.\s*\w+\s*\(|==|!=|\[|<|>|{_SAFE_TESTS})"
        if re.search(use, template) or re.search(rf"\bin\s+[\w.\[\]'\"]*\b{name}\b", template):
            return True
    return False


class SkeletonMismatch(Exception):
    """A row rendered from a skeleton differed from the template's own rendering."""


_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "</s>", "<end_of_turn>", "<|endoftext|>")


@dataclass
class Encoded:
    """Token ids and labels per kept row, plus per-row counts for the statistics (before truncation)."""

    input_ids: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)  # index of each encoded row in the input
    tokens: list[int] = field(default_factory=list)  # per input row, before truncation
    loss_tokens: list[int] = field(default_factory=list)  # per input row, before truncation
    truncated: int = 0
    no_loss: list[int] = field(default_factory=list)  # input rows left without any loss token (dropped)


class Encoder:
    def __init__(self, tokenizer, max_length: int | None, train_on_all_tokens: bool = False, reasoning: str = "train"):
        self.tokenizer = tokenizer
        self.reasoning = str(reasoning)
        self.max_length = max_length
        self.all_tokens = train_on_all_tokens
        self.backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
        self.eos = tokenizer.eos_token_id
        self._template: tuple[Any, dict] | None = None
        self._prefix_stable = True
        self._cuts: dict[str, list[int]] = {}
        self._fast = True
        self._skeletons: dict[tuple, tuple[tuple[list[str], list] | bool, bool]] = {}
        self._rendered = 0

    # ------------------------------------------------------------ chat template

    @property
    def template(self):
        if self._template is None:
            from transformers.utils.chat_template_utils import _compile_jinja_template

            try:
                source = self.tokenizer.get_chat_template()
            except ValueError:
                raise UserError(
                    "the tokenizer has no chat template, so chat data cannot be formatted. Set "
                    "model.chat_template=chatml (or your own Jinja template), or use dataset.format=text or "
                    "prompt_completion."
                ) from None
            self._template = (_compile_jinja_template(source), dict(self.tokenizer.special_tokens_map))
        return self._template

    @property
    def template_source(self) -> str:
        self.template  # noqa: B018 - the one error for a tokenizer without a template
        return self.tokenizer.get_chat_template()

    def render(self, messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None = None) -> str:
        compiled, special = self.template
        return compiled.render(
            messages=messages, tools=tools, documents=None, add_generation_prompt=add_generation_prompt, **special
        )

    def chat_spans(self, messages: list[dict], tools: list[dict] | None = None) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans that count in the loss."""
        reasonings: list[str | None] = []
        if tools is not None or tool_calls.structured(messages):
            answers = [m for m in messages if m["role"] == "assistant"]
            reasonings = [m.get("reasoning_content") if self.reasoning == "mask" else "" for m in answers] or [""]
            messages, tools = tool_calls.template_messages(messages, tools, self.reasoning, self.template_source)
        if reasonings and (tools is not None or tool_calls.structured(messages)):
            # the template renders the tools, calls or reasoning itself: every prefix rendered in full
            full, answer_spans = self._slow_spans(messages, tools)
        else:
            full, answer_spans = self._fast_spans(messages) if self._fast else self._slow_spans(messages)
        if self.all_tokens:
            return full, [(0, len(full))]
        answers = [m for m in messages if m["role"] == "assistant"]
        if any(reasonings):  # reasoning=mask: each answer's span starts after its reasoning
            return full, [
                part
                for m, span, r in zip(answers, answer_spans, reasonings, strict=True)
                if m.get("weight", 1) != 0
                for part in tool_calls.mask_reasoning(full, span, r)
            ]
        return full, [span for m, span in zip(answers, answer_spans, strict=True) if m.get("weight", 1) != 0]

    def _slow_spans(self, messages: list[dict], tools: list[dict] | None = None) -> tuple[str, list[tuple[int, int]]]:
        """Render the template on the conversation and its prefixes; one span per assistant message."""
        plain = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
        full = self.render(plain, False, tools)
        spans, cursor = [], 0
        last = len(plain) - 1
        for i, message in enumerate(plain):
            if message["role"] != "assistant":
                continue
            span = self._prefix_span(plain, i, full, last, tools) if self._prefix_stable else None
            if span is None:
                span = self._search_span(full, message["content"], cursor)
            cursor = span[1]
            spans.append(span)
        return full, spans

    # A conversation's rendering is the same for every conversation with the same roles, except for the contents.
    # The template is rendered once per role sequence with placeholder contents (a "skeleton"); each row is then
    # the skeleton's literal pieces joined with its contents. Templates that look at or transform the contents are
    # detected (and rows are checked against a full rendering now and then); they always take the slow path.

    def _fast_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        key = (tuple((m["role"], m["name"] if "name" in m else None) for m in messages), self._prefix_stable)
        if key not in self._skeletons:  # built from the current state; the state it leaves is replayed on reuse
            self._skeletons[key] = (self._skeleton(key[0]) or False, self._prefix_stable)
        skeleton, self._prefix_stable = self._skeletons[key]
        if not isinstance(skeleton, tuple):
            return self._slow_spans(messages)
        pieces, bounds = skeleton
        parts = [pieces[0]]
        starts = [0]
        pos = len(pieces[0])
        for message, piece in zip(messages, pieces[1:], strict=True):
            content = message["content"]
            parts += (content, piece)
            pos += len(content)
            starts.append(pos)
            pos += len(piece)
        text = "".join(parts)
        spans = [(starts[ka] + da, starts[kb] + db) for (ka, da), (kb, db) in bounds]
        self._rendered += 1
        if self._rendered <= _VERIFY_FIRST or self._rendered % _VERIFY_EVERY == 0:
            if self._slow_spans(messages) != (text, spans):
                self._fast = False
                raise SkeletonMismatch
        return text, spans

    def _skeleton(self, key) -> tuple[list[str], list] | None:
        if reads_content(self.tokenizer.get_chat_template()):
            self._fast = False
            return None
        marks = [f"\ue000{k}\ue001" for k in range(len(key))]

        def conversation(contents):
            return [
                {"role": r, "content": c, **({"name": n} if n is not None else {})}
                for (r, n), c in zip(key, contents, strict=True)
            ]

        try:
            full, spans = self._slow_spans(conversation(marks))
            padded = [f" \n{m}\t " for m in marks]
            padded_full = self.render(conversation(padded), False)
        except Exception:  # noqa: BLE001 - a template that rejects this role sequence: the slow path reports it
            return None
        at = [full.find(m) for m in marks]
        if any(a < 0 or full.count(m) != 1 for a, m in zip(at, marks, strict=True)) or at != sorted(at):
            return None
        if any(padded_full.count(p) != 1 for p in padded):
            return None
        pieces, prev = [], 0
        for a, m in zip(at, marks, strict=True):
            pieces.append(full[prev:a])
            prev = a + len(m)
        pieces.append(full[prev:])
        piece_starts = [0] + [a + len(m) for a, m in zip(at, marks, strict=True)]

        def locate(p):
            k = sum(1 for s in piece_starts[1:] if s <= p)
            if k < len(at) and p > at[k]:  # inside a placeholder: the boundary is not between pieces
                return None
            return (k, p - piece_starts[k])

        bounds = [(locate(a), locate(b)) for a, b in spans]
        if any(x is None or y is None for x, y in bounds):
            return None
        return pieces, bounds

    def _prefix_span(self, plain, i, full, last, tools=None):
        try:
            start = self.render(plain[:i], True, tools)
            end = full if i == last else self.render(plain[: i + 1], False, tools)
        except Exception:  # a template that cannot render a partial conversation
            return None
        if not (full.startswith(end) and end.startswith(start)):
            self._prefix_stable = False
            return None
        stop = len(end.rstrip())
        return (len(start), max(stop, len(start)))

    def _search_span(self, full: str, content: str, cursor: int) -> tuple[int, int]:
        a = full.find(content, cursor)
        if a < 0:
            a = full.find(content.strip(), cursor)
            content = content.strip()
        if a < 0:
            raise UserError(
                "the chat template changes the assistant's answers, so hydratune cannot tell which "
                "tokens are the answer. Use a template that keeps message content as is, or set "
                "dataset.train_on_all_tokens=true."
            )
        b = a + len(content)
        rest = full[b:]
        for token in (self.tokenizer.eos_token, *_END_TOKENS):
            if token and rest.lstrip(" ").startswith(token):
                b += rest.index(token) + len(token)
                break
        return a, b

    # ------------------------------------------------------------ rows -> texts and spans

    def text_spans(self, row: dict) -> tuple[str, list[tuple[int, int]], bool]:
        """(text, loss spans, is_raw): raw texts get the tokenizer's special tokens and an EOS appended."""
        if "messages" in row:
            text, spans = self.chat_spans(row["messages"], row.get("tools"))
            return text, spans, False
        if "text" in row:
            return row["text"], [(0, len(row["text"]))], True
        if "completion" in row:
            text = row["prompt"] + row["completion"]
            return text, [(0 if self.all_tokens else len(row["prompt"]), len(text))], True
        raise UserError(
            "preference data (prompt/chosen/rejected) needs a preference objective (objective=dpo, orpo, kto or "
            "reward); supervised fine-tuning cannot use it. Choose a chat, prompt_completion or text dataset."
        )

    # ------------------------------------------------------------ encode

    def encode(self, rows: list[dict]) -> Encoded:
        """Every row, a chunk of CHUNK rows at a time (:meth:`encode_chunk`)."""
        try:
            out = Encoded()
            for start in range(0, len(rows), CHUNK):
                self._encode_chunk(rows[start : start + CHUNK], start, out)
        except SkeletonMismatch:  # the template is not content-transparent after all: render every row fully
            out = Encoded()
            for start in range(0, len(rows), CHUNK):
                self._encode_chunk(rows[start : start + CHUNK], start, out)
        return out

    def encode_chunk(self, rows: list[dict]) -> Encoded:
        """One chunk of rows, its result a function of the chunk alone (and of :attr:`fast`): each chunk starts
        from the same state, so a dataset cut into the same chunks encodes to the same bytes whichever process
        encodes which chunk. Raises :class:`SkeletonMismatch` when the template turns out not to be
        content-transparent: then every chunk must be encoded again with ``fast = False``."""
        out = Encoded()
        self._encode_chunk(rows, 0, out)
        return out

    @property
    def fast(self) -> bool:
        return self._fast

    @fast.setter
    def fast(self, value: bool) -> None:
        self._fast = value

    def _encode_chunk(self, rows: list[dict], offset: int, out: Encoded) -> None:
        self._rendered, self._prefix_stable = 0, True  # every chunk starts from the same state
        items = [self._bounded(*self.text_spans(r)) for r in rows]
        if self.backend is None:
            self._cuts = {text: [b for span in spans for b in span] for text, spans, _ in items}
        encoded: list = [None] * len(items)
        for raw in (False, True):
            idx = [i for i, it in enumerate(items) if it[2] is raw]
            if idx:
                for i, enc in zip(idx, self._tokenize([items[i][0] for i in idx], raw), strict=True):
                    encoded[i] = enc
        limit = self.max_length
        for i, ((_, spans, raw), (ids, starts)) in enumerate(zip(items, encoded, strict=True)):
            ids = np.asarray(ids, dtype=np.int32)
            bounds = np.asarray([b for span in spans for b in span], dtype=np.int64)
            in_loss = (np.searchsorted(bounds, np.asarray(starts, dtype=np.int64), side="right") % 2) == 1
            if raw and self.eos is not None and (len(ids) == 0 or ids[-1] != self.eos):
                ids = np.append(ids, np.int32(self.eos))
                in_loss = np.append(in_loss, bool(spans))
            labels = np.where(in_loss, ids, -100).astype(np.int32)
            out.tokens.append(int(len(ids)))
            out.loss_tokens.append(int(in_loss.sum()))
            if limit is not None and len(ids) > limit:
                out.truncated += 1
                ids, labels = ids[:limit], labels[:limit]
            if not (labels != -100).any():
                out.no_loss.append(offset + i)
                continue
            out.input_ids.append(ids)
            out.labels.append(labels)
            out.kept.append(offset + i)

    def _bounded(self, text: str, spans: list[tuple[int, int]], raw: bool) -> tuple[str, list[tuple[int, int]], bool]:
        """Cut a text longer than CHARS_PER_TOKEN x max_length characters before tokenizing it: its first
        max_length tokens lie well inside the cut, so the truncated ids are the same, and memory stays bounded
        however long a row is (a 50 MB row no longer takes gigabytes to tokenize)."""
        cut = CHARS_PER_TOKEN * (self.max_length or 0)
        # A text of unusually long tokens: widen the cut until it holds more than max_length tokens.
        while self.max_length is not None and cut < len(text) and self._count(text[:cut], raw) <= self.max_length:
            cut *= 4
        if self.max_length is None or cut >= len(text):
            return text, spans, raw
        return text[:cut], [(a, min(b, cut)) for a, b in spans if a < cut], raw

    def _count(self, text: str, raw: bool) -> int:
        if self.backend is not None:
            return len(self.backend.encode(text, add_special_tokens=raw).ids)
        return len(self.tokenizer.encode(text, add_special_tokens=raw))

    def _tokenize(self, texts: list[str], raw: bool) -> list[tuple[list[int], list[int]]]:
        """(ids, start character of each token) per text."""
        if self.backend is not None:
            encodings = self.backend.encode_batch(texts, add_special_tokens=raw)
            return [(e.ids, [o[0] for o in e.offsets]) for e in encodings]
        out = []  # a slow tokenizer has no offsets: tokenize the pieces between span boundaries separately
        for text in texts:
            ids, starts = [], []
            if (
                raw
                and getattr(self.tokenizer, "bos_token_id", None) is not None
                and getattr(self.tokenizer, "add_bos_token", False)
            ):
                ids, starts = [self.tokenizer.bos_token_id], [0]
            cuts = sorted({0, len(text), *self._cuts[text]})
            for a, b in zip(cuts, cuts[1:], strict=False):
                piece = self.tokenizer.encode(text[a:b], add_special_tokens=False)
                ids += piece
                starts += [a] * len(piece)
            out.append((ids, starts))
        return out


def to_dataset(input_ids: list[np.ndarray], labels: list[np.ndarray]):
    """A datasets.Dataset with input_ids and labels columns, built straight from numpy (no Python lists)."""
    import datasets
    import pyarrow as pa

    def column(arrays: list[np.ndarray]) -> pa.ListArray:
        lengths = np.fromiter((len(a) for a in arrays), dtype=np.int32, count=len(arrays))
        offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int32)
        values = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int32()))

    table = pa.table({"input_ids": column(input_ids), "labels": column(labels)})
    return datasets.Dataset(table)
