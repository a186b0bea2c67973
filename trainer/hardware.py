"""What the machine can do: the CPU's model and the instruction sets that decide the precision, the GPU.

oneDNN reports bf16 as "supported" on any AVX512 CPU, but without AVX512-BF16 or AMX it emulates
it, slower than float32 (reported at 0.57x for the `imdb` preset's step on an Intel Xeon with
AVX512 and neither). So ``auto`` reads the CPU's own flags.
"""

from __future__ import annotations

import os
import platform
import subprocess
from functools import cache

import torch

# The flags that decide, as /proc/cpuinfo spells them (x86 "flags"; "bf16" is an Arm "Features" entry).
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "bf16")


def _proc_cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty off Linux)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


@cache
def cpu_info() -> dict:
    """{"model", "cores", "flags": {flag: bool}, "native_bf16", "flags_source"}.

    Flags come from /proc/cpuinfo where there is one, else from PyTorch's own CPU probe (cpuinfo).
    """
    fields = _proc_cpuinfo()
    model = fields.get("model name") or platform.processor() or platform.machine()
    listed = fields.get("flags", fields.get("Features"))
    if listed is not None:
        present = set(listed.split())
        flags = {flag: flag in present for flag in REPORTED_FLAGS}
        source = "/proc/cpuinfo"
    else:
        probe = torch.cpu
        flags = {
            "avx2": probe._is_avx2_supported(),
            "avx512f": probe._is_avx512_supported(),
            "avx512_bf16": probe._is_avx512_bf16_supported(),
            "amx_bf16": probe._is_amx_tile_supported(),  # AMX tiles come with AMX-BF16
            "amx_tile": probe._is_amx_tile_supported(),
            "bf16": False,
        }
        source = "torch.cpu"
    native = any(flags[flag] for flag in BF16_FLAGS)
    return {"model": model, "cores": os.cpu_count(), "flags": flags, "native_bf16": native, "flags_source": source}


def describe_cpu() -> str:
    """One line for benchmark output: the model and the flags that decide bf16."""
    info = cpu_info()
    present = [flag for flag, on in info["flags"].items() if on] or ["none of " + ", ".join(REPORTED_FLAGS)]
    bf16 = "native bf16" if info["native_bf16"] else "no native bf16"
    return f"{info['model']} ({info['cores']} cores; {', '.join(present)}; {bf16})"


def choose_precision(requested: str | None, on_cpu: bool) -> tuple[str | None, str]:
    """(precision for the Accelerator, why). Only ``auto`` is decided here; others pass through."""
    if requested != "auto":
        return requested, "as requested"
    if on_cpu:
        info = cpu_info()
        if info["native_bf16"]:
            found = ", ".join(flag for flag in BF16_FLAGS if info["flags"][flag])
            return "bf16", f"auto: the CPU runs bf16 natively ({found})"
        why = "neither AVX512-BF16 nor AMX (nor Arm BF16), so bf16 would be emulated (slower than float32)"
        return "no", f"auto: the CPU has {why}"
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", f"auto: {torch.cuda.get_device_name()} supports bf16"
        return "fp16", f"auto: {torch.cuda.get_device_name()} has no bf16"
    return "no", "auto: no CUDA device and not on a CPU"


def gpu_info(device: torch.device) -> dict | None:
    """The GPU a process trains on, its driver, CUDA and cuDNN, and how float32 is computed there
    (TF32 or not); None off CUDA."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    properties = torch.cuda.get_device_properties(index)
    driver = None
    try:  # CUDA_VISIBLE_DEVICES renumbers the GPUs; nvidia-smi names them by PCI bus or UUID
        uuid = f"GPU-{properties.uuid}" if getattr(properties, "uuid", None) else str(index)
        done = subprocess.run(
            ["nvidia-smi", f"--id={uuid}", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        driver = done.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "name": properties.name,
        "memory_gib": round(properties.total_memory / 2**30, 1),
        "capability": f"{properties.major}.{properties.minor}",
        "driver": driver,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):  # absent, or cgroup v2's "max"
        return None


def _stat(path: str, key: str) -> int:
    """One value of a cgroup's memory.stat (0 where absent)."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def available_memory() -> int | None:
    """Bytes of memory this process can still take on the CPU: what the machine has free, within
    its container's limit (cgroup v2 or v1) where there is one; None where neither can be read."""
    free = None
    try:
        import psutil

        free = psutil.virtual_memory().available
    except (ImportError, OSError):
        pass
    for folder, limit_name, usage_name, cache_name in (
        ("/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"),
        ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
    ):
        limit, usage = _read_int(f"{folder}/{limit_name}"), _read_int(f"{folder}/{usage_name}")
        if limit is not None and usage is not None and limit < 2**60:  # v1 writes "no limit" as a huge number
            room = max(limit - usage + _stat(f"{folder}/memory.stat", cache_name), 0)  # the page cache gives way
            free = room if free is None else min(free, room)
            break
    return free
