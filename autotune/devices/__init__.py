"""Devices behind one small interface.

A device has `kind`, `name`, `capacity` (bytes), `count` (cards on this host), `torch_device`,
and: `adopt(tensors)`, `tracking()` (a context in which allocations count), `host()` (a context
in which new tensors are host memory), `transfers()` (the Trainer's host/device moves, charged as
on a GPU), `reset_peak()`,
`peak_bytes()`, `allocated_bytes()`, `synchronize()`, `release()`, `is_oom(exc)`,
`memory_stats()`, `reserved(nbytes)` (a context in which the card holds `nbytes` outside this
process's tensors: a colocated rollout engine's share).
"""

from __future__ import annotations

import torch

from ..errors import UsageError
from .cuda import CudaDevice
from .oom import is_oom, short_message
from .sim import SimDevice

DEVICE_KINDS = ("cuda", "sim")


def default_device_kind() -> str:
    return "cuda" if torch.cuda.is_available() else "none"


def available_kind(kind: str | None) -> str:
    """The kind a probe runs on (None: cuda where available), refused where it cannot run: also
    before trial workers start, whose own failure to open the card reads as a crash."""
    kind = kind or default_device_kind()
    if kind == "none" or (kind == "cuda" and not torch.cuda.is_available()):
        raise UsageError("--device", "no CUDA device is available here", "use --device sim --gpu-memory 24GiB to probe a simulated GPU")
    return kind


def make_device(kind: str | None, gpu_memory: int | None):
    kind = available_kind(kind)
    if kind == "cuda":
        return CudaDevice(0, gpu_memory)
    if kind == "sim":
        if gpu_memory is None:
            raise UsageError("--gpu-memory", "the sim device needs a capacity", "add --gpu-memory 24GiB (or the card you want to simulate)")
        return SimDevice(gpu_memory)
    raise UsageError("--device", f"unknown device {kind!r}", f"choose one of {', '.join(DEVICE_KINDS)}")


__all__ = ["CudaDevice", "SimDevice", "available_kind", "make_device", "is_oom", "short_message", "DEVICE_KINDS"]
