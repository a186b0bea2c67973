"""Loaded by tests through PYTHONPATH: makes one process fail at a chosen moment.

FAULT_RANK: the rank that fails ("0" also means a process started without a launcher); or
FAULT_SLURM_NODE: the SLURM node id (SLURM_NODEID) whose processes fail.
FAULT_AT_STEP=n with FAULT_KIND=raise (RuntimeError), kill (SIGKILL) or nan (every gradient
becomes nan): in the n-th gradient clipping call, i.e. during optimizer step n.
FAULT_KILL_IN_SAVE=n: SIGKILL while the n-th checkpoint is being put in place (after its files
are written, before the rename).
FAULT_SLOW_STEP=seconds (every rank): see below.
"""

import os
import signal

_rank = os.environ.get("FAULT_RANK") is not None and os.environ.get("RANK", "0") == os.environ["FAULT_RANK"]
_node = (
    os.environ.get("FAULT_SLURM_NODE") is not None and os.environ.get("SLURM_NODEID") == os.environ["FAULT_SLURM_NODE"]
)
if _rank or _node:
    if os.environ.get("FAULT_AT_STEP"):
        import torch

        _clip = torch.nn.utils.clip_grad_norm_
        _calls = [0]

        def _faulty_clip(*args, **kwargs):
            _calls[0] += 1
            if _calls[0] == int(os.environ["FAULT_AT_STEP"]):
                kind = os.environ.get("FAULT_KIND", "raise")
                if kind == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if kind == "nan":  # a diverging step: every gradient nan, as a nan loss would leave them
                    parameters = args[0] if args else kwargs["parameters"]
                    parameters = list(parameters) if not isinstance(parameters, torch.Tensor) else [parameters]
                    for p in parameters:
                        if p.grad is not None:
                            p.grad.fill_(float("nan"))
                    return _clip(parameters, *args[1:], **kwargs)
                raise RuntimeError(f"injected fault on rank {os.environ.get('RANK', '0')}")
            return _clip(*args, **kwargs)

        torch.nn.utils.clip_grad_norm_ = _faulty_clip

    if os.environ.get("FAULT_KILL_IN_SAVE"):
        _replace = os.replace
        _saves = [0]

        def _faulty_replace(src, dst, *args, **kwargs):
            if ".tmp-step-" in os.fspath(src):
                _saves[0] += 1
                if _saves[0] == int(os.environ["FAULT_KILL_IN_SAVE"]):
                    os.kill(os.getpid(), signal.SIGKILL)
            return _replace(src, dst, *args, **kwargs)

        os.replace = _faulty_replace

# FAULT_SLOW_STEP=seconds: every optimizer step of that rank takes that much longer (a job that runs
# long enough to be signalled), in the first run of a SLURM job only (not once it is requeued).
if os.environ.get("FAULT_SLOW_STEP") and os.environ.get("SLURM_RESTART_COUNT", "0") == "0":
    import time

    import torch

    _unslowed = torch.nn.utils.clip_grad_norm_

    def _slow_clip(*args, **kwargs):
        time.sleep(float(os.environ["FAULT_SLOW_STEP"]))
        return _unslowed(*args, **kwargs)

    torch.nn.utils.clip_grad_norm_ = _slow_clip
