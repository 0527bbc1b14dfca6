"""Canonical rows -> token ids and labels (-100 outside the loss), for any chat template.

Assistant spans are found without ``{% generation %}`` markers: the template is rendered on prefixes of the
conversation, ``messages[:i]`` with the generation prompt and ``messages[:i+1]`` without, and the characters between
the two renderings (the answer and the end-of-turn token the template puts after it) are in the loss. Characters
are mapped to tokens with the fast tokenizer's offsets. Templates whose renderings are not prefixes of each other
fall back to locating each answer's text in the full rendering.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from trainer.errors import UserError

CHUNK = 4096
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
    def __init__(self, tokenizer, max_length: int | None, train_on_all_tokens: bool = False):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.all_tokens = train_on_all_tokens
        self.backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
        self.eos = tokenizer.eos_token_id
        self._template = None
        self._prefix_stable = True
        self._cuts: dict[str, list[int]] = {}

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

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        compiled, special = self.template
        return compiled.render(
            messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt, **special
        )

    def chat_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans that count in the loss."""
        plain = [{k: v for k, v in m.items() if k != "weight"} for m in messages]
        full = self.render(plain, False)
        if self.all_tokens:
            return full, [(0, len(full))]
        spans, cursor = [], 0
        last = len(plain) - 1
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            trained = message.get("weight", 1) != 0
            span = self._prefix_span(plain, i, full, last) if self._prefix_stable else None
            if span is None:
                span = self._search_span(full, message["content"], cursor)
            cursor = span[1]
            if trained:
                spans.append(span)
        return full, spans

    def _prefix_span(self, plain, i, full, last):
        try:
            start = self.render(plain[:i], True)
            end = full if i == last else self.render(plain[: i + 1], False)
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
            text, spans = self.chat_spans(row["messages"])
            return text, spans, False
        if "text" in row:
            return row["text"], [(0, len(row["text"]))], True
        if "completion" in row:
            text = row["prompt"] + row["completion"]
            return text, [(0 if self.all_tokens else len(row["prompt"]), len(text))], True
        raise UserError(
            "preference data (prompt/chosen/rejected) needs a preference objective (e.g. DPO); "
            "supervised fine-tuning cannot use it. Choose a chat, prompt_completion or text dataset."
        )

    # ------------------------------------------------------------ encode

    def encode(self, rows: list[dict]) -> Encoded:
        out = Encoded()
        for start in range(0, len(rows), CHUNK):
            self._encode_chunk(rows[start : start + CHUNK], start, out)
        return out

    def _encode_chunk(self, rows: list[dict], offset: int, out: Encoded) -> None:
        items = [self.text_spans(r) for r in rows]
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
            cuts = sorted({0, len(text), *self._cuts.get(text, ())})
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
