"""Loaded by tests through PYTHONPATH: makes one process fail at a chosen moment, or behave as on a GPU.

The faults hook the trainer's own seams, never a dependency's call path: ``trainer.training.loop.
optimizer_step`` (the end of every optimizer step) and ``os.replace`` of a checkpoint's temporary
folder. Each fault prints ``injected fault: ...`` on stderr (and appends it to $FAULT_MARKER when
set) as it fires, so a test can tell a fault that fired from one that silently did nothing.

FAULT_RANK: the rank that fails ("0" also means a process started without a launcher); or
FAULT_SLURM_NODE: the SLURM node id (SLURM_NODEID) whose processes fail.
FAULT_AT_STEP=n with FAULT_KIND=raise (RuntimeError), kill (SIGKILL) or nan (every gradient
becomes nan): in optimizer step n of this process's run.
FAULT_SLOW_PREPARE=seconds: loading the data (``trainer.data.preparation.load_raw_splits``, which the main
process runs while the others wait at a collective step) takes that much longer.
FAULT_KILL_IN_SAVE=n: SIGKILL while the n-th checkpoint is being put in place (after its files
are written, before the rename).
FAULT_SLOW_STEP=seconds (every rank): see below.
EMULATE_CUDNN_WEIGHTS=1 (every process): recurrent layers hold their weights as cuDNN does, see below.
EMULATE_DEVICE=1: integer tensors moved with ``.to(device)`` are on an accelerator, see below.
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
    """Replace ``trainer.training.loop.optimizer_step``, which ``train_step`` looks up at each call."""
    import trainer.training.loop

    trainer.training.loop.optimizer_step = make_wrapper(trainer.training.loop.optimizer_step)


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

    if os.environ.get("FAULT_SLOW_PREPARE"):
        import time

        import trainer.data.preparation

        _load, _pause = trainer.data.preparation.load_raw_splits, float(os.environ["FAULT_SLOW_PREPARE"])

        def _slow_load(*args, **kwargs):
            _fired(f"loading the data slowed by {_pause}s")
            time.sleep(_pause)
            return _load(*args, **kwargs)

        trainer.data.preparation.load_raw_splits = _slow_load

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


# EMULATE_CUDNN_WEIGHTS=1: on a GPU, nn.LSTM/GRU/RNN keep all their weights as views into one buffer,
# which torch._cudnn_rnn_flatten_weight allocates anew (and copies into) at every flatten_parameters
# call, from the constructor and each .to()/_apply on. The same here, on any device.
def flatten_as_cudnn(self) -> None:
    import torch

    weights = self._flat_weights
    if len(weights) != len(self._flat_weights_names) or not all(isinstance(w, torch.Tensor) for w in weights):
        return
    if len({w.dtype for w in weights}) > 1:
        return
    buffer = torch.empty(sum(w.numel() for w in weights), dtype=weights[0].dtype, device=weights[0].device)
    offset = 0
    with torch.no_grad():
        for w in weights:
            buffer[offset : offset + w.numel()].copy_(w.reshape(-1))
            w.set_(buffer.untyped_storage(), offset, w.size())
            offset += w.numel()
    flatten_as_cudnn.calls += 1
    if flatten_as_cudnn.calls == 1 and os.environ.get("EMULATE_CUDNN_WEIGHTS"):
        sys.stderr.write("emulating cuDNN: recurrent weights are views into one buffer\n")


flatten_as_cudnn.calls = 0
if os.environ.get("EMULATE_CUDNN_WEIGHTS"):
    from torch import nn

    nn.RNNBase.flatten_parameters = flatten_as_cudnn

# COUNT_SYNCS=file: what would make the host wait for a GPU, counted on the CPU (and on a GPU, also
# what torch.cuda.set_sync_debug_mode reports, as "cuda file:line"). Every call of a
# tensor operation that copies a value to the host (item, bool, int, tolist, nonzero, boolean-mask
# indexing, ...) made from the trainer's own code, outside the data pipeline (trainer/data/
# works on host tensors), is recorded with its file:line, between consecutive optimizer steps
# (trainer.training.loop.optimizer_step). At exit the file gets one JSON list per step: [[where, ...], ...].
SYNCING = {"item", "__bool__", "__int__", "__float__", "__index__", "tolist", "numpy", "nonzero", "cpu"}
SYNCING |= {"masked_select", "unique", "argwhere", "nonzero_static", "repeat_interleave"}
if os.environ.get("COUNT_SYNCS"):
    import atexit
    import json

    import torch
    from torch.overrides import TorchFunctionMode

    _trainer = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "trainer")
    _steps = [[]]

    def _caller() -> str | None:
        frame = sys._getframe(2)
        while frame is not None:
            name = frame.f_code.co_filename
            if name.startswith(_trainer + os.sep):
                return (
                    None
                    if name.startswith(os.path.join(_trainer, "data", ""))
                    else f"{name[len(_trainer) + 1 :]}:{frame.f_lineno}"
                )
            if os.sep + "torch" + os.sep not in name and name != __file__:
                return None  # a dependency's own code (accelerate, tqdm, ...), or the tests'
            frame = frame.f_back
        return None

    class _CountSyncs(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            masked = name == "__getitem__" and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool
                for i in (args[1] if isinstance(args[1], tuple) else (args[1],))
            )
            if name in SYNCING or masked:
                where = _caller()
                if where:
                    _steps[-1].append(f"{where} {name}")
            return func(*args, **(kwargs or {}))

    _CountSyncs().__enter__()  # for the whole process

    def _cuda_syncs() -> None:
        """On a GPU, CUDA's own count too: every synchronizing call warns, and is recorded."""
        import warnings

        torch.cuda.set_sync_debug_mode("warn")
        warnings.filterwarnings("always", message=".*synchroniz")
        shown = warnings.showwarning

        def record(message, category, filename, lineno, *args, **kwargs):
            if "synchroniz" in str(message):
                _steps[-1].append(f"cuda {os.path.basename(filename)}:{lineno}")
            else:
                shown(message, category, filename, lineno, *args, **kwargs)

        warnings.showwarning = record

    def _counted(optimizer_step):
        def counted_optimizer_step(run):
            if len(_steps) == 1 and run.accelerator.device.type == "cuda":
                _cuda_syncs()  # from the first step on: setting up syncs by design
            _steps.append([])
            return optimizer_step(run)

        return counted_optimizer_step

    _wrap_optimizer_step(_counted)

    def _write_syncs() -> None:
        with open(os.environ["COUNT_SYNCS"], "w") as f:
            json.dump(_steps, f)

    atexit.register(_write_syncs)


# EMULATE_DEVICE=1: an integer tensor (ids, lengths, labels) moved with .to(<device>) or .cuda() counts
# as on an accelerator, and so does every tensor computed from it, until .cpu() brings a copy back.
# The operations that CUDA runs on host tensors only refuse such tensors as they do on a GPU:
# pack_padded_sequence's lengths must be a CPU int64 tensor.
if os.environ.get("EMULATE_DEVICE"):
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_flatten

    def _tensors(values) -> list:
        return [v for v in tree_flatten(values)[0] if isinstance(v, torch.Tensor)]

    def _on_device(values) -> bool:
        return any(getattr(t, "_emulated_device", False) for t in _tensors(values))

    def _moved(name: str, args: tuple, kwargs: dict) -> bool:
        """``tensor.to(device, ...)`` or ``.cuda()`` of an integer tensor that is not a parameter."""
        if name not in ("to", "cuda") or not isinstance(args[0], torch.Tensor) or args[0].is_floating_point():
            return False
        if isinstance(args[0], torch.nn.Parameter):
            return False
        target = [*args[1:2], kwargs.get("device")]
        return name == "cuda" or any(isinstance(t, (str, torch.device)) for t in target if t is not None)

    class _EmulateDevice(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            if name == "_pack_padded_sequence" and _on_device(args[1]):
                _fired("pack_padded_sequence given lengths on the (emulated) accelerator")
                raise RuntimeError("'lengths' argument should be a 1D CPU int64 tensor, but got 1D cuda:0 Long tensor")
            out = func(*args, **kwargs)
            if name == "cpu":
                return out.clone() if out is args[0] else out  # a host copy, not marked
            if _moved(name, args, kwargs) or _on_device((args, kwargs)):
                if out is args[0] and name in ("to", "cuda"):
                    out = out.clone()  # the host tensor stays a host tensor
                for t in _tensors(out):
                    t._emulated_device = True
            return out

    _EmulateDevice().__enter__()  # for the whole process
    if os.environ.get("FAULT_MARKER"):  # so that a test can tell that the emulation was on
        with open(os.environ["FAULT_MARKER"], "a") as f:
            f.write(f"emulating an accelerator in {' '.join(sys.argv)[-200:]}\n")
