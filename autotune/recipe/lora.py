"""Which modules LoRA adapts, in the two forms ms-swift and peft take:

- module names (ms-swift's `target_modules`, peft's list, LLaMA-Factory's `lora_target`): a name
  matches a module whose full name is it or ends in `.NAME` (`q_proj`, `self_attn.q_proj`), and
  the shorthand `all-linear` (every linear layer of the language model but the output head);
- a regex (ms-swift's `target_regex`, peft's `target_modules` given as a string): full-matched
  against each module's full name.

A recipe's `lora` record keeps `target_modules` (`all-linear` or a list of names) or
`target_regex`, never both. A vision-language recipe with all-linear also keeps
`peft_target_regex`: the modules all-linear took there (the unfrozen parts' linear layers, as
ms-swift picks them), as one regex peft full-matches. peft's own all-linear would adapt the
frozen vision tower and aligner too, so `emit hf` / `emit trl` give peft this regex; ms-swift
(`emit swift`) and the probe's flags keep all-linear. No torch here: model/lora_match.py checks
the targets against a model."""

from __future__ import annotations

import re

from ..errors import UsageError

ALL_LINEAR = "all-linear"
PEFT_REGEX = "peft_target_regex"
NAMES_FLAG, REGEX_FLAG = "--lora-target-modules", "--lora-target-regex"
_NAME = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")
# ms-swift's other shorthands (TunerArguments): autotune adapts no embedding or norm by shorthand.
_SWIFT_ONLY = ("all-embedding", "all-norm")


def parse_names(text, flag: str = NAMES_FLAG) -> tuple[str, ...]:
    """Module names from the command line ("q_proj,v_proj", "q_proj v_proj") or a list; refuses
    a regex (its own flag), ms-swift's shorthands autotune does not take, and all-linear mixed
    with names."""
    items = [text] if isinstance(text, str) else list(text)
    names = tuple(n for item in items for n in re.split(r"[,\s]+", str(item)) if n)
    if not names:
        raise UsageError(flag, "no module name given", f"for example {NAMES_FLAG} q_proj,v_proj (or all-linear)")
    for name in names:
        if name in _SWIFT_ONLY:
            raise UsageError(flag, f"ms-swift's {name} is not taken here",
                             "name the modules instead (for example embed_tokens), or all-linear")
        if name != ALL_LINEAR and not _NAME.fullmatch(name):
            raise UsageError(flag, f"{name!r} is not a module name (letters, digits, _ and dots)",
                             f"give a regex with {REGEX_FLAG} (ms-swift's target_regex), or names like q_proj,v_proj")
    if ALL_LINEAR in names and len(names) > 1:
        raise UsageError(flag, f"{ALL_LINEAR} already takes every linear layer; it cannot be mixed with names",
                         f"give {ALL_LINEAR} alone, or the names alone")
    return tuple(dict.fromkeys(names))


def check_regex(regex, flag: str = REGEX_FLAG) -> str:
    if not isinstance(regex, str) or not regex:
        raise UsageError(flag, "needs a regular expression", f"for example {REGEX_FLAG} '.*\\.(q_proj|v_proj)'")
    try:
        re.compile(regex)
    except re.error as exc:
        raise UsageError(flag, f"{regex!r} is not a valid regular expression ({exc})") from None
    return regex


def is_all_linear(names: tuple[str, ...], regex: str | None) -> bool:
    return regex is None and tuple(names) == (ALL_LINEAR,)


def peft_target(names: tuple[str, ...], regex: str | None):
    """peft's LoraConfig `target_modules`: the regex string, the all-linear shorthand, or the names."""
    if regex is not None:
        return regex
    return ALL_LINEAR if is_all_linear(names, None) else list(names)


def covering_regex(targets, names) -> str:
    """A compact regex that full-matches exactly `targets` among the module `names`: each
    numeric path segment becomes \\d+ (one pattern for every layer), the layers under one parent
    are alternatives. A pattern that would also take a module outside the targets (Qwen2-VL's
    merger.mlp.\\d+ reaching its GELU between the two linears) keeps its names literally."""
    targets, names = list(dict.fromkeys(targets)), list(names)
    chosen = set(targets)
    groups: dict[str, list[str]] = {}
    for target in targets:
        groups.setdefault(r"\.".join(r"\d+" if seg.isdigit() else re.escape(seg) for seg in target.split(".")), []).append(target)
    patterns = []
    for pattern, members in groups.items():
        exact = all(re.fullmatch(pattern, n) is None or n in chosen for n in names)
        patterns += [pattern] if exact else [re.escape(m) for m in members]
    parents: dict[str, list[str]] = {}
    for pattern in patterns:
        parent, _, leaf = pattern.rpartition(r"\.")
        parents.setdefault(parent, []).append(leaf)
    regex = "^(?:" + "|".join(_alternative(parent, leaves) for parent, leaves in parents.items()) + ")$"
    if {n for n in names if re.fullmatch(regex, n)} != chosen:  # never expected: then every name, literally
        regex = "^(?:" + "|".join(re.escape(t) for t in targets) + ")$"
    return regex


def _alternative(parent: str, leaves: list[str]) -> str:
    leaf = leaves[0] if len(leaves) == 1 else f"(?:{'|'.join(leaves)})"
    return f"{parent}\\.{leaf}" if parent else leaf


def peft_target_of(lora: dict):
    """peft's `target_modules` for a recipe's `lora` record: its peft_target_regex where it has one."""
    return lora.get(PEFT_REGEX) or peft_target(*from_record(lora))


def record(names: tuple[str, ...], regex: str | None) -> dict:
    """The recipe's keys: which form, and the targets in it (peft takes either value as it is)."""
    return {"target_regex": regex} if regex is not None else {"target_modules": peft_target(names, None)}


def from_record(lora: dict | None) -> tuple[tuple[str, ...], str | None]:
    """(names, regex) of a recipe's `lora` record. An older recipe kept a regex as a
    `target_modules` string: peft matched any string but all-linear as one."""
    lora = lora or {}
    if lora.get("target_regex"):
        return (ALL_LINEAR,), lora["target_regex"]
    targets = lora.get("target_modules", ALL_LINEAR)
    if isinstance(targets, str) and targets != ALL_LINEAR:
        return (ALL_LINEAR,), targets
    return parse_names(targets, "RECIPE"), None


def cli_flags(lora: dict | None) -> list[str]:
    """The flags that give a probe these targets (none for the default)."""
    names, regex = from_record(lora)
    if regex is not None:
        return [REGEX_FLAG, regex]
    return [] if is_all_linear(names, None) else [NAMES_FLAG, ",".join(names)]


def alike_in_every_layer(names: tuple[str, ...], regex: str | None) -> bool:
    """Whether the adapters are the same in every layer, so a shallow copy's count extends to the
    full depth: names of a layer's own modules do; a regex or a dotted path could pick layers."""
    return regex is None and all("." not in n for n in names)

