"""Hugging Face Trainer: a `TrainingArguments` JSON that `HfArgumentParser.parse_json_file`
loads with no extra keys, and a sidecar JSON of what the Trainer does not own: the model
loading keywords (`attn_implementation`, `dtype`), the sequence length and the LoRA config.

The TrainingArguments values come from `autotune/recipe/training_args.py`, the same code that builds
the arguments every probe trial runs with."""

from __future__ import annotations

import json

from ..recipe import lora
from ..recipe.schema import Recipe
from ..recipe.training_args import arguments
from .common import check_strategy, image_resize_note, model_location, video_frames_note, zero_stage


def training_arguments(recipe: Recipe, output_dir: str = "output") -> dict:
    """TrainingArguments keyword values for the recipe (only fields the Trainer has): the values
    the probe's trials ran with (training_args.arguments), plus the sharding engine's config."""
    from .deepspeed import deepspeed_config

    s = recipe.settings
    strategy = check_strategy(recipe)
    args: dict = {"output_dir": output_dir, **arguments(s, fsdp=strategy == "fsdp")}
    if strategy == "fsdp":
        # With FSDP, checkpointing belongs to FSDP itself (transformers warns otherwise).
        args["fsdp"] = "full_shard auto_wrap"
        args["fsdp_config"] = {"version": 2, "activation_checkpointing": bool(s.gradient_checkpointing)}
    if zero_stage(strategy) is not None:
        args["deepspeed"] = deepspeed_config(recipe)
    return args


def model_settings(recipe: Recipe) -> dict:
    """What goes to `from_pretrained` and the data pipeline, not to TrainingArguments."""
    s, m = recipe.settings, recipe.model
    out: dict = {
        "model_name_or_path": model_location(recipe),
        "from_pretrained": {"attn_implementation": s.attn_implementation, "dtype": s.torch_dtype},
        "max_length": s.max_length,
    }
    if m.train_type == "qlora":  # BitsAndBytesConfig's keywords, as probed
        q = m.quantization or {}
        out["from_pretrained"]["quantization_config"] = {
            "load_in_4bit": True, "bnb_4bit_quant_type": q.get("quant_type", "nf4"),
            "bnb_4bit_use_double_quant": bool(q.get("double_quant", True)), "bnb_4bit_compute_dtype": q.get("compute_dtype", s.torch_dtype)}
    if m.train_type in ("lora", "qlora") and m.lora:
        # LoraConfig's keywords: target_modules is a list of names, all-linear, or a regex string
        out["lora"] = {"r": m.lora["r"], "lora_alpha": m.lora["alpha"], "lora_dropout": m.lora.get("dropout"),
                       "target_modules": lora.peft_target_of(m.lora), "task_type": "CAUSAL_LM"}
        note = lora_note(recipe)
        if note:
            out["lora_targets"] = note
    for key in ("freeze_vit", "freeze_aligner", "freeze_llm", "vit_gradient_checkpointing", "max_pixels", "image_resize",
                "video_max_pixels", "video_min_pixels", "video_frames", "use_audio_in_video"):
        if getattr(s, key) is not None:
            out[key] = getattr(s, key)
    resize = image_resize_note(recipe)
    if resize:
        out["image_resize"] = {"value": s.image_resize, "how": resize}
    frames = video_frames_note(recipe)
    if frames:
        out["video_max_pixels"] = {"value": s.video_max_pixels, "how": frames}
    if s.use_cache_off_in_sub_configs:
        out["use_cache_off_in_sub_configs"] = {
            "value": True, "how": "the recipe was probed as ms-swift runs, use_cache off in the language model's configs too "
            "(the Trainer sets it in model.config only): set model.config.get_text_config().use_cache = False before "
            "trainer.train(), or a vision-language model's evaluation builds a KV cache the eval batch was not probed with"}
    data = data_levers(recipe)
    if data:
        out["data"] = data
    if s.env:
        out["env"] = dict(s.env)
    return out


def lora_note(recipe: Recipe) -> str | None:
    """Why a vision-language recipe's target_modules is a regex, or why all-linear is wrong there."""
    m, s = recipe.model, recipe.settings
    if not recipe.multimodal or not lora.is_all_linear(*lora.from_record(m.lora)):
        return None
    if m.lora.get(lora.PEFT_REGEX):
        return ("target_modules is the unfrozen parts' linear layers, as ms-swift's all-linear picks them and the probe "
                "adapted them: peft's all-linear would adapt the frozen parts' too")
    # ms-swift's defaults where the recipe left them unset: vision tower and aligner frozen
    frozen = [part for part, flag, default in (("vision tower", s.freeze_vit, True), ("aligner", s.freeze_aligner, True),
                                               ("language model", s.freeze_llm, False)) if (default if flag is None else flag)]
    if not frozen:
        return None
    return (f"this recipe predates peft_target_regex: peft's all-linear also adapts the frozen {' and '.join(frozen)}, "
            "more trainable parameters and optimizer state than the probe's (it adapted the unfrozen parts only); "
            "re-probe (or plan again) for the regex of the modules it adapted")


def data_levers(recipe: Recipe) -> dict:
    """The levers the data pipeline owns, not TrainingArguments, and how the probe ran them."""
    s, out = recipe.settings, {}
    if s.packing:
        out["packing"] = {"row_length": s.max_length, "how": "several samples per row of max_length tokens, position_ids "
                          "restarting at each sample, no attention_mask: transformers masks each sample from the "
                          "position ids (sdpa/eager: a block-diagonal causal mask)"}
    if s.padding_free:
        out["padding_free"] = {"how": "transformers.DataCollatorWithFlattening (one row per batch, position_ids "
                               "restarting per sample); needs attn_implementation flash_attention_2"}
    if s.sequence_parallel_size and s.sequence_parallel_size > 1:
        out["sequence_parallel_size"] = {"value": s.sequence_parallel_size, "how": "ms-swift's sequence parallelism; "
                                         "TrainingArguments has no such argument: not applied by a plain Trainer run"}
    return out


def render(recipe: Recipe) -> str:
    return json.dumps(training_arguments(recipe), indent=2) + "\n"


def render_model(recipe: Recipe) -> str:
    return json.dumps(model_settings(recipe), indent=2) + "\n"


def sidecar_path(out: str) -> str:
    """`train_args.json` -> `train_args.model.json`."""
    return (out[: -len(".json")] if out.endswith(".json") else out) + ".model.json"
