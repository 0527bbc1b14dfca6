"""Before training: the chat template and the end-of-sequence tokens agree on where an answer stops.

A few training rows are encoded exactly as training encodes them (trainer.data.tokenize.Encoder) and checked:

- the last token of each trained answer (the template's end-of-turn token) is special, and it is in the loss;
- generation stops on it: it is the tokenizer's EOS or one of the model's generation_config EOS ids (what vLLM,
  llama.cpp and ``model.generate`` read); where it is not, hydratune adds it to generation_config and says so;
- BOS is not doubled at the start of a row;
- the prompt evaluation (and serving, through the saved tokenizer) renders is the start of the training rendering.

A mismatch hydratune cannot repair is a UserError naming the row and the token, before any weights are trained.
"""

from __future__ import annotations

import logging
from typing import Any

from trainer.config.errors import UserError
from trainer.data.tokenize import Encoder
from trainer.evaluation import local as evaluation

log = logging.getLogger(__name__)
ROWS = 3  # rows checked: the template renders every row alike, a few find a mismatch


def stop_ids(tokenizer, generation_config) -> set[int]:
    """The ids generation stops on: the tokenizer's EOS and generation_config's eos_token_id (int or list)."""
    configured = getattr(generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured])
    return {i for i in ids | {tokenizer.eos_token_id} if i is not None}


def check(tokenizer, generation_config, rows: list[dict], train_on_all_tokens: bool = False) -> list[str]:
    """Lint up to ROWS chat rows; returns the repairs applied (each also logged as a warning), raises UserError."""
    chats = [r for r in rows if "messages" in r][:ROWS]
    texts = [r for r in rows if "text" in r or "completion" in r][:ROWS]
    repairs: list[str] = []
    encoder = Encoder(tokenizer, None, train_on_all_tokens)
    for n, row in enumerate(chats + texts):
        ids = [int(i) for i in encoder.encode([row]).input_ids[0]]
        _check_bos(tokenizer, ids, n)
    if not chats:
        return repairs
    special = set(tokenizer.all_special_ids) | {
        i for i, t in tokenizer.added_tokens_decoder.items() if getattr(t, "special", False)
    }
    for n, row in enumerate(chats):
        encoded = encoder.encode([row])
        if not encoded.input_ids:
            continue  # a row without trained tokens: data statistics report it
        ids = [int(i) for i in encoded.input_ids[0]]
        labels = [int(i) for i in encoded.labels[0]]
        last = max(i for i, label in enumerate(labels) if label != -100)
        after = ids[last + 1] if last + 1 < len(ids) else None
        if not train_on_all_tokens and ids[last] not in special:
            if after is not None and after in special:
                raise UserError(
                    f"Training row {n}: the end-of-turn token {_name(tokenizer, after)} follows the assistant's answer "
                    "but is not in the loss, so the model never learns to stop and generates until max_new_tokens. "
                    "Use a chat template that puts the end-of-turn token right after the answer (no text between), "
                    "or model.chat_template=chatml."
                )
            raise UserError(
                f"Training row {n}: the chat template ends the assistant's answer with {_name(tokenizer, ids[last])}, "
                "not an end-of-turn token, so the model never learns to stop and generates until max_new_tokens. "
                f"The template ({_template_start(tokenizer)}...) must close each assistant turn with a special token "
                f"(e.g. {tokenizer.eos_token or '<|im_end|>'}); fix model.chat_template (or use chatml)."
            )
        end = ids[last]
        if end in special and end not in stop_ids(tokenizer, generation_config):
            repairs.append(_add_stop(tokenizer, generation_config, end))
        _check_eval_prompt(tokenizer, encoder, row, n)
    for repair in repairs:
        log.warning("template lint: %s", repair)
    return repairs


def _check_bos(tokenizer, ids: list[int], n: int) -> None:
    bos = tokenizer.bos_token_id
    if bos is not None and len(ids) >= 2 and ids[0] == ids[1] == bos:
        raise UserError(
            f"Training row {n} starts with two BOS tokens ({tokenizer.bos_token} {tokenizer.bos_token}): the text or "
            "chat template already writes the BOS token and the tokenizer adds another, so the model trains on a "
            "start it never sees at serving time. Remove the BOS token from the text (or from model.chat_template)."
        )


def _add_stop(tokenizer, generation_config, token: int) -> str:
    configured = generation_config.eos_token_id
    before = configured if isinstance(configured, list) else [c for c in [configured] if c is not None]
    generation_config.eos_token_id = [*before, token]
    return (
        f"the trained answers end with {_name(tokenizer, token)} (id {token}), which generation did not stop on "
        f"(tokenizer eos {tokenizer.eos_token!r}, generation_config.eos_token_id={configured}); fixed: "
        f"generation_config.eos_token_id={generation_config.eos_token_id} (saved with the model and its export)."
    )


def _check_eval_prompt(tokenizer, encoder: Encoder, row: dict, n: int) -> None:
    """The prompt evaluation and serving render (everything before the last answer, with the generation prompt)
    is where the training rendering's last answer starts."""
    asked = evaluation.queries([row], None)
    if not asked:
        return
    query = asked[0]
    prompt = evaluation.render(tokenizer, query)
    messages = [{k: v for k, v in m.items() if k != "weight"} for m in row["messages"]]
    full, _ = encoder.chat_spans(messages, row.get("tools"))  # as training renders it (tools and calls included)
    if not full.startswith(prompt):
        at = next(
            (i for i, (a, b) in enumerate(zip(prompt, full, strict=False)) if a != b), min(len(prompt), len(full))
        )
        raise UserError(
            f"Training row {n}: the prompt evaluation and serving send the model differs from what training put "
            f"before the answer, from character {at}: evaluation {prompt[at : at + 40]!r}, training "
            f"{full[at : at + 40]!r}. The chat template's generation prompt (add_generation_prompt) must be the start "
            "of the assistant turn it trains; fix model.chat_template."
        )


def _name(tokenizer, token: int) -> str:
    return repr(tokenizer.convert_ids_to_tokens(token))


def _template_start(tokenizer) -> str:
    return repr((tokenizer.get_chat_template() or "")[:60])


def lint(cfg: Any, tokenizer, model, rows: list[dict]) -> list[str]:
    """The engine's call: the run's config, tokenizer, model (its generation_config) and training rows."""
    generation_config = getattr(model, "generation_config", None)
    if generation_config is None or cfg.objective.data != "supervised":
        return []  # a reward model generates nothing; preference rows are rendered by TRL, not by the Encoder
    return check(tokenizer, generation_config, rows, bool(cfg.dataset.train_on_all_tokens))
