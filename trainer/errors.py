"""User-facing errors: one line that names the problem and the fix, exit code 2, no traceback.

``UserError`` is raised where a problem is found. ``as_user_error`` is the one place where an
exception from the operating system or a library (a file that cannot be read or written) becomes
such a line; every command-line entry point hands what it catches to ``exit_for``.
"""

from __future__ import annotations

import errno
import math
import os
import sys
import tempfile
import traceback
from collections.abc import Iterable
from pathlib import Path

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


def _os_error_in(exc: BaseException) -> OSError | None:
    """The first OSError naming a file in ``exc`` or its explicit causes (``raise ... from``, as
    libraries wrap them); not in exceptions merely raised while handling one (``__context__``)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.filename and exc.errno is not None:
            return exc
        exc = exc.__cause__
    return None


_FIXES = {
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "the file system is read-only; choose a path on a writable one",
    errno.ENOSPC: "the disk is full; free space or choose another path",
    errno.EDQUOT: "the disk quota is exceeded; free space or choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EISDIR: "it is a folder; give a file",
    errno.ENOENT: "check the path",
}


def as_user_error(exc: BaseException) -> UserError | None:
    """A ``UserError`` for an exception that is the user's to fix (a path that cannot be read or
    written), else None: anything else is a bug and keeps its traceback."""
    if isinstance(exc, UserError):
        return exc
    os_error = _os_error_in(exc)
    if os_error is None:
        return None
    fix = _FIXES.get(os_error.errno, "check the path")
    return UserError(f"cannot use {os_error.filename}: {os_error.strerror}; {fix}")


def exit_for(exc: Exception, debug: bool, show=print_error) -> int:
    """For a command line's ``except Exception``: ``show`` the one line of an error that is the
    user's to fix and return ``EXIT_USAGE``; re-raise anything else (a bug keeps its traceback)."""
    error = as_user_error(exc)
    if error is None:
        raise exc
    show(error, debug)
    return EXIT_USAGE


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
    """Check low <= value <= high (either bound may be None); nan and ±inf are never in range."""
    interval = ("(-inf" if low is None else f"[{low}") + ", " + ("inf)" if high is None else f"{high}]")
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{key}={value!r} is not a finite number; give one in {interval}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise UserError(f"{key}={value!r} is out of range; it must be in {interval}")


def check_writable_dir(path: str | Path, option: str, create: bool = False) -> None:
    """Fail now, not after the work, if folder ``path`` cannot be created and written to.

    A probe file (a unique name, removed at once) goes into ``path``, or where it is missing into
    its deepest existing ancestor: nothing is created, so a run that stops later leaves nothing
    behind, and runs starting side by side cannot trip on each other's folders. With ``create``
    (a cache every process shares) the folder is made first and stays.
    """
    path = Path(path)
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option}={path}: {existing} is a file, not a folder; choose another {option}")
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
            existing = path
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".write-test-")
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(
            f"{option}={path} cannot be written ({exc.strerror or exc}); choose a folder you can write to"
        ) from exc


def check_new_file(path: str | Path, option: str, overwrite: bool) -> None:
    """Fail now, not after the work, if output file ``path`` exists (unless ``overwrite``) or its
    folder cannot be written (a missing folder is fine: it is created when the file is written)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; choose another {option} or pass --overwrite to replace it")
    check_writable_dir(path.resolve().parent, option)
