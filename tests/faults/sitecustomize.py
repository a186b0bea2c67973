"""Loaded by tests through PYTHONPATH: makes one launched worker crash mid-training.

With FAULT_RANK=r and FAULT_AT_STEP=n, the worker of rank r raises RuntimeError in its n-th
gradient clipping call (once per optimizer step), while the other ranks wait in a collective.
"""

import os

if os.environ.get("RANK") is not None and os.environ.get("RANK") == os.environ.get("FAULT_RANK"):
    import torch

    _clip = torch.nn.utils.clip_grad_norm_
    _calls = [0]

    def _faulty_clip(*args, **kwargs):
        _calls[0] += 1
        if _calls[0] == int(os.environ.get("FAULT_AT_STEP", "3")):
            raise RuntimeError(f"injected fault on rank {os.environ['RANK']}")
        return _clip(*args, **kwargs)

    torch.nn.utils.clip_grad_norm_ = _faulty_clip
