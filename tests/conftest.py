import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))

# Import the Trainer once, here, before any trial: its first import (transformers.trainer -> peft ->
# bitsandbytes) logs a warning whose argument is an exception, pytest's log capture keeps that record
# for the test, and the exception's traceback pins the frames of the trial that imported it, its
# optimizer included: the first measured step of a session then counted a dead optimizer's state.
import transformers.trainer  # noqa: E402,F401


@pytest.fixture
def make_workload():
    """Build a tiny workload on a simulated GPU: make_workload("tiny-llama", capacity, max_length=..., **spec)."""
    from autotune.devices import SimDevice
    from autotune.model.source import resolve
    from autotune.spec import ProbeSpec
    from autotune.model.workload import load_workload

    def build(name: str, capacity: int, max_length: int = 64, **spec_kwargs):
        spec = ProbeSpec(max_length=max_length, model_config=name, device="sim", gpu_memory=capacity, **spec_kwargs)
        device = SimDevice(capacity)
        return load_workload(resolve(None, name), spec, device)

    return build
