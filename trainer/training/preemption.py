"""Preemption: SIGTERM / SIGUSR1 ask every process to finish its step, checkpoint and exit.

The signal may reach the processes at different moments (or only some of them). One process
reads its flag after every optimizer step; several combine theirs at every logging step
(``train.log_every_steps``, where the loop waits for the device anyway), so all of them stop after
the same step and no other step waits for the device.
SIGUSR1 is the time-limit warning (``#SBATCH --signal=USR1@N``, or launch/slurm.sbatch passing on
its ``B:USR1``): under SLURM the main process then requeues the job (``scontrol requeue``), and
the requeued job resumes with ``--resume auto``. SIGTERM is what ``scancel`` and a
preemption send: the run checkpoints and stops, and is not requeued by us (a cancelled job must
stay cancelled; SLURM requeues a preempted one itself where its partition says so). When both
came, SIGTERM wins.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import torch

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preemption:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous = {}

    def install(self) -> None:
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum != signal.SIGTERM:  # SIGTERM, once come, stays
            self.signum = signum

    def requested(self, accelerator, agree: bool = True) -> int | None:
        """The signal number if any process got one (the same answer on every process; SIGTERM
        over SIGUSR1, which has the lower number). With several processes, a collective that every
        process must call at the same step, and only where ``agree``: else None."""
        if accelerator.num_processes == 1:
            return self.signum
        if not agree:
            return None
        flags = accelerator.reduce(torch.tensor([self.signum or 0], device=accelerator.device), "max")
        return int(flags.item()) or None

    @staticmethod
    def requeue() -> str | None:
        """Requeue this SLURM job; returns what happened, or None outside SLURM."""
        job = slurm_job()
        if not job:
            return None
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if result.returncode == 0:
            return f"requeued SLURM job {job}"
        print(f"scontrol requeue {job} failed: {result.stderr.strip()}", file=sys.stderr)
        return f"could not requeue SLURM job {job}"


def slurm_job() -> str | None:
    """This SLURM job, as scontrol names it: an array task is ``<array job id>_<task id>``.

    The first task of an array has the array's own job id as its ``SLURM_JOB_ID``, and that id
    alone names every task of the array: requeueing it would requeue them all.
    """
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None
