"""Freezing with ms-swift's names and defaults (`freeze_vit=True`, `freeze_aligner=True`,
`freeze_llm=False`, in TunerArguments): a frozen part gets no gradients, hence no optimizer
state; LoRA targets the linear layers of the unfrozen parts only (ms-swift's
get_multimodal_target_regex does the same)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from ..errors import UsageError

SWIFT_DEFAULTS = {"freeze_vit": True, "freeze_aligner": True, "freeze_llm": False}


@dataclass(frozen=True)
class Freezing:
    freeze_vit: bool
    freeze_aligner: bool
    freeze_llm: bool

    @classmethod
    def resolve(cls, spec) -> "Freezing":
        return cls(**{k: SWIFT_DEFAULTS[k] if getattr(spec, k) is None else getattr(spec, k) for k in SWIFT_DEFAULTS})


def _under(name: str, prefixes) -> str | None:
    """The longest prefix `name` lies under (the aligner sits inside Qwen2-VL's vision tower)."""
    hits = [p for p in prefixes if name == p or name.startswith(p + ".")]
    return max(hits, key=len) if hits else None


def part_of(name: str, family) -> str:
    """'aligner', 'vit' or 'llm': the most specific match wins; anything else is the LM's."""
    best, part = "", "llm"
    for kind, prefixes in (("vit", family.vision_tower), ("aligner", family.aligner), ("llm", family.language_model)):
        hit = _under(name, prefixes)
        if hit and len(hit) > len(best):
            best, part = hit, kind
    return part


def frozen_parts(freezing: Freezing) -> set[str]:
    return {part for part, flag in (("vit", freezing.freeze_vit), ("aligner", freezing.freeze_aligner), ("llm", freezing.freeze_llm)) if flag}


def check(freezing: Freezing, train_type: str) -> None:
    if freezing.freeze_vit and freezing.freeze_aligner and freezing.freeze_llm:
        raise UsageError("--freeze-llm", "every part is frozen: nothing would train",
                         "leave --freeze-llm false, or unfreeze the vision tower / aligner")
    if train_type == "qlora" and freezing.freeze_llm:
        raise UsageError("--freeze-llm", "QLoRA quantizes the language model and trains LoRA on it; it cannot be frozen",
                         "use --train-type lora to train only the vision side")


def apply_freezing(model, family, freezing: Freezing) -> None:
    """Full fine-tune: frozen parts stop requiring gradients."""
    frozen = frozen_parts(freezing)
    for name, param in model.named_parameters():
        if part_of(name, family) in frozen:
            param.requires_grad_(False)


def lora_targets(model, family, freezing: Freezing) -> list[str]:
    """Names of the linear layers LoRA wraps: those of the unfrozen parts, never the output head
    (peft's all-linear leaves it out too)."""
    frozen = frozen_parts(freezing)
    # 4-bit layers exist only where QLoRA imported bitsandbytes: do not import it for plain LoRA
    bnb = sys.modules.get("bitsandbytes")
    linear = (torch.nn.Linear, bnb.nn.Linear4bit) if bnb is not None else (torch.nn.Linear,)
    targets = [name for name, module in model.named_modules()
               if isinstance(module, linear) and part_of(name, family) not in frozen and not _under(name, ("lm_head",))]
    if not targets:
        raise UsageError("--freeze-vit", "LoRA has no linear layer to wrap in the unfrozen parts", "unfreeze a part that has linear layers")
    return targets
