"""QLoRA (bitsandbytes 4-bit language model + LoRA) and the --optim choices on the sim device."""

import sys

import pytest
import torch

from autotune.errors import UsageError
from autotune.trials.trial import run_train_trial


def test_qlora_quantizes_only_the_language_model_and_trains(make_workload):
    import bitsandbytes as bnb

    workload = make_workload("tiny-qwen2-vl", 1 << 30, max_length=32, max_pixels=3136, train_type="qlora", optim="adamw_bnb_8bit")
    four_bit = {n for n, m in workload.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert four_bit and all(".language_model." in n for n in four_bit)
    assert any(isinstance(m, torch.nn.Linear) and ".visual." in n for n, m in workload.model.named_modules())
    trainable = [n for n, p in workload.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    lora = make_workload("tiny-qwen2-vl", 1 << 30, max_length=32, max_pixels=3136, train_type="lora", optim="adamw_bnb_8bit")
    assert workload.total_params == lora.total_params  # 4-bit weights counted as weights, not bytes
    q, full = run_train_trial(workload, 1, 3, 1 << 30), run_train_trial(lora, 1, 3, 1 << 30)
    assert q.fits and full.fits
    assert workload.device.allocated_bytes() < lora.device.allocated_bytes()  # 4-bit weights (+ statistics) < bf16


def test_qlora_where_bitsandbytes_cannot_run_is_a_clear_error(make_workload, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # an environment without bitsandbytes
    with pytest.raises(UsageError) as info:
        make_workload("tiny-qwen2", 1 << 30, max_length=32, train_type="qlora")
    assert str(info.value).startswith("--train-type: 4-bit QLoRA cannot run on the sim device") and "--train-type lora" in str(info.value)


def test_paged_optimizers_are_refused_on_the_sim_device(make_workload):
    with pytest.raises(UsageError, match="--optim: paged_adamw_8bit keeps its state in CUDA unified memory"):
        make_workload("tiny-qwen2", 1 << 30, max_length=32, optim="paged_adamw_8bit")


def test_eight_bit_adamw_holds_less_state_than_adamw(make_workload):
    peaks = {}
    for optim in ("adamw_torch", "adamw_bnb_8bit"):
        workload = make_workload("tiny-qwen2", 1 << 30, max_length=16, optim=optim, dtype="float32")
        assert type(workload.make_optimizer()).__module__.split(".")[0] == ("bitsandbytes" if "bnb" in optim else "torch")
        peaks[optim] = run_train_trial(workload, 1, 3, 1 << 30).peak_bytes
    assert peaks["adamw_bnb_8bit"] < peaks["adamw_torch"]
