"""DeepSpeed config JSON. DeepSpeed requires
train_batch_size == train_micro_batch_size_per_gpu * gradient_accumulation_steps * world_size
(deepspeed/runtime/config.py `_batch_assertion`); the numbers are written out, not "auto", so
the file is also right for a plain `deepspeed.initialize` outside the Trainer."""

from __future__ import annotations

import json

from ..errors import UsageError
from ..recipe import Recipe
from .common import check_strategy, global_batch, mixed_precision, offloads, zero_stage


def deepspeed_config(recipe: Recipe) -> dict:
    s = recipe.settings
    strategy = check_strategy(recipe)
    if strategy == "fsdp":
        raise UsageError("RECIPE", "this recipe shards with FSDP, not DeepSpeed", "use `autotune emit accelerate` (or hf) for FSDP")
    stage = zero_stage(strategy) or 0
    config: dict = {
        "train_batch_size": global_batch(recipe),
        "train_micro_batch_size_per_gpu": s.per_device_train_batch_size,
        "gradient_accumulation_steps": s.gradient_accumulation_steps,
    }
    precision = mixed_precision(recipe)
    config["bf16"] = {"enabled": precision == "bf16"}
    config["fp16"] = {"enabled": precision == "fp16"}
    zero: dict = {"stage": stage}
    if stage >= 2:
        zero.update(overlap_comm=True, contiguous_gradients=True)
    if offloads(strategy):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config["zero_optimization"] = zero
    config["steps_per_print"] = 100
    config["wall_clock_breakdown"] = False
    return config


def batch_consistent(config: dict, world: int) -> bool:
    """DeepSpeed's documented rule, for callers that cannot import deepspeed."""
    return (config["train_batch_size"]
            == config["train_micro_batch_size_per_gpu"] * config["gradient_accumulation_steps"] * world)


def render(recipe: Recipe) -> str:
    return json.dumps(deepspeed_config(recipe), indent=2) + "\n"
