"""Preemption: SIGTERM / SIGUSR1 ask every process to finish its step, checkpoint and exit.

The signal may reach the processes at different moments (or only some of them); the flag is
combined across processes at every optimizer step, so all of them stop after the same step.
Under SLURM the main process then requeues the job (``scontrol requeue``), and the requeued job
resumes with ``--checkpoint.resume=auto``.
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
        self.signum = signum

    def requested(self, accelerator) -> int | None:
        """The signal number if any process got one (the same answer on every process)."""
        local = torch.tensor([self.signum or 0], device=accelerator.device)
        if accelerator.num_processes > 1:
            local = accelerator.reduce(local, "max")
        signum = int(local.item())
        return signum or None

    @staticmethod
    def requeue() -> str | None:
        """Requeue this SLURM job; returns what happened, or None outside SLURM."""
        job = os.environ.get("SLURM_JOB_ID")
        if not job:
            return None
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if result.returncode == 0:
            return f"requeued SLURM job {job}"
        print(f"scontrol requeue {job} failed: {result.stderr.strip()}", file=sys.stderr)
        return f"could not requeue SLURM job {job}"
