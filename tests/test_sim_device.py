import pytest
import torch

from autotune.devices import SimDevice, is_oom
from autotune.devices.sim import LiveBytes, counting
from autotune.trials.trial import run_train_trial


def test_counts_storage_once_and_rounds_to_512():
    with counting() as c:
        x = torch.empty(10, dtype=torch.uint8)  # 10 bytes -> one 512-byte block
        view = x[2:5]
        assert c.current == 512
        y = torch.empty(513, dtype=torch.uint8)
        assert c.current == 512 + 1024
        del x, view, y
    assert c.current == 0 and c.peak == 1536


def test_raises_cuda_style_oom_and_does_not_count_the_failed_allocation():
    mode = LiveBytes(capacity=4096)
    with mode:
        keep = torch.empty(2048, dtype=torch.uint8)
        with pytest.raises(torch.OutOfMemoryError) as info:
            torch.empty(4096, dtype=torch.uint8)
    assert " out of memory." in str(info.value) and is_oom(info.value)
    assert mode.current == 2048
    del keep


def test_is_oom_recognises_messages_without_out_of_memory():
    assert is_oom(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert is_oom(RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in a non-contiguous input."))
    assert not is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_oom(ValueError("CUDA out of memory"))  # only RuntimeErrors carry the allocator's text


def test_is_oom_recognises_an_oom_transformers_re_raised():
    """A processor's BatchFeature makes its tensors under a try that re-raises any failure as a
    ValueError `from` it: an OOM there (the sim counts the host-side processor call of TRL's GRPO)
    is still an OOM, and a ValueError of its own is not."""
    import numpy as np
    from transformers import BatchFeature

    with LiveBytes(capacity=4096), pytest.raises(ValueError) as info:
        BatchFeature({"pixel_values": np.zeros((64, 64), dtype=np.float32)}, tensor_type="pt")
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError) and is_oom(info.value)
    try:
        raise ValueError("bad shape") from KeyError("pixel_values")
    except ValueError as plain:
        assert not is_oom(plain)


def test_memory_returns_to_baseline_after_100_ooms(make_workload):
    """100 OOMs in a row in one process: live bytes return to the pre-trial baseline each time."""
    workload = make_workload("tiny-llama", 6 * 2**20, max_length=64)
    device = workload.device
    baseline = device.allocated_bytes()
    assert baseline > 0  # the model's weights are charged
    for _ in range(100):
        result = run_train_trial(workload, batch_size=512, steps=3, budget=device.capacity)
        assert result.outcome == "oom"
        assert device.allocated_bytes() == baseline
    assert device.counter.ooms == 100
    fit = run_train_trial(workload, batch_size=1, steps=3, budget=device.capacity)
    assert fit.outcome == "fit" and device.allocated_bytes() == baseline


def test_optimizer_state_does_not_leak_between_trials(make_workload):
    workload = make_workload("tiny-llama", 256 * 2**20)
    first = run_train_trial(workload, 2, 3, workload.device.capacity)
    second = run_train_trial(workload, 2, 3, workload.device.capacity)
    assert first.peak_bytes == second.peak_bytes
    assert first.leaked_bytes is None and second.leaked_bytes is None


def test_peak_is_affine_in_batch_size(make_workload):
    workload = make_workload("tiny-qwen2", 512 * 2**20)
    peaks = [run_train_trial(workload, b, 3, workload.device.capacity).peak_bytes for b in (1, 2, 3, 5)]
    slope = peaks[1] - peaks[0]
    assert slope > 0
    for b, peak in zip((1, 2, 3, 5), peaks):
        assert abs(peak - (peaks[0] + slope * (b - 1))) <= 0.01 * peak


def test_non_memory_errors_are_reported_not_raised(make_workload):
    workload = make_workload("tiny-llama", 256 * 2**20)
    workload.make_batch = lambda b: {"input_ids": torch.zeros(b, 3, 3, dtype=torch.long)}  # wrong shape
    result = run_train_trial(workload, 1, 3, workload.device.capacity)
    assert result.outcome == "error" and result.message


def test_shrink_changes_capacity():
    device = SimDevice(2**30)
    device.shrink(2**20)
    assert device.capacity == device.counter.capacity == 2**20


def test_eval_keeping_logits_costs_more_than_loss_only(make_workload):
    from autotune.trials.trial import run_eval_trial

    workload = make_workload("tiny-qwen2", 512 * 2**20)
    cap = workload.device.capacity
    loss_only = run_eval_trial(workload, 4, 4, cap, {"prediction_loss_only": True})
    kept = run_eval_trial(workload, 4, 4, cap, {"prediction_loss_only": False})
    flushed = run_eval_trial(workload, 4, 4, cap, {"prediction_loss_only": False, "eval_accumulation_steps": 1})
    logits_step = 4 * 64 * workload.vocab_size * 2  # batch x seq x vocab x bf16
    assert kept.peak_bytes - loss_only.peak_bytes >= 3 * logits_step  # three steps' logits held, then a fourth
    assert flushed.peak_bytes < kept.peak_bytes
    assert workload.model.training  # eval trials put the model back in train mode


def test_a_processor_batch_made_on_the_host_counts_once_it_moves_to_the_card():
    """A vision collator returns a processor's BatchFeature (a UserDict, not a dict): accelerate's
    copy to the device must count its tensors as a GPU holds them, as it counts a plain dict's."""
    import accelerate.data_loader as loader
    from transformers.feature_extraction_utils import BatchFeature

    device = SimDevice(2**30)
    with device.tracking(), device.transfers():
        with device.host():
            batch = BatchFeature({"pixel_values": torch.zeros(256, 1024), "input_ids": torch.zeros(4, 8, dtype=torch.long)})
        assert device.allocated_bytes() == 0
        moved = loader.send_to_device(batch, torch.device("cpu"))
        assert isinstance(moved, BatchFeature)
        assert device.allocated_bytes() == 256 * 1024 * 4 + 512  # each storage rounded up to 512 bytes
