"""Recognise out-of-memory errors, including the forms that never say "out of memory"."""

from __future__ import annotations

import torch

# Substrings of RuntimeError messages that mean the device ran out of memory.
_OOM_MARKERS = (
    # torch.OutOfMemoryError's own text, and the CUDA runtime's (e.g. from a raw cudaMalloc).
    "CUDA out of memory",
    "CUDA error: out of memory",
    # cuBLAS cannot allocate its workspace or a handle under memory pressure.
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUBLAS_STATUS_NOT_INITIALIZED",
    # cuDNN reports some allocation failures as "not supported"; accelerate treats it as OOM too.
    "CUDNN_STATUS_NOT_SUPPORTED",
    "CUDNN_STATUS_ALLOC_FAILED",
    # CPU allocator (a host-memory OOM while, e.g., offloading).
    "DefaultCPUAllocator: can't allocate memory",
    # The simulated device's own message also contains " out of memory."; kept explicit.
    "out of memory.",
)


def is_oom(exc: BaseException) -> bool:
    """An out-of-memory error, or one raised from one (`raise ... from`): transformers' BatchFeature
    re-raises whatever fails while it makes a tensor as a ValueError, an allocation's OOM included."""
    for _ in range(8):  # a bounded walk: a cause chain is short
        if exc is None:
            return False
        if isinstance(exc, torch.OutOfMemoryError):
            return True
        if isinstance(exc, RuntimeError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
            if any(marker in exc.args[0] for marker in _OOM_MARKERS):
                return True
        exc = exc.__cause__
    return False


def short_message(exc: BaseException, limit: int = 240) -> str:
    """First line of an error, bounded: enough for a recipe, never a traceback."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"
