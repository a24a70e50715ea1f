"""DeepSpeed config JSON, and the one definition of the ZeRO settings: the probe runs its
DeepSpeed trials with `engine_config` (cluster/sharding.py), and every launch file that names a
DeepSpeed strategy carries the same settings, so the run uses the buckets the probe measured.

The ZeRO sections are ms-swift's shipped configs (`swift/config/zero{2,3}[_offload].json` in
4.x, `swift/llm/ds_config/` in 3.x, the same values): `swift sft --deepspeed zero3` runs with
exactly those, so the DeepSpeed JSON and the accelerate config write them too
(tests/data/ms-swift-zero.json pins them). The bucket sizes dominate a small model's memory
(ZeRO-2 reduces gradients through a bucket of `reduce_bucket_size` elements, allocated whole).

DeepSpeed requires
train_batch_size == train_micro_batch_size_per_gpu * gradient_accumulation_steps * world_size
(deepspeed/runtime/config.py `_batch_assertion`); the numbers are written out, not "auto", so
the file is also right for a plain `deepspeed.initialize` outside the Trainer."""

from __future__ import annotations

import json

from ..errors import UsageError
from ..recipe.schema import Recipe
from .common import check_strategy, mixed_precision, offloads, world_size, zero_stage

ZERO2 = {"allgather_partitions": True, "allgather_bucket_size": 200_000_000, "overlap_comm": False,
         "reduce_scatter": True, "reduce_bucket_size": 200_000_000, "contiguous_gradients": True}
ZERO3 = {"overlap_comm": False, "contiguous_gradients": True, "sub_group_size": 1_000_000_000,
         "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
         "stage3_max_live_parameters": 1_000_000_000, "stage3_max_reuse_distance": 1_000_000_000,
         "stage3_gather_16bit_weights_on_model_save": True}
# "auto" filled from the model's hidden size h as the Trainer does it (transformers
# integrations/deepspeed.py `trainer_config_finalize`; accelerate's `_prepare_deepspeed` the same).
FROM_HIDDEN = {"reduce_bucket_size": lambda h: h * h, "stage3_prefetch_bucket_size": lambda h: int(0.9 * h * h),
               "stage3_param_persistence_threshold": lambda h: 10 * h}


def hidden_size(config) -> int | None:
    """The hidden size the Trainer reads for "auto" (a vision-language model: its text model's)."""
    for c in (config, getattr(config, "text_config", None)):
        if getattr(c, "hidden_size", None):
            return int(c.hidden_size)
        if getattr(c, "hidden_sizes", None):
            return int(max(c.hidden_sizes))
    return None


def zero_optimization(strategy: str, hidden_size: int | None = None) -> dict:
    """The `zero_optimization` section for a ZeRO strategy; "auto" entries become numbers when
    the hidden size is known (else the Trainer / accelerate fill them at launch)."""
    stage = zero_stage(strategy) or 0
    offload = {"device": "cpu" if offloads(strategy) else "none", "pin_memory": True}
    zero: dict = {"stage": stage}
    if stage == 2:
        zero.update(offload_optimizer=offload, **ZERO2)
    elif stage == 3:
        zero.update(offload_optimizer=offload, offload_param=dict(offload), **ZERO3)
        if not offloads(strategy):
            zero.update(zero_quantized_weights=False, zero_quantized_gradients=False)
    if hidden_size:
        zero.update({k: fill(hidden_size) for k, fill in FROM_HIDDEN.items() if zero.get(k) == "auto"})
    return zero


def engine_config(strategy: str, micro_batch: int, accumulation: int, world: int, precision: str,
                  hidden_size: int | None) -> dict:
    """A complete DeepSpeed config: what the probe hands the engine and what `render` writes."""
    return {
        "train_batch_size": micro_batch * accumulation * world,
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "zero_optimization": zero_optimization(strategy, hidden_size),
        "steps_per_print": 100,
        "wall_clock_breakdown": False,
    }


def deepspeed_config(recipe: Recipe) -> dict:
    s = recipe.settings
    strategy = check_strategy(recipe)
    if strategy == "fsdp":
        raise UsageError("RECIPE", "this recipe shards with FSDP, not DeepSpeed", "use `autotune emit accelerate` (or hf) for FSDP")
    return engine_config(strategy or "ddp", s.per_device_train_batch_size, s.gradient_accumulation_steps,
                         world_size(recipe), mixed_precision(recipe), recipe.model.hidden_size)


def batch_consistent(config: dict, world: int) -> bool:
    """DeepSpeed's documented rule, for callers that cannot import deepspeed."""
    return (config["train_batch_size"]
            == config["train_micro_batch_size_per_gpu"] * config["gradient_accumulation_steps"] * world)


def render(recipe: Recipe) -> str:
    return json.dumps(deepspeed_config(recipe), indent=2) + "\n"
