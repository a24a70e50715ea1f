import os

# Under pytest-xdist (scripts/test.sh runs `-n 2`) each worker is one process per core: a second
# torch thread per worker, or per process a test starts, would only contend for the same cores.
# Set before torch is imported so the workers' subprocesses inherit it.
XDIST = "PYTEST_XDIST_WORKER" in os.environ
if XDIST:
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1 if XDIST else min(2, os.cpu_count() or 1))

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


def pytest_collection_modifyitems(config, items):
    """The longest tests (marked slow) first: under xdist a long test dealt out last would leave
    the other worker idle at the end. Stable otherwise: the files' order is kept."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="module")
def vision_process():
    """qwen-vl-utils' `vision_process` over stand-ins for what it imports and cannot load here
    (tests/qwen_vl_utils_stand_ins.py); skipped without qwen-vl-utils."""
    import importlib.util
    import sys

    if importlib.util.find_spec("qwen_vl_utils") is None:
        pytest.skip("qwen-vl-utils is not installed (pip install --no-deps qwen-vl-utils)")
    from qwen_vl_utils_stand_ins import stand_ins

    saved = {name: sys.modules.get(name) for name in stand_ins()}
    sys.modules.update(stand_ins())
    try:
        from qwen_vl_utils import vision_process as vp
        vp.FORCE_QWENVL_VIDEO_READER = "decord"
        vp.get_video_reader_backend.cache_clear()
        yield vp
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for name in [n for n in sys.modules if n.startswith("qwen_vl_utils")]:
            del sys.modules[name]  # imported over the stand-ins: not for anyone else
