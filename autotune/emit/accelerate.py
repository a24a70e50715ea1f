"""accelerate config YAML (`accelerate launch --config_file FILE train.py`). Keys are those of
accelerate's `ClusterConfig` (accelerate/commands/config/config_args.py), which refuses
unknown keys when it loads the file.

With a DeepSpeed strategy the YAML points at a DeepSpeed JSON written beside it
(`deepspeed_config_file`): accelerate's own `zero_stage`/offload keys would leave the bucket
sizes at DeepSpeed's defaults, not the ones the probe measured (emit/deepspeed.py)."""

from __future__ import annotations

import yaml

from ..recipe.schema import Recipe
from .common import check_strategy, mixed_precision, world_size, zero_stage


def deepspeed_path(out: str) -> str:
    """`acc.yaml` -> `acc.deepspeed.json`: the DeepSpeed config the YAML points at."""
    return (out[: -len(".yaml")] if out.endswith(".yaml") else out) + ".deepspeed.json"


def accelerate_config(recipe: Recipe, deepspeed_file: str = "ds_config.json") -> dict:
    s = recipe.settings
    strategy = check_strategy(recipe)
    n = world_size(recipe)
    per_node = min(n, max(1, int(recipe.hardware.device_count)))
    machines = -(-n // per_node)
    stage = zero_stage(strategy)
    if stage is not None:
        distributed = "DEEPSPEED"
    elif strategy == "fsdp":
        distributed = "FSDP"
    else:
        distributed = "MULTI_GPU" if n > 1 else "NO"
    config: dict = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": distributed,
        "mixed_precision": mixed_precision(recipe),
        "num_processes": n,
        "num_machines": machines,
        "machine_rank": 0,
        "gpu_ids": "all",
        "rdzv_backend": "static",
        "same_network": True,
        "main_training_function": "main",
        "use_cpu": False,
        "downcast_bf16": "no",
    }
    if stage is not None:
        # Only these two: with a config file accelerate refuses its own ZeRO keys beside it.
        config["deepspeed_config"] = {"deepspeed_config_file": deepspeed_file, "zero3_init_flag": stage == 3}
    elif strategy == "fsdp":
        config["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_reshard_after_forward": True,
            "fsdp_offload_params": False,
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_activation_checkpointing": bool(s.gradient_checkpointing),
        }
    return config


def render(recipe: Recipe, deepspeed_file: str = "ds_config.json") -> str:
    s = recipe.settings
    head = (f"# accelerate config from an autotune recipe: per-device batch {s.per_device_train_batch_size}, "
            f"gradient accumulation {s.gradient_accumulation_steps}, world size {world_size(recipe)}\n"
            "# the batch sizes themselves go to your training script (see `autotune emit hf`)\n")
    used = describe_levers(recipe)
    if used:
        head += f"# memory levers ({used}): TrainingArguments and data settings of the script, see `autotune emit hf`\n"
    if zero_stage(recipe.settings.strategy) is not None:
        head += f"# {deepspeed_file}: the DeepSpeed config (`autotune emit deepspeed RECIPE -o {deepspeed_file}` writes it)\n"
    return head + yaml.safe_dump(accelerate_config(recipe, deepspeed_file), sort_keys=False, default_flow_style=False)


def describe_levers(recipe: Recipe) -> str:
    from ..recipe.levers import LEVER_KEYS, describe

    s = recipe.settings
    if not any(getattr(s, k) for k in LEVER_KEYS) and not (s.sequence_parallel_size or 0) > 1:
        return ""
    text = describe(s)
    return text + (f", sequence parallel {s.sequence_parallel_size} (ms-swift's; not applied here)"
                   if (s.sequence_parallel_size or 0) > 1 else "")
