"""`emit swift --swift-args FILE` (and `probe --swift-args FILE --emit swift`): the user's own
ms-swift arguments with the recipe's settings put in, everything else kept (dataset, learning
rate, epochs, output_dir, the model path, system prompts, ...).

The recipe's keys replace the file's in place; the placeholders autotune writes where it knows
nothing (model, dataset, output_dir) give way to the file's values. A key whose value changes
what the card holds and which the probed configuration does not set (a DeepSpeed preset where it
ran without, a checkpointing kwargs where it ran without checkpointing) is removed, and named in
the file's head. The other version's spelling of a key (3.x `train_type` / 4.x `tuner_type`,
`metric` / `eval_metric`) is dropped beside the one written. Comments of a YAML file are not kept
(it is read and written as data)."""

from __future__ import annotations

# What decides memory or the run's batch: the recipe's value, or none where it sets none.
OWNED = frozenset((
    "per_device_train_batch_size", "gradient_accumulation_steps", "per_device_eval_batch_size", "eval_accumulation_steps",
    "prediction_loss_only", "gradient_checkpointing", "gradient_checkpointing_kwargs", "attn_impl", "max_length", "torch_dtype",
    "bf16", "fp16", "padding_free", "packing", "use_liger_kernel", "sequence_parallel_size", "vit_gradient_checkpointing",
    "freeze_vit", "freeze_aligner", "freeze_llm", "optim", "deepspeed", "fsdp", "tuner_type", "train_type", "lora_rank",
    "lora_alpha", "lora_dropout", "target_modules", "target_regex", "eval_metric", "metric", "predict_with_generate",
    "rlhf_type", "num_generations", "max_completion_length", "beta", "use_vllm", "vllm_mode", "vllm_gpu_memory_utilization",
    "vllm_max_model_len", "sleep_level", "offload_model", "offload_optimizer", "steps_per_generation", "generation_batch_size",
    "precompute_ref_log_probs", "reward_model",
    # the quantization QLoRA is probed with (a LoRA recipe keeps none of a QLoRA file's)
    "quant_method", "quant_bits", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype", "bnb_4bit_quant_storage",
    # swift rlhf takes response_length or max_new_tokens before max_completion_length: kept, they would override it
    "response_length", "max_new_tokens",
))
# Written by autotune only as placeholders: the file's own value stays.
PLACEHOLDERS = ("model", "dataset", "output_dir")
SPELLINGS = {"train_type": "tuner_type", "tuner_type": "train_type", "metric": "eval_metric", "eval_metric": "metric"}


def infer_version(base: dict) -> str | None:
    """The ms-swift major the file was written for, where its spelling says (3.x train_type, 4.x tuner_type)."""
    if "tuner_type" in base or "eval_metric" in base:
        return "4.6"
    if "train_type" in base or "metric" in base:
        return "3.12"
    return None


def merge(args: dict, base: dict, dataset_given: bool) -> tuple[dict, list[str]]:
    """(the arguments to write, the file's keys removed). `args`: the recipe's swift arguments."""
    merged = {k: v for k, v in base.items() if k != "ENV"}
    removed = [k for k in merged if k in OWNED and k not in args and not (SPELLINGS.get(k) in args and k in SPELLINGS)]
    spelled = [k for k in merged if k in SPELLINGS and k not in args and SPELLINGS[k] in args]
    for key in removed + spelled:
        del merged[key]
    for key, value in args.items():
        if key in PLACEHOLDERS and key in merged and not (key == "dataset" and dataset_given):
            continue
        merged[key] = value
    return merged, removed


def launch_world_note(env: dict[str, str], recipe_world: int, args: dict, source: str) -> str | None:
    """A head line where the file launches another number of processes than the recipe was probed
    at (kept: the user's layout), naming the global batch that then runs."""
    try:
        world = int(env.get("NPROC_PER_NODE", 1)) * int(env.get("NNODES", 1))
    except ValueError:
        return None
    if world == recipe_world:
        return None
    per_step = int(args.get("per_device_train_batch_size", 1)) * int(args.get("gradient_accumulation_steps", 1))
    return (f"# {source} launches {world} processes, the recipe was probed at world size {recipe_world}: the global batch "
            f"is {per_step} x {world} = {per_step * world} (the recipe's: {per_step * recipe_world})")


def merge_env(recipe_env: dict[str, str], base: dict) -> dict[str, str]:
    """The file's ENV block with the recipe's variables over it, except the file's own choice of
    cards (CUDA_VISIBLE_DEVICES) where it names as many as the recipe's layout uses."""
    own = {str(k): str(v) for k, v in (base.get("ENV") or {}).items()}
    env = {**own, **recipe_env}
    cards = own.get("CUDA_VISIBLE_DEVICES")
    if cards and "CUDA_VISIBLE_DEVICES" in recipe_env and len(cards.split(",")) == len(recipe_env["CUDA_VISIBLE_DEVICES"].split(",")):
        env["CUDA_VISIBLE_DEVICES"] = cards
    return env


def data_lines(recipe, base: dict, source: str) -> list[str]:
    """Head lines where the recipe's length is its measured data's longest sample: that the file's
    max_length gives way to it, or, where the file trains on other data, that the length is not
    this data's (probe the file to measure its own)."""
    from pathlib import Path

    from .swift_data import dataset_entries, local_dataset_file

    data = recipe.dataset
    if not data or data.get("used") is False:
        return []
    ours = recipe.settings.max_length
    measured = {Path(p).resolve() for p in str(data["path"]).split(", ")}
    entries = dataset_entries(base)
    files = {found.resolve() for found in map(local_dataset_file, entries) if found is not None}
    if files != measured or len(files) < len(entries):
        return [f"# WARNING: the recipe's max_length {ours} is the longest sample of {data['path']}, and {source} trains on "
                f"{', '.join(map(str, entries)) or 'no dataset it names'}: run `autotune probe --swift-args {source}` to measure its own"]
    theirs = base.get("max_length")
    if theirs is not None and str(theirs) != str(ours):
        return [f"# max_length {theirs} -> {ours}: the longest sample of {data['path']} as the probe counted it (none is longer)"]
    return []
