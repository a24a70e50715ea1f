"""The model and LoRA flags that `probe` and `plan` share (one definition, one set of defaults)."""

from __future__ import annotations

import dataclasses

from ..errors import UsageError
from ..recipe.lora import NAMES_FLAG, REGEX_FLAG
from ..spec import DTYPES, TRAIN_TYPES, ProbeSpec

LORA_FLAGS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_target_regex")


def add_model_arguments(parser, model_help: str, train_type_help: str):
    """Adds the "model" group and a "training" group with the training type and LoRA flags;
    returns the training group so the command can add its own training flags to it."""
    model = parser.add_argument_group("model")
    model.add_argument("--model", metavar="DIR", help=model_help)
    model.add_argument("--model-config", metavar="PATH|NAME",
                       help="config.json or a directory holding one (random init: same memory and speed), or a built-in name such as tiny-llama")
    model.add_argument("--dtype", choices=DTYPES, default="bfloat16", help="model and training dtype (default: bfloat16)")
    train = parser.add_argument_group("training")
    train.add_argument("--train-type", choices=TRAIN_TYPES, default="full", help=train_type_help)
    # No argparse defaults: lora_kwargs fills ProbeSpec's, so that a LoRA flag given to a full fine-tune is seen.
    train.add_argument("--lora-r", type=int, help="LoRA rank (default: 8)")
    train.add_argument("--lora-alpha", type=int, help="LoRA alpha (default: 32)")
    train.add_argument("--lora-dropout", type=float, help="LoRA dropout (default: 0.05)")
    train.add_argument("--lora-target-modules", metavar="NAMES",
                       help="modules LoRA adapts, as ms-swift's --target_modules: names, comma- or space-separated "
                            "(q_proj,v_proj matches every module whose name ends in q_proj or v_proj), or all-linear "
                            "(default: all-linear, the language model's linear layers but the output head)")
    train.add_argument("--lora-target-regex", metavar="REGEX",
                       help="instead of names, as ms-swift's --target_regex: a regex full-matched against each module's "
                            "full name, e.g. '.*layers\\.[0-3]\\..*\\.(q_proj|v_proj)'")
    return train


def lora_kwargs(args) -> dict:
    """The LoRA settings for ProbeSpec (its defaults where a flag is not given). A full fine-tune
    has no adapters: a LoRA flag beside it would be dropped without a word, so it is refused."""
    given = [name for name in LORA_FLAGS if getattr(args, name, None) is not None]
    if given and args.train_type == "full":
        flag = "--" + given[0].replace("_", "-")
        raise UsageError(flag, "sets the LoRA adapters, and --train-type full trains none", f"add --train-type lora (or qlora), or leave {flag} out")
    if args.lora_target_modules is not None and args.lora_target_regex is not None:
        raise UsageError(REGEX_FLAG, f"and {NAMES_FLAG} both choose the LoRA targets", "give one of them")
    defaults = {f.name: f.default for f in dataclasses.fields(ProbeSpec)}
    return {name: defaults[name] if getattr(args, name, None) is None else getattr(args, name) for name in LORA_FLAGS}
