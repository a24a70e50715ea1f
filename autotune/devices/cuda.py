"""A real CUDA card. The peak that decides a fit is the caching allocator's *reserved* peak:
fragmentation is memory the job really needs."""

from __future__ import annotations

import contextlib

import torch

from ..errors import UsageError
from ..sizes import format_size
from .oom import is_oom


class CudaDevice:
    kind = "cuda"

    def __init__(self, index: int = 0, capacity: int | None = None):
        if not torch.cuda.is_available():
            raise UsageError("--device", "no CUDA device is available here", "use --device sim --gpu-memory 24GiB to simulate one")
        self.index = index
        self.torch_device = torch.device("cuda", index)
        props = torch.cuda.get_device_properties(index)
        self.total = props.total_memory
        self.name = props.name
        self.count = torch.cuda.device_count()
        if capacity is not None:
            if capacity > self.total:
                raise UsageError("--gpu-memory", f"{format_size(capacity)} is more than the card's {format_size(self.total)}", "leave it out to use the whole card")
            # Caps the caching allocator (reserved memory), not the CUDA context: an emulation.
            torch.cuda.set_per_process_memory_fraction(capacity / self.total, index)
        self.capacity = capacity or self.total

    def adopt(self, tensors) -> None:
        pass  # the allocator already counts them

    def tracking(self):
        return contextlib.nullcontext()

    def host(self):
        """CPU tensors are host memory here already: nothing to mark."""
        return contextlib.nullcontext()

    def transfers(self):
        """The Trainer moves data between host and device for real here."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def reserved(self, nbytes: int):
        """Inside, `nbytes` of the card are held as one block (a colocated rollout engine's share
        where the engine itself is not installed): the allocator counts it like any tensor."""
        block = torch.empty(nbytes, dtype=torch.uint8, device=self.torch_device)
        try:
            yield
        finally:
            del block

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.index)
        # Retries counted from here on are the steady state's (the trial resets after step 1).
        self._retries_at_reset = torch.cuda.memory_stats(self.index).get("num_alloc_retries", 0)

    def peak_bytes(self) -> int:
        return torch.cuda.max_memory_reserved(self.index)

    def allocated_bytes(self) -> int:
        return torch.cuda.memory_allocated(self.index)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.index)

    def release(self) -> None:
        """Return cached memory and reset the peak; the caller drops references first."""
        torch.cuda.empty_cache()
        self.reset_peak()

    def is_oom(self, exc: BaseException) -> bool:
        return is_oom(exc)

    def memory_stats(self) -> dict:
        stats = torch.cuda.memory_stats(self.index)
        retries = stats.get("num_alloc_retries", 0)
        allocated, reserved = stats.get("allocated_bytes.all.peak", 0), stats.get("reserved_bytes.all.peak", 0)
        return {
            "allocated_peak_bytes": allocated,
            "reserved_peak_bytes": reserved,
            "reserved_gap_bytes": reserved - allocated,
            "alloc_retries": retries,
            "steady_alloc_retries": retries - getattr(self, "_retries_at_reset", retries),
        }
