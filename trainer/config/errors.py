"""User-facing errors: one paragraph that names the file or key, the value given and what to do.

Anything raised as :class:`UserError` (or a Hydra/OmegaConf composition error) reaches the user as that
paragraph and exit code 2, never as a traceback. Everything else is a bug in hydratune and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable


class UserError(Exception):
    """A mistake in the user's config, data, credentials or environment."""


class ConfigErrors(UserError):
    """Every broken rule of a config, found in one check pass and reported together (one paragraph each)."""

    def __init__(self, errors: list[UserError]) -> None:
        self.errors = errors
        lines = "\n".join(f"  {i}. {error}" for i, error in enumerate(errors, 1))
        super().__init__(f"{len(errors)} mistakes in the config; fix them all before the run starts:\n{lines}")


class Collector:
    """Runs rules and keeps every UserError they raise, so one pass reports all broken rules at once.

    A rule that fails in another way after a mistake was already found is taken as a consequence of that mistake
    (a value the rule cannot read) and not reported twice; without an earlier mistake it is a bug and propagates."""

    def __init__(self) -> None:
        self.errors: list[UserError] = []

    def add(self, error: UserError) -> None:
        self.errors.extend(error.errors if isinstance(error, ConfigErrors) else [error])

    def rule(self, check: Callable[..., object], *args: object) -> None:
        try:
            check(*args)
        except UserError as error:
            self.add(error)
        except Exception:
            if not self.errors:
                raise

    def raise_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ConfigErrors(self.errors)


def closest(name: str, allowed: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest allowed name, or '' when nothing is close."""
    match = difflib.get_close_matches(str(name), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" Did you mean '{match[0]}'?" if match else ""


def choice_error(key: str, value: object, allowed: Iterable[str], what: str = "") -> UserError:
    allowed = sorted(str(a) for a in allowed)
    return UserError(
        f"{key}={value!s} is not a valid {what or 'value'}.{closest(str(value), allowed)} "
        f"Allowed: {', '.join(allowed)}."
    )


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
