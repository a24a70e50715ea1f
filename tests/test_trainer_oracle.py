"""The launched trainer is the oracle: a recipe's "fits" is tested by running the real
`transformers.Trainer` at the recipe's settings, as a user launches it -- `recipe.apply` on the
user's `TrainingArguments` (bf16 as the launch files set it), evaluation every 2 steps inside
training, a `compute_metrics` (so the Trainer keeps the logits until eval_accumulation_steps) --
with everything counted by the sim device at the recipe's usable budget. Nothing of autotune's
trial code runs here: the Trainer is built by the test, the model and its worst-case samples
come from the workload.

At the recipe's batches nothing is allocated past the budget; at train batch + 1 and at eval
batch + 1 the same run passes it: the frontier is exact, not merely safe."""

import dataclasses

import numpy as np
import pytest
import torch
from transformers import Trainer, TrainingArguments

from autotune.devices import SimDevice
from autotune.model.source import resolve
from autotune.probe import probe
from autotune.spec import ProbeSpec
from autotune.model.workload import load_workload

MiB = 2**20
EVAL_EVERY = 2
TRAIN_STEPS = 4  # two evaluations inside training


class Samples(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def accuracy(prediction):
    """A real compute_metrics: token accuracy from the kept logits."""
    logits, labels = prediction.predictions, prediction.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits  # a vision-language model returns more than logits
    return {"accuracy": float(np.mean(np.argmax(logits, axis=-1) == labels))}


def launched(recipe, spec, device, train_batch=None, eval_batch=None, tmp="oracle-out", as_swift=False):
    """Run the user's Trainer at the recipe's settings (optionally one batch larger). Returns
    the peak of the whole run; raises OutOfMemoryError when it passes the device's capacity.
    A `compute_metrics` unless the recipe keeps the loss only; `as_swift`: the model configured
    as ms-swift configures it before training (3.12's `set_model_config_attr(model, 'use_cache',
    False)`: every module's config, the language model's text config included)."""
    workload = load_workload(resolve(spec.model, spec.model_config), spec, device)
    if recipe.settings.attn_implementation != workload.attn_implementation:
        workload.model.set_attn_implementation(recipe.settings.attn_implementation)
    settings = dataclasses.replace(recipe.settings, per_device_train_batch_size=train_batch or recipe.settings.per_device_train_batch_size,
                                   per_device_eval_batch_size=eval_batch or recipe.settings.per_device_eval_batch_size)
    user = TrainingArguments(output_dir=str(tmp), max_steps=TRAIN_STEPS, eval_strategy="steps", eval_steps=EVAL_EVERY,
                             save_strategy="no", report_to="none", logging_strategy="no", disable_tqdm=True, use_cpu=True,
                             remove_unused_columns=False, dataloader_pin_memory=False)
    args = dataclasses.replace(recipe, settings=settings).apply(user)
    assert args.bf16 and args.eval_accumulation_steps == recipe.settings.eval_accumulation_steps

    def collate(features):
        with device.host():  # a DataLoader builds its batch in host memory
            return workload.make_batch(len(features), device=torch.device("cpu"))

    metrics = {} if recipe.settings.eval_outputs == "loss" else {"compute_metrics": accuracy}
    trainer = Trainer(model=workload.model, args=args, data_collator=collate, **metrics,
                      train_dataset=Samples(args.per_device_train_batch_size * args.gradient_accumulation_steps * TRAIN_STEPS),
                      eval_dataset=Samples(args.per_device_eval_batch_size * 2 * (args.eval_accumulation_steps or 2)))
    if as_swift:
        for module in workload.model.modules():
            config = getattr(module, "config", None)
            if config is not None and getattr(config, "use_cache", False) is not False:
                config.use_cache = False
    device.reset_peak()
    with device.tracking(), device.transfers():
        trainer.train()
    return device.peak_bytes()


CASES = {
    # full fine-tune of a text model, the default eval (logits kept by a compute_metrics)
    "full": dict(model_config="tiny-llama", max_length=64, capacity=21 * MiB),
    # LoRA on a text model
    "lora": dict(model_config="tiny-qwen2", max_length=64, capacity=25 * MiB, train_type="lora", lora_r=4),
    # the field report's case: a vision-language full fine-tune with nothing frozen
    "vl-full-unfrozen": dict(model_config="tiny-qwen2.5-vl", max_length=96, capacity=44 * MiB, max_pixels=56 * 56 * 4,
                             freeze_vit=False, freeze_aligner=False),
}


@pytest.fixture(scope="module", params=list(CASES))
def probed(request):
    case = dict(CASES[request.param])
    capacity = case.pop("capacity")
    spec = ProbeSpec(device="sim", gpu_memory=capacity, attn_candidates=("sdpa",), gradient_checkpointing_candidates=(False,),
                     validate_steps=4, **case)
    return probe(spec), spec


def fits_at_the_recipe_and_not_one_batch_more(recipe, spec, tmp_path, **how) -> dict:
    """The launched run at the recipe's batches within its budget, and past it one train or eval
    batch more. Returns the run's arguments (`how`: launched's, e.g. as_swift)."""
    s, budget = recipe.settings, recipe.search.budget_bytes
    run = dict(spec=spec.replace(attn_implementation=s.attn_implementation), tmp=tmp_path, **how)
    assert launched(recipe, device=SimDevice(budget), **run) <= budget  # raises past the budget
    for more in ({"train_batch": s.per_device_train_batch_size + 1}, {"eval_batch": s.per_device_eval_batch_size + 1}):
        with pytest.raises(torch.OutOfMemoryError):
            launched(recipe, device=SimDevice(budget), **run, **more)
    return run


@pytest.mark.slow
def test_the_launched_trainer_fits_at_the_recipe_and_not_one_batch_more(probed, tmp_path):
    recipe, spec = probed
    s = recipe.settings
    assert recipe.validation.passed and s.per_device_eval_batch_size and s.eval_outputs == "logits"
    fits_at_the_recipe_and_not_one_batch_more(recipe, spec, tmp_path)


@pytest.fixture(scope="module")
def probed_for_swift():
    """A vision-language probe for an ms-swift launch (`--emit swift`): loss-only evaluation, and
    no KV cache in the language model's eval forwards (model/kv_cache.py). On this card the eval
    frontier after the train frontier (3) is 5 for ms-swift and 4 for the HF Trainer (whose eval
    at 5 holds the cache: 2 layers x 2 x 2 KV heads x 16 x 96 tokens x 5 x 2 bytes = 120 KiB more)."""
    spec = ProbeSpec(device="sim", gpu_memory=15_480_036, attn_candidates=("sdpa",), gradient_checkpointing_candidates=(False,),
                     validate_steps=4, model_config="tiny-qwen2-vl", max_length=96, max_pixels=56 * 56 * 4,
                     eval_outputs="loss", use_cache_off_in_sub_configs=True, image_resize="qwen-vl-utils")
    return probe(spec), spec


@pytest.mark.slow
def test_an_ms_swift_recipe_fits_the_trainer_configured_as_ms_swift_runs_it(probed_for_swift, tmp_path):
    recipe, spec = probed_for_swift
    s = recipe.settings
    assert recipe.validation.passed and s.eval_outputs == "loss" and s.use_cache_off_in_sub_configs is True
    run = fits_at_the_recipe_and_not_one_batch_more(recipe, spec, tmp_path, as_swift=True)
    # The same recipe under the HF Trainer: its evaluation builds the cache and passes the budget.
    assert s.per_device_eval_batch_size == 5
    with pytest.raises(torch.OutOfMemoryError):
        launched(recipe, device=SimDevice(recipe.search.budget_bytes), **{**run, "as_swift": False})


def test_full_fp16_is_refused_for_the_reason_a_card_would_fail():
    """float16 weights trained in full under fp16 mixed precision: torch's GradScaler (what
    accelerate runs for fp16 on a card) refuses the fp16 gradients at the first optimizer step,
    so the spec refuses the run; LoRA (adapters in fp32) and DeepSpeed (fp32 masters) pass."""
    from autotune.errors import UsageError
    from autotune.spec import ProbeSpec

    layer = torch.nn.Linear(4, 4).half()
    optimizer = torch.optim.AdamW(layer.parameters())
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(layer(torch.ones(2, 4, dtype=torch.float16)).float().sum()).backward()
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
        scaler.unscale_(optimizer)
    with pytest.raises(UsageError, match="^--dtype: float16 weights cannot train in full"):
        ProbeSpec(model_config="tiny-llama", max_length=16, dtype="float16")
    ProbeSpec(model_config="tiny-llama", max_length=16, dtype="float16", train_type="lora")
    ProbeSpec(model_config="tiny-llama", max_length=16, dtype="float16", strategies=("zero2",), world_size=2)
