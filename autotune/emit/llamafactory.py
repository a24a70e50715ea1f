"""LLaMA-Factory training YAML (`llamafactory-cli train FILE.yaml`), laid out like its
examples/train_lora/*.yaml. Its own names: `finetuning_type`, `lora_rank`, `lora_target`,
`cutoff_len`, `flash_attn` (auto | disabled | sdpa | fa2 | fa3) and
`disable_gradient_checkpointing` (LLaMA-Factory checkpoints by default)."""

from __future__ import annotations

import yaml

from ..errors import UsageError
from ..recipe import lora
from ..recipe.schema import Recipe
from .common import DATASET_PLACEHOLDER, check_strategy, image_resize_note, mixed_precision, model_location, zero_stage

FLASH_ATTN = {"eager": "disabled", "sdpa": "sdpa", "flash_attention_2": "fa2", "flash_attention_3": "fa3"}
TEMPLATE_PLACEHOLDER = "YOUR_TEMPLATE"
# recipe name -> LLaMA-Factory name, for the vision-language settings it has.
VL_NAMES = {"freeze_vit": "freeze_vision_tower", "freeze_aligner": "freeze_multi_modal_projector",
            "freeze_llm": "freeze_language_model", "max_pixels": "image_max_pixels",
            "video_max_pixels": "video_max_pixels", "video_min_pixels": "video_min_pixels", "video_frames": "video_maxlen",
            "use_audio_in_video": "use_audio_in_video"}  # its ProcessorArguments: a video's sound track (default false)


def sections(recipe: Recipe, dataset: str | None = None, deepspeed_file: str = "ds_config.json") -> list[tuple[str, dict]]:
    s, m = recipe.settings, recipe.model
    strategy = check_strategy(recipe)
    if strategy == "fsdp":
        raise UsageError("RECIPE", "this recipe shards with FSDP; LLaMA-Factory launches FSDP through accelerate",
                         "use `autotune emit accelerate` and pass the training YAML to `accelerate launch`")
    model = {"model_name_or_path": model_location(recipe), "trust_remote_code": True,
             "flash_attn": FLASH_ATTN.get(s.attn_implementation, "auto")}
    for ours, theirs in VL_NAMES.items():
        if getattr(s, ours) is not None and ours in ("max_pixels", "video_max_pixels", "video_min_pixels", "video_frames",
                                                               "use_audio_in_video"):
            model[theirs] = getattr(s, ours)
    method = {"stage": "sft", "do_train": True, "finetuning_type": "lora" if m.train_type == "qlora" else m.train_type}
    if m.train_type == "qlora":  # LoRA over a bitsandbytes 4-bit model, as probed
        q = m.quantization or {}
        model.update(quantization_bit=4, quantization_method="bnb", quantization_type=q.get("quant_type", "nf4"),
                     double_quantization=bool(q.get("double_quant", True)))
    if m.train_type in ("lora", "qlora") and m.lora:
        method.update(lora_rank=int(m.lora["r"]), lora_alpha=int(m.lora["alpha"]), lora_dropout=float(m.lora.get("dropout") or 0.0),
                      lora_target=lora_target(m.lora))
    for ours in ("freeze_vit", "freeze_aligner", "freeze_llm"):
        if getattr(s, ours) is not None:
            method[VL_NAMES[ours]] = getattr(s, ours)
    if zero_stage(strategy) is not None:
        method["deepspeed"] = deepspeed_file
    data = {"dataset": dataset or DATASET_PLACEHOLDER, "template": TEMPLATE_PLACEHOLDER}
    if s.max_length is not None:
        data["cutoff_len"] = int(s.max_length)
    if s.activation_offloading:
        raise UsageError("RECIPE", "this recipe offloads activations (transformers' offload); LLaMA-Factory has no argument for it",
                         "use `autotune emit hf`, or re-probe with --activation-offloading off")
    if s.padding_free:
        raise UsageError("RECIPE", "this recipe is padding-free (one flattened row per batch); LLaMA-Factory has no such argument",
                         "use `autotune emit swift` (padding_free), or re-probe with --padding-free off")
    if s.packing:
        data["neat_packing"] = True  # packed rows whose samples do not attend to each other, as probed
    train = {"per_device_train_batch_size": s.per_device_train_batch_size,
             "gradient_accumulation_steps": s.gradient_accumulation_steps,
             "disable_gradient_checkpointing": not s.gradient_checkpointing}
    if s.use_liger_kernel:
        train["enable_liger_kernel"] = True
    precision = mixed_precision(recipe)
    if precision != "no":
        train[precision] = True
    if s.optim:
        train["optim"] = s.optim
    evaluation = {k: getattr(s, k) for k in ("per_device_eval_batch_size", "eval_accumulation_steps", "prediction_loss_only")
                  if getattr(s, k) is not None}
    out = [("model", model), ("method", method), ("dataset", data), ("output", {"output_dir": "output"}), ("train", train)]
    if evaluation:
        out.append(("eval", evaluation))
    return out


def lora_target(record: dict) -> str:
    """LLaMA-Factory's `lora_target`: comma-separated module names, or `all` (its all-linear)."""
    names, regex = lora.from_record(record)
    if regex is not None:
        raise UsageError("RECIPE", f"this recipe's LoRA targets are a regex ({regex}); LLaMA-Factory's lora_target takes "
                         "module names or all", "re-probe with --lora-target-modules NAMES, or use `autotune emit swift` / `emit hf`")
    return "all" if lora.is_all_linear(names, None) else ",".join(names)


def flat(recipe: Recipe, dataset: str | None = None) -> dict:
    merged: dict = {}
    for _, values in sections(recipe, dataset):
        merged.update(values)
    return merged


def render(recipe: Recipe, dataset: str | None = None, deepspeed_file: str = "ds_config.json") -> str:
    """The training YAML; a ZeRO recipe's points at `deepspeed_file` (`emit` writes it beside)."""
    parts = ["# LLaMA-Factory training YAML from an autotune recipe; run: llamafactory-cli train THIS_FILE.yaml"]
    if not dataset:
        parts.append(f"# {DATASET_PLACEHOLDER} and {TEMPLATE_PLACEHOLDER} are placeholders: set your dataset and chat template")
    if zero_stage(recipe.settings.strategy) is not None:
        parts.append(f"# {deepspeed_file}: the DeepSpeed config (`autotune emit deepspeed RECIPE -o {deepspeed_file}` writes it), "
                     "found from where llamafactory-cli runs")
    parts += lever_comments(recipe)
    for title, values in sections(recipe, dataset, deepspeed_file):
        parts.append(f"\n### {title}")
        parts.append(yaml.safe_dump(values, sort_keys=False, default_flow_style=False).rstrip())
    return "\n".join(parts) + "\n"


def lever_comments(recipe: Recipe) -> list[str]:
    """What LLaMA-Factory cannot say as probed (levers, the image rule); each written the safe way, and said so."""
    s, notes = recipe.settings, []
    if s.gradient_checkpointing and s.checkpoint_every_n_layers and s.checkpoint_every_n_layers > 1:
        notes.append(f"# probed with checkpointing every {s.checkpoint_every_n_layers}th layer; LLaMA-Factory checkpoints every "
                     "layer (no every_n_layers argument): this run needs less memory than probed and is slower")
    if s.sequence_parallel_size and s.sequence_parallel_size > 1:
        notes.append(f"# sequence_parallel_size {s.sequence_parallel_size} is ms-swift's; not written here (not measured either)")
    resize = image_resize_note(recipe)
    if resize:
        notes.append(f"# {resize}")
    if recipe.multimodal and recipe.model.lora and not lora.is_all_linear(*lora.from_record(recipe.model.lora)):
        notes.append("# lora_target on a vision-language model: LLaMA-Factory adapts the modules whose names contain a name "
                     "and leaves out its frozen parts (patch_target_modules); the probe adapted those whose names end in one, "
                     "frozen or not (peft's rule, as ms-swift)")
    return notes
