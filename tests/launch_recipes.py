"""Recipes for the launch-file and pre-flight tests: one real probe (sim device, tiny LoRA
Llama), cached for the session, and variants of it with the settings other phases add."""

import dataclasses
import functools

from autotune.probe import probe
from autotune.spec import ProbeSpec

CAPACITY = 12 * 2**20


@functools.lru_cache(maxsize=None)
def probed():
    spec = ProbeSpec(max_length=32, model_config="tiny-llama", train_type="lora", device="sim", gpu_memory=CAPACITY,
                     global_batch_size=8, max_batch_size=4,
                     # one candidate, no eval phase (the eval_zero3 variant adds eval settings), short validation
                     attn_candidates=("sdpa",), gradient_checkpointing_candidates=(False,), eval=False, validate_steps=3)
    return probe(spec)


def variant(name: str):
    """base: as probed. eval_zero3: eval settings, ZeRO-3 offload over 2 nodes x 2 GPUs, vision-language
    limits and an env block. fsdp: FSDP at world size 2 with checkpointing."""
    r = probed()
    s = r.settings
    if name == "base":
        return r
    if name == "eval_zero3":
        settings = dataclasses.replace(s, per_device_eval_batch_size=2, eval_accumulation_steps=4, prediction_loss_only=False,
                                       strategy="zero3_offload", freeze_vit=True, freeze_aligner=True, freeze_llm=False,
                                       vit_gradient_checkpointing=True, max_pixels=1003520, video_max_pixels=50176,
                                       video_frames=16, env={"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"})
        hw = dataclasses.replace(r.hardware, device="cuda", world_size=4, device_count=2)
        return dataclasses.replace(r, settings=settings, hardware=hw)
    if name == "fsdp":
        settings = dataclasses.replace(s, strategy="fsdp", gradient_checkpointing=True, attn_implementation="eager")
        hw = dataclasses.replace(r.hardware, world_size=2, device_count=2)
        model = dataclasses.replace(r.model, train_type="full", lora=None)
        return dataclasses.replace(r, settings=settings, hardware=hw, model=model)
    raise KeyError(name)


VARIANTS = ("base", "eval_zero3", "fsdp")
