"""What the RLHF step model (trials/rlhf_step_model.py) feeds TRL's code: the ids a rollout
engine hands over, a vision-language policy's image rows as TRL's processor call hands them, and
the dropout TRL's trainers switch off. Split from the step model so that it keeps to the steps."""

from __future__ import annotations

import contextlib
import dataclasses

import torch


@contextlib.contextmanager
def dropout_as_trl_sets_it(workload):
    """TRL's trainers switch dropout off in the policy and the reference when their config's
    `disable_dropout` is on (DPOConfig: on by default, GRPOConfig: off), with TRL's own
    `disable_dropout_in_model`, in their constructors; in a LoRA run that includes the adapters'
    dropout, whose masks are kept per sample for the backward. Restored afterwards (TRL leaves
    it off: the model is the run's)."""
    from trl import DPOConfig, GRPOConfig
    from trl.trainer.utils import disable_dropout_in_model

    config = GRPOConfig if workload.spec.rlhf.rlhf_type == "grpo" else DPOConfig
    default = next(f.default for f in dataclasses.fields(config) if f.name == "disable_dropout")
    models = [m for m in (workload.model, getattr(workload, "reference", None)) if m is not None]
    saved = [(m, m.p) for model in models for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    if default:
        for model in models:
            disable_dropout_in_model(model)
    try:
        yield
    finally:
        for module, p in saved:
            module.p = p


# What of a generation TRL hands the forward of a vision-language policy (Qwen2-VL / Qwen2.5-VL).
_VISION_KEYS = ("pixel_values", "image_grid_thw", "num_images", "mm_token_type_ids")


def vision_of(inputs: dict) -> dict:
    return {k: inputs[k] for k in _VISION_KEYS if k in inputs}


def vision_rows(workload, rows: int, completion: int = 0) -> dict | None:
    """A vision-language policy's `rows` prompts as TRL's processor call hands them over: ids of
    `max_length` tokens holding each image's tokens, their mask, and the forward's image tensors,
    built on the host and copied to the card (`_prepare_inputs`); `mm_token_type_ids` extended
    with zeros over `completion` tokens, as TRL extends them. The tensors are the family's worst
    case (model/families), whose shapes and token counts are the processor's (tests/test_rlhf_plan.py
    checks them). None for a text policy."""
    setup = workload.setup
    if setup is None or setup.family is None:
        return None
    device = workload.device
    with device.host():
        inputs = setup.family.inputs(workload.source.config, setup.vision, rows, workload.spec.max_length, torch.device("cpu"))
        inputs.pop("labels", None)
        if "mm_token_type_ids" in inputs:
            types_ = inputs["mm_token_type_ids"].long()
            inputs["mm_token_type_ids"] = torch.cat([types_, types_.new_zeros(rows, completion)], dim=1)
    moved = {k: v.to(device.torch_device, copy=True) for k, v in inputs.items()}
    moved["num_images"] = [setup.vision.images] * rows
    return moved


# The config ids a vision-language policy's text must not hold: each one it holds is counted as a
# placeholder (the forward checks the count against the image features). RLHF's VL families are Qwen's.
_PLACEHOLDER_KEYS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def device_ids(workload, rows: int, length: int, vocab_size: int | None = None):
    """Ids and their all-ones mask, built on the host and copied to the device as TRL pads them;
    never a placeholder id (the trials' completions avoid them too). `vocab_size`: another
    model's (a reward model's), else the policy's."""
    device = workload.device
    config = workload.source.config
    avoid = [getattr(config, key) for key in _PLACEHOLDER_KEYS if getattr(config, key, None) is not None]
    with device.host():
        ids = torch.randint(2, vocab_size or workload.vocab_size, (rows, length))
        for token in avoid:
            ids = torch.where(ids == token, torch.full_like(ids, 2), ids)
        mask = torch.ones(rows, length, dtype=torch.long)
    return ids.to(device.torch_device, copy=True), mask.to(device.torch_device, copy=True)
