"""A simulated GPU on the CPU.

A `TorchDispatchMode` sees every tensor an operator returns. Counting each *storage* once
(views share one), rounded up to 512 bytes as the CUDA caching allocator rounds its blocks, and
forgetting it when the storage is freed, gives live device bytes. On CPU this matched the
profiler's allocator accounting within 0.3% (see ../shared/notes/facts.md). When an
allocation would exceed the capacity the mode raises `torch.OutOfMemoryError` with a CUDA-style
message, so the probe's OOM path is exercised exactly as on a real card.

What it does not see: the CUDA context, cuBLAS workspaces, NCCL buffers and fragmentation.
Those are covered by the margin on a real card.

Storages are keyed by the identity of their Python object, not `data_ptr()`: PyTorch keeps one
Python object per live storage (so views share it, and the weakref finalizer fires when the
storage itself dies), and the same key works for fake tensors, whose data pointer is always 0
(see devices/fake.py, used by `autotune plan`).
"""

from __future__ import annotations

import collections.abc
import contextlib
import copy
import itertools
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..sizes import format_size
from .oom import is_oom

BLOCK = 512
_RESERVATIONS = itertools.count()
_DEVICE = torch.ops.prim.device.default


def _rounded(nbytes: int) -> int:
    return (nbytes + BLOCK - 1) // BLOCK * BLOCK


_RESIZE_HOOKS: list = []
_original_resize = torch.UntypedStorage.resize_


def _resize_and_count(storage, size):
    result = _original_resize(storage, size)
    for counter in _RESIZE_HOOKS:
        if storage.device.type != "meta":
            counter._account(storage)
    return result


torch.UntypedStorage.resize_ = _resize_and_count


@contextlib.contextmanager
def uncounted():
    """Storage resizes inside are not device memory (a plan's real side values, see shadow.py)."""
    saved = _RESIZE_HOOKS[:]
    _RESIZE_HOOKS.clear()
    try:
        yield
    finally:
        _RESIZE_HOOKS[:] = saved


def output_tensors(out) -> list:
    """An operator's outputs flattened as `tree_flatten` flattens them (depth first, in order),
    for the cases operators return: a tensor, a tuple or list of them (and of None, nested).
    torch's `tree_flatten` makes a recursive closure on every call, a reference cycle only the
    cyclic collector frees: once per operator, it drove most of a plan's collections."""
    if isinstance(out, torch.Tensor):
        return [out]
    if type(out) in (tuple, list) or isinstance(out, tuple) and hasattr(out, "n_fields"):  # structseq: torch.return_types
        flat: list = []
        for item in out:
            if isinstance(item, torch.Tensor) or item is None:
                flat.append(item)
            else:
                flat.extend(output_tensors(item))
        return flat
    return tree_flatten(out)[0]


class LiveBytes(TorchDispatchMode):
    """Counts live storage bytes; raises OutOfMemoryError past `capacity` (None: never)."""

    def __init__(self, capacity: int | None = None):
        super().__init__()
        self.capacity = capacity
        self._live: dict[int, int] = {}
        self.current = 0
        self.peak = 0
        self.window_peak = 0  # peak since start_window(): lets a plan split a step into phases
        self.ooms = 0
        self.host = False  # while True, new storages are host memory (see SimDevice.host)
        self.timeline: list[int] | None = None  # when a list: live bytes after every growth (a plan's peak curve)

    def start_window(self) -> None:
        self.window_peak = self.current

    def rises_since(self, start: int, mark: int) -> list[int]:
        """Live bytes above `start` after each growth since the timeline held `mark` points (the
        window's peak alone where no timeline is kept): what `replay` charges again."""
        if self.timeline is None:
            return [self.window_peak - start]
        return [live - start for live in self.timeline[mark:]]

    def replay(self, rises: list[int]) -> None:
        """Charge, from the current live bytes, a computation measured before and not run again
        (an identical forward: `rises_since` of its run): the peak, the window's peak and the
        timeline follow as if it ran here; what it leaves behind, the caller allocates. For a
        plan's counter, which never raises out of memory."""
        top = self.current + max(rises, default=0)
        self.peak, self.window_peak = max(self.peak, top), max(self.window_peak, top)
        if self.timeline is not None:
            self.timeline.extend(self.current + rise for rise in rises)

    def track(self, tensor: torch.Tensor) -> None:
        if tensor.device.type == "meta" or self.host:
            return
        self._account(tensor.untyped_storage())

    def _account(self, storage) -> None:
        """Count a storage once, keyed by its StorageImpl (stable across `resize_`), at its
        current size: FSDP2 frees and re-allocates unsharded parameters by resizing storage."""
        if self.host:
            return
        key = storage._cdata
        size = _rounded(storage.nbytes()) if storage.nbytes() else 0
        known = self._live.get(key)
        if known == size or (known is None and size == 0):
            return
        grow = size - (known or 0)
        if grow > 0 and self.capacity is not None and self.current + grow > self.capacity:
            self.ooms += 1
            free = max(self.capacity - self.current, 0)
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {format_size(grow)}. Simulated GPU has a total "
                f"capacity of {format_size(self.capacity)} of which {format_size(free)} is free. "
                f"{format_size(self.current)} is allocated by PyTorch. (autotune sim device: this is "
                "a simulated out of memory.)"
            )
        self._live[key] = size
        self.current += grow
        if self.timeline is not None and grow > 0:
            self.timeline.append(self.current)
        if self.current > self.peak:
            self.peak = self.current
        if self.current > self.window_peak:
            self.window_peak = self.current
        if known is None:
            weakref.finalize(storage, self._forget, key)

    def _forget(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def hold(self, key, nbytes: int) -> None:
        """Count `nbytes` the card holds outside torch's view (a colocated rollout engine's
        share) under `key`, without allocating them here; past the capacity it is an OOM."""
        if self.capacity is not None and self.current + nbytes > self.capacity:
            self.ooms += 1
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to reserve {format_size(nbytes)} for the rollout engine; simulated GPU has "
                f"{format_size(max(self.capacity - self.current, 0))} free. (autotune sim device: simulated.)")
        self._live[key] = nbytes
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        self.window_peak = max(self.window_peak, self.current)

    def __enter__(self):
        # Storage resizes bypass the dispatcher; while counting, they count too.
        _RESIZE_HOOKS.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        _RESIZE_HOOKS.remove(self)
        return super().__exit__(*exc)

    @contextlib.contextmanager
    def resizes(self):
        """Count storage resizes without entering the mode: for a mode that counts operators'
        outputs for this counter (`count_outputs`; devices/shadow.py under fake tensors)."""
        _RESIZE_HOOKS.append(self)
        try:
            yield self
        finally:
            _RESIZE_HOOKS.remove(self)

    def count_outputs(self, out) -> None:
        for item in output_tensors(out):
            if isinstance(item, torch.Tensor):
                # A DTensor (FSDP2's sharded parameters, gradients, optimizer state) owns its
                # local shard; that shard is what this rank's device holds.
                self.track(getattr(item, "_local_tensor", item))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is _DEVICE:  # asked around every operator under fake tensors; allocates nothing
            return out
        self.count_outputs(out)
        return out


class SimDevice:
    """The Device protocol (see devices/__init__.py) on a simulated GPU."""

    kind = "sim"

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.name = f"simulated GPU ({format_size(capacity)})"
        self.count = 1
        self.torch_device = torch.device("cpu")
        self.counter = LiveBytes(capacity)

    def adopt(self, tensors) -> None:
        """Charge tensors made before tracking began (the model's weights) to the device."""
        for tensor in tensors:
            self.counter.track(tensor)

    def tracking(self):
        """Context in which allocations count against the device."""
        return self.counter

    @contextlib.contextmanager
    def host(self):
        """Inside, new tensors are host memory, not the card's: on a GPU they would be CPU tensors
        (a DataLoader's batch before it moves, the Trainer's numpy copies of eval outputs). Tensors
        made before keep counting until they die."""
        saved, self.counter.host = self.counter.host, True
        try:
            yield
        finally:
            self.counter.host = saved

    @contextlib.contextmanager
    def transfers(self):
        """While a Trainer runs: the two places where it moves data between host and device
        charge this card as a GPU would be charged. accelerate's DataLoader wrapper sends each
        batch to the device (here: a counted copy; the collator's batch is host memory), and the
        Trainer's `nested_numpify` copies eval outputs to the host (here: an uncounted copy; on a
        CPU `.cpu()` would return the device tensor itself and keep it alive)."""
        import accelerate.data_loader as loader
        import transformers.trainer_pt_utils as pt_utils

        send, numpify = loader.send_to_device, pt_utils.nested_numpify
        offload_hooks = torch.autograd.graph.save_on_cpu.__init__

        def send_to_device(batch, *args, **kwargs):
            return _map_tensors(send(batch, *args, **kwargs), torch.clone)

        def nested_numpify(tensors):
            with self.host():
                return numpify(_map_tensors(tensors, lambda t: t.detach().clone()))

        loader.send_to_device, pt_utils.nested_numpify = send_to_device, nested_numpify
        torch.autograd.graph.save_on_cpu.__init__ = self._offload_hooks()
        try:
            yield
        finally:
            loader.send_to_device, pt_utils.nested_numpify = send, numpify
            torch.autograd.graph.save_on_cpu.__init__ = offload_hooks

    def _offload_hooks(self):
        """torch's `save_on_cpu` (transformers' activation offloading) as a GPU runs it: each saved
        tensor's copy is host memory (here: a copy made inside `host()`, uncounted; on a CPU its
        own `.cpu()` would return the device tensor and keep it counted, and pinning needs an
        accelerator), and the backward's copy back is a fresh device tensor (counted)."""

        def pack(tensor):
            with self.host():
                return tensor.device, tensor.detach().clone()

        def unpack(packed):
            return packed[1].clone()

        def init(hooks, pin_memory: bool = False, device_type: str = "cuda") -> None:
            torch.autograd.graph.saved_tensors_hooks.__init__(hooks, pack, unpack)

        return init

    @contextlib.contextmanager
    def reserved(self, nbytes: int):
        """Inside, `nbytes` of the card are held by something other than this process's tensors
        (a colocated vLLM's share): counted, never allocated here."""
        key = ("reserved", next(_RESERVATIONS))  # unique while held: reservations nest (generation inside training)
        self.counter.hold(key, nbytes)
        try:
            yield
        finally:
            self.counter._forget(key)

    def reset_peak(self) -> None:
        self.counter.peak = self.counter.current

    def peak_bytes(self) -> int:
        return self.counter.peak

    def allocated_bytes(self) -> int:
        return self.counter.current

    def synchronize(self) -> None:
        pass

    def release(self) -> None:
        """Return cached memory and reset the peak; the caller drops references first."""
        self.reset_peak()

    def is_oom(self, exc: BaseException) -> bool:
        return is_oom(exc)

    def shrink(self, capacity: int) -> None:
        """Change the simulated capacity (tests use it to emulate a smaller card mid-run)."""
        self.capacity = capacity
        self.counter.capacity = capacity
        self.name = f"simulated GPU ({format_size(capacity)})"

    def memory_stats(self) -> dict:
        return {}


def _map_tensors(value, fn):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return type(value)({k: _map_tensors(v, fn) for k, v in value.items()})
    if isinstance(value, collections.abc.MutableMapping):  # a processor's BatchFeature is a UserDict, not a dict
        mapped = copy.copy(value)
        for k, v in value.items():
            mapped[k] = _map_tensors(v, fn)
        return mapped
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(v, fn) for v in value)
    return value


@contextlib.contextmanager
def counting(capacity: int | None = None):
    """Count live bytes inside a block: `with counting() as c: ...; c.peak`."""
    mode = LiveBytes(capacity)
    with mode:
        yield mode


def storage_bytes(tensors) -> int:
    """Device bytes held by `tensors`, counted as the counter counts them: each storage once,
    rounded up to the allocator's 512-byte blocks."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            seen[storage._cdata] = _rounded(storage.nbytes()) if storage.nbytes() else 0
    return sum(seen.values())
