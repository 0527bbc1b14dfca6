"""Provider model lifecycles: a retired model is refused before anything runs; one closing soon is announced.

The dates live in the model's option (``model.lifecycle.<provider>.training_closes`` / ``shutdown`` in
conf/model/*.yaml), so a user corrects them without touching code. "Today" is the system clock's date, or
``HYDRATUNE_TODAY=YYYY-MM-DD`` (to plan a migration ahead, and for tests that must not age).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from trainer.config.errors import UserError
from trainer.config.schema import is_cloud

#: A model whose training closes within this many days gets a warning in prepare, the estimate and the report.
WARN_DAYS = 90
TODAY_VARIABLE = "HYDRATUNE_TODAY"


@dataclass
class Lifecycle:
    provider: str
    model: str
    training_closes: str | None
    shutdown: str | None
    days_to_training_close: int | None
    days_to_shutdown: int | None
    replacements: list[str] = field(default_factory=list)

    @property
    def retired(self) -> bool:
        """No new job can be created any more (training closed, or the model shut down)."""
        days = [d for d in (self.days_to_training_close, self.days_to_shutdown) if d is not None]
        return bool(days) and min(days) <= 0

    @property
    def closing_soon(self) -> bool:
        days = [d for d in (self.days_to_training_close, self.days_to_shutdown) if d is not None]
        return bool(days) and 0 < min(days) <= WARN_DAYS

    def warning(self) -> str:
        parts = []
        if self.training_closes:
            parts.append(
                f"new fine-tuning jobs stop on {self.training_closes} ({self.days_to_training_close} days left)"
            )
        if self.shutdown:
            parts.append(
                f"the model and every fine-tune built on it shut down on {self.shutdown} "
                f"({self.days_to_shutdown} days left)"
            )
        return f"{self.model} at {self.provider}: {' and '.join(parts)}.{_instead(self.replacements)}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "warning": self.warning() if self.closing_soon else None}


def today() -> date:
    value = os.environ.get(TODAY_VARIABLE)
    if not value:
        return date.today()
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UserError(f"{TODAY_VARIABLE}={value} is not a date: write it as YYYY-MM-DD, or unset it.") from None


def lifecycle(cfg: Any) -> Lifecycle | None:
    """The model's lifecycle at the configured provider, or None when no dates are known."""
    if not is_cloud(cfg) or cfg.hardware.provider not in cfg.model.lifecycle:
        return None
    provider = cfg.hardware.provider
    entry = cfg.model.lifecycle[provider]
    now = today()
    return Lifecycle(
        provider=str(provider),
        model=str(cfg.model.name_or_path),
        training_closes=entry.training_closes,
        shutdown=entry.shutdown,
        days_to_training_close=_days(entry.training_closes, now, provider, "training_closes"),
        days_to_shutdown=_days(entry.shutdown, now, provider, "shutdown"),
        replacements=[str(r) for r in entry.replacements],
    )


def check(cfg: Any) -> Lifecycle | None:
    """Raise a UserError naming the replacements for a retired model; else its lifecycle (or None)."""
    life = lifecycle(cfg)
    if life is None or not life.retired:
        return life
    when = [
        f"new fine-tuning jobs closed on {life.training_closes}" if life.training_closes else "",
        f"the model shut down on {life.shutdown}" if life.shutdown else "",
    ]
    raise UserError(
        f"model.name_or_path={life.model} is retired at {life.provider}: "
        f"{' and '.join(w for w in when if w)} (model.lifecycle.{life.provider} in the model's option under "
        f"conf/model/; today is {today()}). Nothing was uploaded.{_instead(life.replacements)}"
    )


def _instead(replacements: list[str]) -> str:
    return f" Instead use: {'; '.join(replacements)}." if replacements else ""


def _days(value: str | None, now: date, provider: str, key: str) -> int | None:
    if value is None:
        return None
    try:
        return (date.fromisoformat(str(value)) - now).days
    except ValueError:
        raise UserError(
            f"model.lifecycle.{provider}.{key}={value} is not a date: write it as YYYY-MM-DD (quoted) in the "
            "model's option under conf/model/."
        ) from None
