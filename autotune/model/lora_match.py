"""The LoRA targets (recipe/lora.py) against a model, with peft's own matching rule: a name or
regex that matches no module, or matches one peft cannot wrap, is refused with the layer names
the model does have (peft would adapt the other names silently, or stop with a traceback)."""

from __future__ import annotations

import torch

from ..errors import UsageError
from ..recipe.lora import NAMES_FLAG, REGEX_FLAG, is_all_linear


def _wrappable() -> tuple:
    """The layer classes peft's LoRA wraps (a bitsandbytes Linear4bit is a torch Linear)."""
    from transformers.pytorch_utils import Conv1D

    nn = torch.nn
    return (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention, Conv1D)


def _matches(target, names: list[str]) -> list[str]:
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    config = LoraConfig(target_modules=target)
    return [n for n in names if n and check_target_module_exists(config, n)]


def _layer_names(modules: dict, wrappable: tuple, under: str = "") -> list[str]:
    prefix = under + "." if under else ""
    return sorted({n.rsplit(".", 1)[-1] for n, m in modules.items() if n.startswith(prefix) and n and isinstance(m, wrappable)})


def check_model(model, names: tuple[str, ...], regex: str | None, flag: str | None = None) -> None:
    """Refuse targets peft would not adapt as asked. `flag`: where they came from (default: the probe's flags)."""
    if is_all_linear(names, regex):
        return
    modules, wrappable = dict(model.named_modules()), _wrappable()
    flag = flag or (REGEX_FLAG if regex is not None else NAMES_FLAG)
    for target, shown in ([(regex, f"the regex {regex!r}")] if regex is not None else [([n], repr(n)) for n in names]):
        hit = _matches(target, list(modules))
        if not hit:
            raise UsageError(flag, f"{shown} matches no module of {model.__class__.__name__}",
                             f"its layers LoRA can wrap are named {', '.join(_layer_names(modules, wrappable))} (or give all-linear)")
        odd = [n for n in hit if not isinstance(modules[n], wrappable)]
        if odd:
            inside = _layer_names(modules, wrappable, odd[0]) or _layer_names(modules, wrappable)
            raise UsageError(flag, f"{shown} matches {odd[0]} ({type(modules[odd[0]]).__name__}), which LoRA cannot wrap",
                             f"name the layers in it instead: {', '.join(inside)}")


def check_before_load(config, names: tuple[str, ...], regex: str | None, flag: str | None = None) -> None:
    """check_model on the model built from its config on `meta` (no memory, no init), so a
    refusal comes before the weights load."""
    if is_all_linear(names, regex):
        return
    from .source import model_class

    with torch.device("meta"):
        model = model_class(config)._from_config(config, attn_implementation="eager")
    check_model(model, names, regex, flag)

