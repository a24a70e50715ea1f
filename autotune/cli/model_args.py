"""The model and LoRA flags that `probe` and `plan` share (one definition, one set of defaults)."""

from __future__ import annotations

from ..spec import DTYPES, TRAIN_TYPES


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
    train.add_argument("--lora-r", type=int, default=8, help="LoRA rank (default: 8)")
    train.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha (default: 32)")
    train.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout (default: 0.05)")
    train.add_argument("--lora-target-modules", default="all-linear", help="peft target_modules (default: all-linear, the LM's linear layers)")
    return train
