"""The trainable shape of the model, as the user's trainer sets it up: QLoRA's 4-bit language
model, freezing (vision-language families), LoRA on the unfrozen parts, and the optimizer
choice's fit with the device. Called by workload.load_workload between building the model and
charging it to the device."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..recipe.lora import covering_regex, is_all_linear
from .freezing import Freezing, apply_freezing, check, lora_targets, part_of
from .multimodal import check_text_only, plan_for


@dataclass
class Setup:
    family: object = None  # families.Family, None for a text-only model
    vision: object = None  # families.VisionPlan
    freezing: Freezing | None = None
    quantized_layers: int = 0
    peft_target_regex: str | None = None  # all-linear on a family: the modules it took, for peft (recipe/lora.py)


def check_optimizer(optim: str, device) -> None:
    if optim.startswith("paged_") and device.kind != "cuda":
        raise UsageError("--optim", f"{optim} keeps its state in CUDA unified memory, which pages out to the host; "
                                    f"the {device.kind} device cannot model that (bitsandbytes falls back to a non-paged optimizer on CPU)",
                         "probe paged optimizers on a CUDA card, or use adamw_bnb_8bit on the sim device")


def plan_inputs(source, spec) -> Setup:
    """Everything decidable before the model is built: the family, freezing, the worst-case
    media, and their checks (fast refusals, no model needed)."""
    from .families import family_for

    family = family_for(source.config)
    if family is None:
        check_text_only(spec)
        return Setup()
    freezing = Freezing.resolve(spec)
    check(freezing, spec.train_type)
    return Setup(family=family, vision=plan_for(family, source.config, spec), freezing=freezing)


def family_targets(model, setup: Setup, spec) -> list[str] | None:
    """The modules all-linear takes on a vision-language model (its unfrozen parts' linear
    layers), noted in `setup` as the regex peft is given for them; None: peft's own matching."""
    if not (setup.family and spec.train_type in ("lora", "qlora") and is_all_linear(spec.lora_target_modules, spec.lora_target_regex)):
        return None
    targets = lora_targets(model, setup.family, setup.freezing)
    setup.peft_target_regex = covering_regex(targets, (name for name, _ in model.named_modules()))
    return targets


def prepare(model, setup: Setup, spec, device, apply_lora):
    """Quantize (qlora), freeze, and wrap with LoRA; returns the model to train. LoRA on a
    vision-language model's linear layers (all-linear) covers its unfrozen parts only, as ms-swift's;
    names or a regex go to peft as they are, whatever the freezing (ms-swift's too)."""
    import torch

    from .lora_match import check_model
    from .quantize import check_4bit, quantize_language_model

    family, freezing = setup.family, setup.freezing
    if spec.train_type in ("lora", "qlora"):
        check_model(model, spec.lora_target_modules, spec.lora_target_regex)
    if spec.train_type == "qlora":
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[spec.dtype]
        check_4bit(device, dtype)
        in_lm = (lambda name: part_of(name, family) == "llm") if family else (lambda name: True)
        setup.quantized_layers = quantize_language_model(model, in_lm, dtype, device)
    if spec.train_type in ("lora", "qlora"):
        return apply_lora(model, spec, family_targets(model, setup, spec))
    if family:
        apply_freezing(model, family, freezing)
    return model
