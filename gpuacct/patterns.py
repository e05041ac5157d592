"""GPU model patterns (prices, reservations): regular expressions searched in a model's name,
any case, matched by RE2.

Users write them (`gpuacct reserve --model`, the web's price form), so they must never cost
more than the text they are matched against: RE2 runs in time linear in the text, where
Python's `re` backtracks (`(.+)+!` would hold a core for minutes). RE2 has no backreferences
or lookaround; a pattern that needs them is refused with RE2's reason."""

from __future__ import annotations

from typing import Any

import re2  # type: ignore[import-untyped]  # no stubs

MAX_LENGTH = 256  # a model name is short; a longer pattern is a mistake or an attack


def _options() -> Any:
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False  # the reason is raised to the caller, not printed on stderr
    return options


_OPTIONS = _options()


class ModelMatcher:
    """A compiled model pattern; ValueError names what is wrong with a bad one."""

    def __init__(self, pattern: str) -> None:
        if len(pattern) > MAX_LENGTH:
            raise ValueError(f"a model pattern is at most {MAX_LENGTH} characters")
        try:
            self._compiled = re2.compile(pattern, _OPTIONS)
        except re2.error as exc:
            reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
            raise ValueError(f"not a regular expression RE2 accepts: {reason}") from None
        self.pattern = pattern

    def search(self, model: str) -> bool:
        return self._compiled.search(model) is not None


def check_pattern(value: str) -> str:
    ModelMatcher(value)
    return value
