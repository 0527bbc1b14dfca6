"""The objectives' own held-out numbers: how a model ranks preference pairs, and the reward of its answers.

- A generating model (causal LM) prefers the chosen answer of a pair when its summed log-probability of the chosen
  answer's tokens, given the prompt, is above the rejected one's. ``pair_accuracy`` is the share of held-out pairs
  where it does, ``pair_margin`` the mean log-probability difference (nats). A sum favours the shorter answer (every
  token costs log-probability), so the same on the per-token mean log-probability: ``pair_accuracy_mean`` and
  ``pair_margin_mean``; and ``pair_accuracy_matched``: the summed-log-probability accuracy over the
  ``pairs_matched`` pairs whose answers' token counts differ by under 10% (:data:`MATCHED`). ``chosen_shorter`` is
  the share of pairs whose chosen answer has fewer tokens than the rejected one: far from 0.5, summed scores
  measure length on this data. Against a reference model's margins (the base model's, measured before training)
  come DPO's implicit rewards: ``reward_accuracy`` is the share of pairs whose margin grew, ``reward_margin`` the
  mean growth.
- A reward model (sequence classification) prefers chosen when it scores the whole chosen conversation higher:
  ``pair_accuracy`` is its pairwise accuracy, ``pair_margin`` the mean score difference (and
  ``pair_accuracy_matched`` over the length-matched pairs).
- ``per_pair``: each of those metrics per pair (wins 0/1, margins), for the report's paired bootstrap and McNemar
  tests (trainer.stats); ``pair_accuracy_matched`` over the matched pairs only.
- :func:`rewards`: the summed reward functions on each generated answer, per held-out prompt.
"""

from __future__ import annotations

#: Two answers are length-matched when their token counts differ by less than this share of the longer one.
MATCHED = 0.10


def _render(tokenizer, prompt, answer) -> tuple[list[int], list[int]]:
    """Token ids of the prompt (with the generation prompt) and of the answer that follows it."""
    if isinstance(prompt, str):
        prompt_text, answer_text = prompt, answer if isinstance(answer, str) else answer[-1]["content"]
    else:
        answer = [{"role": "assistant", "content": answer}] if isinstance(answer, str) else answer
        prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
        answer_text = full[len(prompt_text) :] if full.startswith(prompt_text) else answer[-1]["content"]
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    return encode(prompt_text), encode(answer_text)


def _answer_logps(model, tokenizer, items: list[tuple[list[int], list[int]]], batch_size: int) -> list[float]:
    """Summed log-probability of each answer's tokens given its prompt (teacher forcing, right padding)."""
    import torch

    out: list[float] = []
    pad = tokenizer.pad_token_id
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        width = max(len(p) + len(a) for p, a in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        answer = torch.zeros((len(batch), width), dtype=torch.bool)
        for i, (p, a) in enumerate(batch):
            ids[i, : len(p) + len(a)] = torch.tensor(p + a)
            mask[i, : len(p) + len(a)] = 1
            answer[i, len(p) : len(p) + len(a)] = True
        ids, mask, answer = ids.to(model.device), mask.to(model.device), answer.to(model.device)
        with torch.no_grad():  # not inference_mode: ZeRO-3 would keep its gathered weights as inference tensors
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        logps = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        out += (logps * answer[:, 1:]).sum(-1).tolist()
    return out


def _scores(model, tokenizer, texts: list[str], batch_size: int) -> list[float]:
    """A reward model's score of each whole conversation."""
    import torch

    out: list[float] = []
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True)
            with torch.no_grad():  # not inference_mode: ZeRO-3 would keep its gathered weights as inference tensors
                out += model(**enc.to(model.device)).logits[:, 0].float().tolist()
    finally:
        tokenizer.padding_side = side
    return out


def pair_scores(model, tokenizer, pairs: list[dict], batch_size: int, head: str = "causal_lm") -> dict:
    """Per pair: the preference for chosen over rejected (``margin``: summed log-prob or score difference;
    ``margin_mean``: per-token mean log-prob difference, causal LMs only) and the answers' token counts."""
    items = [_render(tokenizer, p["prompt"], p[side]) for p in pairs for side in ("chosen", "rejected")]
    lengths = [max(len(a), 1) for _, a in items]
    was_training = model.training
    model.eval()
    try:
        if head == "sequence_classification":
            texts = [
                tokenizer.apply_chat_template(
                    _as_messages(p["prompt"]) + _as_messages(p[side], "assistant"), tokenize=False
                )
                for p in pairs
                for side in ("chosen", "rejected")
            ]
            scores = _scores(model, tokenizer, texts, batch_size)
            means = None
        else:
            scores = _answer_logps(model, tokenizer, items, batch_size)
            means = [s / n for s, n in zip(scores, lengths, strict=True)]
    finally:
        model.train(was_training)
    pick = range(len(pairs))
    out = {
        "margin": [scores[2 * i] - scores[2 * i + 1] for i in pick],
        "chosen_tokens": [lengths[2 * i] for i in pick],
        "rejected_tokens": [lengths[2 * i + 1] for i in pick],
    }
    if means is not None:
        out["margin_mean"] = [means[2 * i] - means[2 * i + 1] for i in pick]
    return out


def matched(chosen_tokens: int, rejected_tokens: int) -> bool:
    return abs(chosen_tokens - rejected_tokens) < MATCHED * max(chosen_tokens, rejected_tokens)


def _as_messages(value, role: str = "user") -> list[dict]:
    return [{"role": role, "content": value}] if isinstance(value, str) else list(value)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def pair_metrics(
    model, tokenizer, pairs: list[dict], batch_size: int, head: str = "causal_lm", reference: dict | None = None
) -> dict:
    scored = pair_scores(model, tokenizer, pairs, batch_size, head)
    margins = scored["margin"]
    lengths = list(zip(scored["chosen_tokens"], scored["rejected_tokens"], strict=True))
    per_pair = {"pair_accuracy": [float(m > 0) for m in margins], "pair_margin": margins}
    if "margin_mean" in scored:
        per_pair["pair_accuracy_mean"] = [float(m > 0) for m in scored["margin_mean"]]
        per_pair["pair_margin_mean"] = scored["margin_mean"]
    same = [float(m > 0) for m, (c, r) in zip(margins, lengths, strict=True) if matched(c, r)]
    if same:
        per_pair["pair_accuracy_matched"] = same
    unequal = [c < r for c, r in lengths if c != r]
    result: dict = {name: _mean(values) for name, values in per_pair.items()}
    result |= {
        "pairs": len(margins),
        "pairs_matched": len(same),
        "chosen_shorter": _mean([float(u) for u in unequal]) if unequal else 0.5,
        "per_pair": per_pair,  # pair_margin: for the reward accuracy against this model as the reference
    }
    base = ((reference or {}).get("per_pair") or {}).get("pair_margin")
    if base is not None and len(base) == len(margins):
        rewards = [m - b for m, b in zip(margins, base, strict=True)]
        result["reward_accuracy"] = sum(r > 0 for r in rewards) / len(rewards)
        result["reward_margin"] = sum(rewards) / len(rewards)
    return result


def rewards(reward_funcs: list, rows: list[dict], predictions: list[str]) -> list[float]:
    """Per prompt: the summed rewards of its generated answer (rows hold the prompt and the columns)."""
    columns = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"} if rows else {}
    prompts = [r["prompt"] for r in rows]
    totals = [0.0] * len(predictions)
    for func in reward_funcs:
        for i, value in enumerate(func(prompts=prompts, completions=predictions, **columns)):
            totals[i] += float(value)
    return totals
