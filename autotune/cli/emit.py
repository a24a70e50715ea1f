"""`autotune emit TARGET RECIPE -o FILE`: write the launch file a framework reads."""

from __future__ import annotations

import argparse
import shlex
import sys

from ..emit import TARGETS, files, require_validated
from ..errors import UsageError
from ..recipe.schema import check_writable, load_recipe, write_atomic
from .output import results
from . import next_steps

EXAMPLES = """\
examples:
  # ms-swift 4.x argument file (run: swift sft swift.yaml); version detected, or --swift-version
  python -m autotune emit swift recipe.yaml -o swift.yaml --dataset my-data.jsonl

  # the same as a shell script in ms-swift's example style; 3.x form (swift sft --config ...)
  python -m autotune emit swift recipe.yaml -o train.sh --swift-version 3.12

  # Hugging Face Trainer: TrainingArguments JSON + train_args.model.json (attn_implementation, dtype, max_length)
  python -m autotune emit hf recipe.yaml -o train_args.json

  python -m autotune emit deepspeed recipe.yaml -o ds_config.json
  python -m autotune emit accelerate recipe.yaml -o accelerate.yaml
  python -m autotune emit llamafactory recipe.yaml -o llamafactory.yaml

  # your own ms-swift file with the recipe's settings put in (dataset, learning rate, ... kept)
  python -m autotune emit swift recipe.yaml -o tuned.yaml --swift-args my-sft.yaml

  # an RLHF recipe (probe --rlhf-type grpo|dpo): swift writes `swift rlhf` files; trl a GRPOConfig /
  # DPOConfig JSON + grpo.model.json (model, LoRA, the prompt length, the rollout share)
  python -m autotune emit swift grpo-recipe.yaml -o grpo.sh
  python -m autotune emit trl grpo-recipe.yaml -o grpo.json

A recipe whose validation did not pass, or a plan (`autotune plan`), is refused unless
--allow-unvalidated.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("emit", help="write launch files (ms-swift, HF Trainer, DeepSpeed, accelerate, LLaMA-Factory, TRL) from a recipe",
                       description="Turn a recipe into the argument or config file a training framework reads.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", choices=TARGETS, help="which framework's file")
    p.add_argument("recipe", metavar="RECIPE", help="recipe YAML written by `autotune probe`")
    p.add_argument("-o", "--out", required=True, help="file to write ('-' for stdout)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--swift-version", metavar="X.Y", help="ms-swift version to write for (default: the installed one, else 4.6)")
    p.add_argument("--script", action="store_true", default=None, help="swift: write a shell script (default when -o ends in .sh)")
    p.add_argument("--dataset", help="dataset to write instead of the YOUR_DATASET placeholder (swift, llamafactory)")
    p.add_argument("--swift-args", metavar="FILE", help="swift: your ms-swift arguments (YAML/JSON or a script running `swift sft`), "
                                                        "written back with the recipe's settings in place of theirs and the rest kept")
    p.add_argument("--allow-unvalidated", action="store_true", help="emit a recipe whose validation did not pass, or a plan")
    p.set_defaults(run=run)


def write_files(outputs: dict[str, str], force: bool, flag: str = "--out") -> None:
    """Check every path first, then write each atomically: all or nothing refused."""
    for path in outputs:
        check_writable(path, force, flag)
    for path, text in outputs.items():
        write_atomic(path, text, executable=path.endswith(".sh"))


def emit_paths(recipe_out: str, targets: list[str]) -> list[str]:
    """Launch files `probe --emit` writes beside the recipe: r.yaml -> r.swift.yaml, r.swift.sh, r.hf.json, ..."""
    stem = recipe_out[: -len(".yaml")] if recipe_out.endswith(".yaml") else recipe_out
    names = {"swift": [".swift.yaml", ".swift.sh"], "hf": [".hf.json", ".hf.model.json"], "deepspeed": [".deepspeed.json"],
             "accelerate": [".accelerate.yaml", ".accelerate.deepspeed.json"], "llamafactory": [".llamafactory.yaml", ".llamafactory.deepspeed.json"],
             "trl": [".trl.json", ".trl.model.json"]}
    return [stem + suffix for target in targets for suffix in names[target]]


def emit_for_probe(target: str, recipe, recipe_out: str, swift_version: str | None, swift_args: str | None = None) -> dict[str, str]:
    """`swift_args`: probe --swift-args's file, which the swift files are then written on."""
    first = emit_paths(recipe_out, [target])[0]
    base = swift_args if target == "swift" else None
    outputs = files(target, recipe, first, swift_version, swift_args=base)
    if target == "swift":
        outputs.update(files("swift", recipe, emit_paths(recipe_out, ["swift"])[1], swift_version, swift_args=base))
    return outputs


def run(args) -> int:
    recipe = load_recipe(args.recipe)
    require_validated(recipe, args.allow_unvalidated)
    if recipe.settings.task == "eval":
        raise UsageError("RECIPE", "this recipe is evaluation only (settings.task: eval): there is no training to launch",
                         "read its eval settings, or recipe.apply them to your TrainingArguments")
    if args.swift_version and args.target != "swift":
        raise UsageError("--swift-version", f"only applies to `emit swift`, not {args.target}")
    if args.script and args.target != "swift":  # the other targets write their one file format
        raise UsageError("--script", f"only applies to `emit swift`, not {args.target}", "leave --script out")
    if args.dataset and args.target not in ("swift", "llamafactory"):  # the others' files name no dataset
        raise UsageError("--dataset", f"only applies to `emit swift` and `emit llamafactory`, not {args.target}",
                         "leave --dataset out; your training script loads the data")
    out = args.out
    outputs = files(args.target, recipe, "-" if out == "-" else out, args.swift_version, args.dataset, args.script, args.swift_args)
    if out == "-":  # the file the framework reads; a second one (a sidecar) would make stdout unparseable
        main_text, *rest = outputs.values()
        results().write(main_text)
        if rest:
            print(f"note: {args.target} also writes {', '.join(p.replace('-', 'OUT', 1) for p in list(outputs)[1:])} beside its file; "
                  "give -o a file name to get both", file=sys.stderr)
        return 0
    write_files(outputs, args.force)
    for path in outputs:
        print(f"wrote {path}", file=sys.stderr)
    if args.target == "swift" and recipe.swift_args and not args.swift_args:
        print(f"note: the recipe was probed from {recipe.swift_args}; add --swift-args {shlex.quote(recipe.swift_args)} "
              "to write that file back with these settings (its dataset, learning rate, ... kept)", file=sys.stderr)
    for path in outputs:
        command = next_steps.launch_command(args.target, path, args.swift_version, recipe.settings.rlhf_type)
        if command:
            print(f"next: {command}", file=sys.stderr)
    return 0
