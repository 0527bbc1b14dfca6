"""The one exception a row normaliser raises (trainer.data.formats, trainer.data.tool_calls)."""

from __future__ import annotations


class Invalid(Exception):
    """A row that cannot be used; ``problems`` lists what is wrong with it."""

    def __init__(self, *problems: str):
        super().__init__("; ".join(problems))
        self.problems = list(problems)
