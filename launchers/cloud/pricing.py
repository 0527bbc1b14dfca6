"""Training-cost estimate: OpenAI's default-epochs rule, billed tokens, price table from config.

The rule is the one in OpenAI's fine-tuning data-preparation cookbook: 3 epochs, raised for small datasets
(``min(25, 100 // n)`` when n x 3 < 100) and lowered for large ones (``max(1, 25000 // n)`` when n x 3 > 25000).
Billed tokens = sum over examples of min(limit, tokens) x epochs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25


def default_epochs(n_examples: int) -> int:
    """The number of epochs the provider picks when n_epochs is "auto"."""
    if n_examples <= 0:
        return TARGET_EPOCHS
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


def billed_tokens(token_counts: list[int], limit: int | None, epochs: int) -> int:
    """Tokens the provider charges for: each example is cut at the limit, every epoch is paid."""
    per_epoch = sum(min(limit, t) if limit else t for t in token_counts)
    return per_epoch * epochs


@dataclass
class Estimate:
    model: str
    examples: int
    epochs: int
    epochs_source: str  # "config" or "default rule"
    tokens_per_epoch: int
    billed_tokens: int
    over_limit: int
    token_limit: int | None
    usd_per_million: float | None
    usd: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        price = (
            f"~${self.usd:.2f} at ${self.usd_per_million:g}/1M training tokens"
            if self.usd is not None
            else f"no price for {self.model} in hardware.price_per_million_training_tokens"
        )
        limit = (
            f"; {self.over_limit} example(s) exceed the {self.token_limit}-token limit and will be truncated"
            if self.over_limit
            else ""
        )
        return (
            f"{self.examples} training examples, {self.tokens_per_epoch} tokens per epoch, {self.epochs} epochs "
            f"({self.epochs_source}) -> {self.billed_tokens} billed tokens, {price}{limit}."
        )


def estimate(
    model: str, token_counts: list[int], limit: int | None, n_epochs: Any, prices: dict[str, float]
) -> Estimate:
    if n_epochs in (None, "auto"):
        epochs, source = default_epochs(len(token_counts)), "default rule"
    else:
        epochs, source = int(n_epochs), "config"
    billed = billed_tokens(token_counts, limit, epochs)
    price = prices.get(model)
    return Estimate(
        model=model,
        examples=len(token_counts),
        epochs=epochs,
        epochs_source=source,
        tokens_per_epoch=billed_tokens(token_counts, limit, 1),
        billed_tokens=billed,
        over_limit=sum(1 for t in token_counts if limit and t > limit),
        token_limit=limit,
        usd_per_million=price,
        usd=None if price is None else round(billed / 1e6 * float(price), 4),
    )
