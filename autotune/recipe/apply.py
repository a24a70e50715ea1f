"""`recipe.apply(training_args)`: a copy of a Hugging Face `TrainingArguments` with the tuned
values set -- the values the probe's trials ran with (training_args.arguments). Where the user
had set a value of their own that differs, it warns (and the tuned value wins: the recipe is
what was measured to fit).

The copy is built anew (`dataclasses.replace`), so `__post_init__` derives what depends on the
values: setting `bf16` on an existing TrainingArguments leaves its `mixed_precision` at "no",
and the Trainer would run without autocast -- found by the launched-Trainer test."""

from __future__ import annotations

import copy
import dataclasses
import warnings

from .training_args import arguments, checkpointing_names


class RecipeOverrideWarning(UserWarning):
    """A training argument the user set differs from the recipe's tuned value."""


def tuned_values(recipe, fields: set[str]) -> dict:
    return arguments(recipe.settings, fields)


def apply(recipe, training_args):
    """Return a copy of `training_args` with the recipe's values; the original is untouched."""
    cls = type(training_args)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = copy.copy(training_args)  # read the user's values; the result is built by replace below
    gc_name, _ = checkpointing_names(set(fields))
    changes: dict = {}
    aliases = {"activation_checkpointing": "gradient_checkpointing", "activation_checkpointing_kwargs": "gradient_checkpointing_kwargs"}
    for key, value in tuned_values(recipe, set(fields)).items():
        current = getattr(out, key, None)
        default = fields[key].default if fields[key].default is not dataclasses.MISSING else None
        if key == gc_name and current is None:
            current = False  # unset checkpointing reads as off
        if current != value and current != default and current is not None:
            warnings.warn(f"TrainingArguments.{key}={current!r} replaced by the recipe's {value!r}",
                          RecipeOverrideWarning, stacklevel=3)
        changes[key] = value
        if key in aliases and aliases[key] in fields and fields[aliases[key]].init:
            changes[aliases[key]] = value  # keep the deprecated alias in step
    return dataclasses.replace(training_args, **{k: v for k, v in changes.items() if fields[k].init})
