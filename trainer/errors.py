"""User-facing errors: one line that names the problem and the fix, exit code 2, no traceback."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Iterable

EXIT_USAGE = 2


class UserError(Exception):
    """Bad input from the user (config, data, paths). Printed as one line; exits with code 2.

    ``on_every_rank``: every process meets this error alike, so only the main one reports it.
    """

    def __init__(self, message: str, on_every_rank: bool = False) -> None:
        super().__init__(message)
        self.on_every_rank = on_every_rank


def print_error(exc: Exception, debug: bool, prefix: str = "") -> None:
    """The one line a user sees for ``exc`` (with the traceback before it when ``debug``)."""
    if debug:
        traceback.print_exc()
    print(f"{prefix}error: {exc}", file=sys.stderr, flush=True)


def stdout_closed() -> None:
    """After a ``BrokenPipeError`` on stdout (the reader left, e.g. ``| head``): send what is still
    buffered to /dev/null, so that the exit is quiet."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def check_choice(key: str, value: object, choices: Iterable[object]) -> None:
    choices = list(choices)
    if value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise UserError(f"{key}={value!r} is not valid; choose one of {valid}")


def check_range(key: str, value: float | int, low: float | None = None, high: float | None = None) -> None:
    """Check low <= value <= high (either bound may be None)."""
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise UserError(f"{key}={value!r} is out of range; it must be in [{lo}, {hi}]")
