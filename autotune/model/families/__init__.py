"""Vision-language families, one small module each. Adding a family = a module that defines
`FAMILY` (see base.py) and one line in MODULES."""

from __future__ import annotations

import importlib

from .base import Family, Media, VisionPlan

MODULES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "llava_next")


def families() -> list[Family]:
    return [importlib.import_module(f"{__name__}.{name}").FAMILY for name in MODULES]


def family_for(config) -> Family | None:
    """The family of a transformers config, or None for a text-only model."""
    for family in families():
        if config.model_type in family.model_types:
            return family
    return None


__all__ = ["Family", "Media", "VisionPlan", "families", "family_for"]
