"""User-facing errors: one line that names the problem and the fix, exit code 2, no traceback.

``UserError`` is raised where a problem is found. ``as_user_error`` is the one place where an
exception from the operating system or a library (a file that cannot be read or written) becomes
such a line; every command-line entry point hands what it catches to ``exit_for``.
"""

from __future__ import annotations

import errno
import math
import os
import re
import select
import shutil
import stat
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
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


def _out_of_memory(exc: BaseException) -> str | None:
    """The first line of an allocation that failed (torch's CPU or GPU allocator, Python's own) in
    ``exc`` or its explicit causes, else None: the sizes asked for are the user's to change."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).strip()
        if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in text:
            first = text.splitlines()[0] if text else type(exc).__name__
            return re.sub(r"^\[enforce fail at [^\]]*\] (err == 0\. )?", "", first)[:200]  # torch's prefix
        exc = exc.__cause__
    return None


def as_user_error(exc: BaseException) -> UserError | None:
    """A ``UserError`` for an exception that is the user's to fix (a path that cannot be read or
    written), else None: anything else is a bug and keeps its traceback."""
    if isinstance(exc, UserError):
        return exc
    if (failed := _stdout_failure(exc)) is not None:
        fix = "free space on its disk, or" if failed.errno in (errno.ENOSPC, errno.EDQUOT) else "check it, or"
        return UserError(f"cannot write to standard output: {failed.strerror}; {fix} redirect it elsewhere")
    if (memory := _out_of_memory(exc)) is not None:
        return UserError(
            f"out of memory ({memory}); choose smaller sizes (--model.embedding_dim, --model.hidden_dim, "
            "--tokenizer.vocab_size, --train.batch_size, --data.max_length)"
        )
    os_error = _os_error_in(exc)
    if os_error is None:
        return None
    fix = _FIXES.get(os_error.errno, "check the path")
    return UserError(f"cannot use {os_error.filename}: {os_error.strerror}; {fix}")


def exit_for(exc: Exception, debug: bool, show=print_error) -> int:
    """For a command line's ``except Exception``: ``show`` the one line of an error that is the
    user's to fix and return ``EXIT_USAGE``; re-raise anything else (a bug keeps its traceback).

    Standard output that cannot be written is met here too, wherever the command printed: a reader
    that left (``| head``) ends the command quietly with 0; a full disk (``> /dev/full``) is one
    line. Either way what is still buffered goes to /dev/null, so that the exit is quiet."""
    error = as_user_error(exc)
    failed = _stdout_failure(exc)
    if failed is not None:
        stdout_closed()
        if failed.errno == errno.EPIPE:
            return 0
    if error is None:
        raise exc
    show(error, debug)
    return EXIT_USAGE


def stdout_closed() -> None:
    """After standard output failed (the reader left, e.g. ``| head``, or its disk is full): send
    what is still buffered to /dev/null, so that the exit is quiet."""
    with suppress(OSError, ValueError, AttributeError):  # not a real file (a test's capture)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def flush_stdout() -> None:
    """Write out what standard output still holds: for a command's last step inside its ``try``, so
    that a full disk or a closed pipe is met there (``exit_for``), not at exit as a traceback."""
    sys.stdout.flush()


_STREAM_ERRNOS = (errno.EPIPE, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)


def _stdout_failure(exc: BaseException) -> OSError | None:
    """``exc`` where it is standard output's failure: an OSError that names no file (a stream's
    errors do not; every file this project writes is named, see ``write_error``), of a kind a
    stream meets, while standard output is in that state now (a pipe whose reader left, /dev/full,
    or a file on a full disk)."""
    if not isinstance(exc, OSError) or exc.filename or exc.errno not in _STREAM_ERRNOS:
        return None
    try:
        fd = sys.__stdout__.fileno()
        mode = os.fstat(fd)
        if exc.errno == errno.EPIPE:
            poll = select.poll()
            poll.register(fd, select.POLLOUT)
            broken = any(events & select.POLLERR for _, events in poll.poll(0))
        elif stat.S_ISCHR(mode.st_mode):
            broken = mode.st_rdev == os.makedev(1, 7)  # /dev/full
        else:
            broken = stat.S_ISREG(mode.st_mode) and (exc.errno != errno.ENOSPC or os.fstatvfs(fd).f_bavail == 0)
    except (OSError, ValueError, AttributeError):
        return None
    return exc if broken else None


_ERRNO_IN_TEXT = re.compile(r"(?:os error|errno) (\d+)", re.IGNORECASE)
# What a write meets from the file system (not, say, a missing file that a library looked for
# and handled before failing for another reason).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def write_error(exc: BaseException, path: str | Path) -> OSError | None:
    """``exc``, raised while writing ``path``, as an OSError naming ``path`` where the file system is
    to blame (a full disk, a quota, a read-only folder, permissions), else None.

    Libraries report these their own ways: safetensors, tokenizers and pyarrow as text with the
    error number, ``torch.save`` as a bare RuntimeError; a write through an open file names no
    file. Where nothing says why, a file system left with no free space says it."""
    if isinstance(exc, UserError):
        return None
    number = None
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen and number is None:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno:
            found = cause.errno
        elif match := _ERRNO_IN_TEXT.search(str(cause)):
            found = int(match.group(1))
        else:
            found = errno.ENOSPC if "No space left on device" in str(cause) else None
        number = found if found in _WRITE_ERRNOS else None
        cause = cause.__cause__ or cause.__context__
    if number is None and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
        folder = Path(path).parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:
            if os.statvfs(folder).f_bavail == 0:
                number = errno.ENOSPC
        except OSError:
            pass
    if number is None:
        return None
    return OSError(number, os.strerror(number), str(path))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def written_atomically(path: str | Path, tmp: Path | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` (its folder, so its file system) for the block to write a
    file or a folder to, renamed onto ``path`` when the block ends. Where the block fails (a full
    disk), the temporary is removed and ``path`` is left as it was: nothing half-written passes for
    complete. A file-system failure is raised as an OSError naming ``path`` (``write_error``),
    which ``as_user_error`` makes one line of. A kill leaves at most the temporary (``tmp``, by
    default hidden and named by the process), which nothing reads."""
    path = Path(path)
    tmp = tmp or path.with_name(f".{path.name}.tmp{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():  # a folder is replaced as a whole: the old one out of the way first
            old = path.with_name(f".{path.name}.old{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException as exc:
        error = write_error(exc, path) if isinstance(exc, Exception) else None  # while the disk is still full
        _remove(tmp)
        if error is not None:
            raise error from exc
        raise


def write_file(path: str | Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` then ``tmp`` renamed onto ``path`` (``written_atomically``)."""
    with written_atomically(path) as tmp:
        write(tmp)


def write_text(path: str | Path, text: str) -> None:
    """``path``'s new contents, all of them or (a full disk) none: see ``written_atomically``."""
    write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def check_choice(key: str, value: object, choices: Iterable[object]) -> None:
    choices = list(choices)
    if value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise UserError(f"{key}={value!r} is not valid; choose one of {valid}")


# Upper bounds of integer settings, so that none reaches a library as a number it cannot hold
# (a 23-digit size overflows C's int64), or asks for more than any machine has.
MAX_COUNT = 1_000_000_000  # steps, epochs, rows, patience: far beyond any run
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit (accelerate's set_seed seeds numpy too)


def check_range(
    key: str,
    value: float | int,
    low: float | None = None,
    high: float | None = None,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> None:
    """Check low <= value <= high (either bound may be None; ``open_low``/``open_high``: strictly
    inside it); nan and ±inf are never in range."""
    interval = ("(-inf" if low is None else f"{'(' if open_low else '['}{low}") + ", "
    interval += "inf)" if high is None else f"{high}{')' if open_high else ']'}"
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{key}={value!r} is not a finite number; give one in {interval}")
    below = low is not None and (value <= low if open_low else value < low)
    above = high is not None and (value >= high if open_high else value > high)
    if below or above:
        raise UserError(f"{key}={value!r} is out of range; it must be in {interval}")


def check_given(key: str, value: str | None, give: str) -> None:
    """Refuse an empty or blank text setting (``--data.label_column=``), which would otherwise
    name nothing, or silently mean its default; ``give`` says what to give instead."""
    if value is not None and not value.strip():
        raise UserError(f"{key}={value!r} is empty; give {give}")


def check_kind(path: str | Path, expected: str, give: str, name: str = "") -> None:
    """Refuse ``path`` where it exists but is not a ``expected`` ("file" or "folder"), naming what it
    is and what to ``give`` instead; a missing path is left to the caller's own message."""
    path = Path(path)
    if not os.path.lexists(path) or (path.is_file() if expected == "file" else path.is_dir()):
        return
    kind = "a folder" if path.is_dir() else "a file" if path.is_file() else "a device or a pipe"
    if not path.exists():
        kind = "a broken link"
    label = f"{name} " if name else ""
    raise UserError(f"{label}{path} is {kind}, not a {expected}; give {give}")


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


def inside(path: str | Path, other: str | Path) -> bool:
    """Whether ``path`` is ``other`` or lies in it (links and ``..`` resolved)."""
    path, other = Path(path).resolve(), Path(other).resolve()
    return path == other or other in path.parents


def check_new_file(path: str | Path, option: str, overwrite: bool, inputs: Iterable[str | Path] = ()) -> None:
    """Fail now, not after the work, if output file ``path`` exists (unless ``overwrite``), is a
    folder, is one of the command's ``inputs`` or lies in one (``--overwrite`` is consent to replace
    an output, never an input), or if its folder cannot be written (a missing folder is fine: it
    is created when the file is written)."""
    path = Path(path)
    for given in inputs:
        if given and Path(given).exists() and inside(path, given):
            raise UserError(
                f"{option} {path} would overwrite {given}, which this command reads; choose another {option}"
            )
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; give a file path")
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; choose another {option} or pass --overwrite to replace it")
    check_writable_dir(path.resolve().parent, option)
