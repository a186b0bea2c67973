"""What the processes of a run agree on: the main process decides, every process follows."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from trainer.errors import UserError, as_user_error, print_error

T = TypeVar("T")


def main_decides(decide: Callable[[], T]) -> T:
    """``decide()`` run on the main process, its result on every process.

    A ``UserError`` (or an ``OSError`` it meets: a run folder on a read-only disk) raised there is
    raised on every process, so all of them stop together and the main one reports it once. On a
    shared file system the others would find the same; on node-local disks only the main one's
    verdict counts, which is what the run does.
    """
    value, problem = None, None
    if PartialState().is_main_process:
        try:
            value = decide()
        except (UserError, OSError) as exc:
            problem = str(as_user_error(exc) or exc)
    value, problem = broadcast_object_list([value, problem])
    if problem:
        raise UserError(problem, on_every_rank=True)
    return value


def from_main(value: object) -> object:
    """The main process's ``value``, on every process."""
    return broadcast_object_list([value])[0]


def say(line: str) -> None:
    """Print on the main process only (``accelerator.print`` prints once per node)."""
    if PartialState().is_main_process:
        print(line, flush=True)


def collective_failure(exc: Exception) -> UserError | None:
    """The one line for a collective step that failed for want of the other processes (gloo and
    NCCL raise RuntimeErrors that say so), else None."""
    if not (isinstance(exc, RuntimeError) and torch.distributed.is_initialized()):
        return None
    text = str(exc).lower()
    if "timed out" in text:
        return UserError(
            "this process waited for the others at a collective step longer than --train.process_timeout_minutes "
            "allows; if they were busy (the main process preparing a large corpus, a slow disk), raise it; if one "
            "stopped, its error is above"
        )
    if "closed by peer" in text or "connection reset by peer" in text:
        return UserError("another process of the run stopped, so this one stops too; its error is above")
    return None


def report(exc: UserError, debug: bool) -> None:
    """One line on stderr, from the process that failed.

    An error every process meets alike (the command line, the run folder) is printed by the main
    process alone; any other by the process that raised it, tagged with its rank when there are
    several. The launcher then stops the other processes.
    """
    state = PartialState(cpu=not torch.accelerator.is_available())  # as setup() made it, if it did
    if exc.on_every_rank and not state.is_main_process:
        return
    where = f"[rank {state.process_index}] " if state.num_processes > 1 and not exc.on_every_rank else ""
    print_error(exc, debug, where)
