"""Loaded by tests through PYTHONPATH: makes one process fail at a chosen moment.

The faults hook the trainer's own seams, never a dependency's call path: ``trainer.loop.
optimizer_step`` (the end of every optimizer step) and ``os.replace`` of a checkpoint's temporary
folder. Each fault prints ``injected fault: ...`` on stderr (and appends it to $FAULT_MARKER when
set) as it fires, so a test can tell a fault that fired from one that silently did nothing.

FAULT_RANK: the rank that fails ("0" also means a process started without a launcher); or
FAULT_SLURM_NODE: the SLURM node id (SLURM_NODEID) whose processes fail.
FAULT_AT_STEP=n with FAULT_KIND=raise (RuntimeError), kill (SIGKILL) or nan (every gradient
becomes nan): in optimizer step n of this process's run.
FAULT_KILL_IN_SAVE=n: SIGKILL while the n-th checkpoint is being put in place (after its files
are written, before the rename).
FAULT_SLOW_STEP=seconds (every rank): see below.
"""

import os
import signal
import sys

MARK = "injected fault"


def _fired(what: str) -> None:
    line = f"{MARK}: {what} (rank {os.environ.get('RANK', '0')}, pid {os.getpid()})\n"
    sys.stderr.write(line)
    sys.stderr.flush()
    if os.environ.get("FAULT_MARKER"):
        with open(os.environ["FAULT_MARKER"], "a") as f:
            f.write(line)


def _wrap_optimizer_step(make_wrapper) -> None:
    """Replace ``trainer.loop.optimizer_step``, which ``train_step`` looks up at each call."""
    import trainer.loop

    trainer.loop.optimizer_step = make_wrapper(trainer.loop.optimizer_step)


_rank = os.environ.get("FAULT_RANK") is not None and os.environ.get("RANK", "0") == os.environ["FAULT_RANK"]
_node = (
    os.environ.get("FAULT_SLURM_NODE") is not None and os.environ.get("SLURM_NODEID") == os.environ["FAULT_SLURM_NODE"]
)
if _rank or _node:
    if os.environ.get("FAULT_AT_STEP"):
        at_step, kind = int(os.environ["FAULT_AT_STEP"]), os.environ.get("FAULT_KIND", "raise")

        def _faulty(optimizer_step):
            calls = [0]

            def faulty_optimizer_step(run):
                calls[0] += 1
                if calls[0] != at_step:
                    return optimizer_step(run)
                _fired(f"{kind} at optimizer step {at_step}")
                if kind == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if kind == "nan":  # a diverging step: every gradient nan, as a nan loss would leave them
                    for p in run.model.parameters():
                        if p.grad is not None:
                            p.grad.fill_(float("nan"))
                    return optimizer_step(run)
                raise RuntimeError(f"injected fault on rank {os.environ.get('RANK', '0')}")

            return faulty_optimizer_step

        _wrap_optimizer_step(_faulty)

    if os.environ.get("FAULT_KILL_IN_SAVE"):
        _replace = os.replace
        _saves = [0]

        def _faulty_replace(src, dst, *args, **kwargs):
            if ".tmp-step-" in os.fspath(src):
                _saves[0] += 1
                if _saves[0] == int(os.environ["FAULT_KILL_IN_SAVE"]):
                    _fired(f"kill while checkpoint {_saves[0]} is put in place")
                    os.kill(os.getpid(), signal.SIGKILL)
            return _replace(src, dst, *args, **kwargs)

        os.replace = _faulty_replace

# FAULT_SLOW_STEP=seconds: every optimizer step of that rank takes that much longer (a job that runs
# long enough to be signalled), in the first run of a SLURM job only (not once it is requeued).
if os.environ.get("FAULT_SLOW_STEP") and os.environ.get("SLURM_RESTART_COUNT", "0") == "0":
    import time

    _delay = float(os.environ["FAULT_SLOW_STEP"])

    def _slow(optimizer_step):
        said = []

        def slow_optimizer_step(run):
            if not said:
                said.append(_fired(f"every optimizer step slowed by {_delay}s"))
            time.sleep(_delay)
            return optimizer_step(run)

        return slow_optimizer_step

    _wrap_optimizer_step(_slow)
