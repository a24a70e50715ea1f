"""A planning device: the sim device's live-bytes counter over PyTorch fake tensors.

Under `FakeTensorMode` every operator computes only shapes, dtypes and strides, so the real
training step of a 70B model runs on a laptop CPU without allocating its memory; the same
`LiveBytes` counter the sim device uses sees every storage those operators create and free.
It never raises out of memory: a plan measures peaks, the frontier is computed afterwards.

Models for it are built on the `meta` device and then `materialise`d as fake tensors (building
under FakeTensorMode and then calling `.to()` or peft's `get_peft_model` fails; a fake `cuda`
device aborts on a CPU-only build, so fake tensors live on the `cpu` device).
"""

from __future__ import annotations

import contextlib

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from .shadow import KnownData, KnownValues, known_values_are_readable
from .sim import LiveBytes, SimDevice


class FakeDevice(SimDevice):
    """The Device protocol with fake tensors; `capacity` is informational (no OOM is raised)."""

    kind = "fake"

    def __init__(self, capacity: int = 0):
        super().__init__(capacity)
        self.name = "fake tensors on the CPU (autotune plan)"
        self.counter = LiveBytes(None)
        self.mode = FakeTensorMode(allow_non_fake_inputs=True)
        self.known = KnownValues(self.mode, counter=self.counter)
        self.known_data = KnownData(self.known)

    @contextlib.contextmanager
    def tracking(self):
        # The known-values mode counts for the counter: it sees each operator before the fake
        # mode and counts the fake outputs it returns, the known values of small tensors
        # answering data-dependent operators between (one Python mode for both: cheaper).
        with one_thread(), self.mode, self.known, self.counter.resizes(), self.known_data, known_values_are_readable(self.known):
            yield self.counter

    def shrink(self, capacity: int) -> None:
        self.capacity = capacity

    def reset_peak(self) -> None:
        # The timeline, when kept, starts where the peak does: it is the peak's window, event by event.
        super().reset_peak()
        if self.counter.timeline is not None:
            self.counter.timeline = [self.counter.current]

    @contextlib.contextmanager
    def timeline(self):
        """Keep the live bytes after every allocation from each `reset_peak` on (see plan/frontier.py)."""
        self.counter.timeline = [self.counter.current]
        try:
            yield
        finally:
            self.counter.timeline = None


@contextlib.contextmanager
def one_thread():
    """The only real computation under fake tensors is the known values' (shadow.py): token ids,
    masks, labels, a few hundred thousand elements at most. Above PyTorch's grain size (32,768
    elements) those operators start the intra-op thread pool, whose start and spinning cost far
    more than the work: on 2 cores, 30 ms for an evaluation's batch of 18 x 2048 tokens against
    3 ms on one thread, 0.45 s of a 7B LoRA plan against 0.07 s. Values are the same either way
    (integers; the float ones are the small grids and positions)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def materialise(model: torch.nn.Module, device: FakeDevice) -> None:
    """Replace a meta-device model's parameters and buffers with fake tensors on the CPU, in
    place, keeping tied weights tied. (`Module.to_empty` swaps tensor objects instead, which
    breaks the one-Python-object-per-storage identity the counter keys on.) Buffers such as
    rotary `inv_freq` stay uninitialised: fake tensors have no values, only sizes."""
    made: dict[int, torch.Tensor] = {}
    with device.mode:
        for module in model.modules():
            for name, param in list(module._parameters.items()):
                if param is not None:
                    if id(param) not in made:
                        fake = torch.empty_like(param, device=device.torch_device)
                        made[id(param)] = torch.nn.Parameter(fake, requires_grad=param.requires_grad)
                    module._parameters[name] = made[id(param)]
            for name, buffer in list(module._buffers.items()):
                if buffer is not None:
                    if id(buffer) not in made:
                        made[id(buffer)] = torch.empty_like(buffer, device=device.torch_device)
                    module._buffers[name] = made[id(buffer)]
