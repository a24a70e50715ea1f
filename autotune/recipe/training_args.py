"""The Hugging Face `TrainingArguments` values of one configuration: the single source of truth
for what a trial runs with, what `emit hf` writes, what `recipe.apply` sets and what the
ms-swift emitter maps from. What is probed is literally what is launched.

transformers 5.x renamed `gradient_checkpointing` to `activation_checkpointing` (the old name
is a deprecated alias); the names are taken from the installed `TrainingArguments`.
"""

from __future__ import annotations

import dataclasses
import functools

# How the eval phase keeps its outputs, as the launched trainer does (see README, Evaluation):
# loss     -- no compute_metrics (ms-swift's default): loss only, nothing kept
# logits   -- a compute_metrics without preprocess_logits_for_metrics: every step's logits kept
#             (fp32 under mixed precision) until eval_accumulation_steps moves them to the host
# argmax   -- preprocess_logits_for_metrics returning argmax ids (ms-swift --metric acc)
# generate -- predict_with_generate: generate() for max_new_tokens, generated ids kept
EVAL_OUTPUTS = ("loss", "logits", "argmax", "generate")
# Non-reentrant checkpointing: what the probe measures and every launch file writes (ms-swift
# without these kwargs runs reentrant checkpointing in a single process).
CHECKPOINTING_KWARGS = {"use_reentrant": False}
MIXED_PRECISION = {"bfloat16": "bf16", "float16": "fp16"}


@functools.lru_cache(maxsize=1)
def training_fields() -> frozenset:
    from transformers import TrainingArguments

    return frozenset(f.name for f in dataclasses.fields(TrainingArguments))


def checkpointing_names(fields: set[str] | frozenset | None = None) -> tuple[str, str]:
    fields = training_fields() if fields is None else fields
    if "activation_checkpointing" in fields:
        return "activation_checkpointing", "activation_checkpointing_kwargs"
    return "gradient_checkpointing", "gradient_checkpointing_kwargs"


def mixed_precision(torch_dtype: str | None) -> str:
    """`bf16`, `fp16` or `no`: how the Trainer runs for the model's dtype (what ms-swift sets)."""
    return MIXED_PRECISION.get(torch_dtype or "", "no")


def eval_outputs_of(settings) -> str:
    """The eval outputs a configuration keeps; older recipes say it with prediction_loss_only."""
    get = settings.get if isinstance(settings, dict) else lambda k, d=None: getattr(settings, k, d)
    named = get("eval_outputs")
    if named:
        return named
    if get("predict_with_generate"):
        return "generate"
    return "loss" if get("prediction_loss_only", True) in (True, None) else "logits"


def arguments(settings, fields=None, fsdp: bool = False) -> dict:
    """TrainingArguments keyword values of a configuration (`settings`: a recipe's Settings, or a
    trial's settings dict with the same names). Only what the Trainer owns: batch sizes,
    accumulation, checkpointing and its kwargs, mixed precision, optimizer, eval keeping."""
    get = settings.get if isinstance(settings, dict) else lambda k, d=None: getattr(settings, k, d)
    gc_name, gc_kwargs = checkpointing_names(fields)
    args: dict = {}
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "per_device_eval_batch_size"):
        if get(key) is not None:
            args[key] = int(get(key))
    outputs = eval_outputs_of(settings)
    if get("per_device_eval_batch_size") is not None:
        args["prediction_loss_only"] = outputs == "loss"
        if outputs != "loss" and get("eval_accumulation_steps") is not None:
            args["eval_accumulation_steps"] = int(get("eval_accumulation_steps"))
    if outputs == "generate" and "predict_with_generate" in (training_fields() if fields is None else fields):
        args["predict_with_generate"] = True  # Seq2SeqTrainingArguments
    precision = get("mixed_precision") or mixed_precision(get("torch_dtype"))
    if precision != "no":
        args[precision] = True
    if get("optim"):
        args["optim"] = get("optim")
    if not fsdp:  # with FSDP, checkpointing belongs to FSDP itself (transformers warns otherwise)
        args[gc_name] = bool(get("gradient_checkpointing"))
        if get("gradient_checkpointing"):
            args[gc_kwargs] = {**CHECKPOINTING_KWARGS, **checkpointing_lever_kwargs(settings)}
    if get("use_liger_kernel"):
        args["use_liger_kernel"] = True
    return args


def checkpointing_lever_kwargs(settings) -> dict:
    """The memory levers transformers (>= 5.24) reads from `activation_checkpointing_kwargs`:
    `every_n_layers` (checkpoint every n-th decoder layer) and `offload` (the checkpointed layers'
    saved inputs in host memory). The Trainer pops both before the rest reaches
    `torch.utils.checkpoint`; absent when not used, so older recipes' arguments are unchanged."""
    get = settings.get if isinstance(settings, dict) else lambda k, d=None: getattr(settings, k, d)
    kwargs: dict = {}
    every = get("checkpoint_every_n_layers")
    if every and int(every) > 1:
        kwargs["every_n_layers"] = int(every)
    if get("activation_offloading"):
        kwargs["offload"] = True
    return kwargs
