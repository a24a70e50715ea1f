"""`autotune check RECIPE`: pre-flight. Does the recipe still fit on this machine?"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from types import SimpleNamespace

from ..cluster import launch
from ..emit import swift_read
from ..emit.common import HELD_ENV, TOKEN_ENV, VISION_ENV
from ..errors import UsageError
from ..recipe import lora
from ..recipe.schema import load_recipe
from ..sizes import format_size
from .interrupt import deferred_interrupt
from .output import print_json

EXAMPLES = """\
exit codes:
  0  fits: the recipe's configuration ran within the usable budget (capacity x (1 - margin))
  2  bad input: missing or malformed recipe, bad flag (one line naming it)
  3  does not fit: a train or eval step ran out of memory or past the budget (peak and by how much)
  4  fingerprint changed: GPU model, capacity, device count, world size, or torch/transformers/peft
     version differ from the recipe's; the differences and the re-probe command are printed

examples:
  # in a job script, before the long run
  python -m autotune check recipe.yaml || exit $?

  # check the ms-swift file you will launch with (its batch sizes etc. replace the recipe's)
  python -m autotune check recipe.yaml --swift-args swift.yaml

  # machine-readable
  python -m autotune check recipe.yaml --format json

  # a stricter budget than the recipe's margin (what-if; the fingerprint is unchanged)
  python -m autotune check recipe.yaml --margin 0.3

  # a recipe sharded over 8 GPUs: every rank runs its shard of the step, as the probe did
  python -m autotune check recipe.yaml --nproc-per-node 8
"""


def add_parser(sub) -> None:
    p = sub.add_parser("check", help="pre-flight: verify a recipe still fits here (exit 0/3/4)",
                       description="Compare the recipe's hardware and library fingerprint with this machine, then run "
                                   "a few real train steps (and the eval phase when the recipe has one) at the recipe's "
                                   "settings. No search.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", metavar="RECIPE", help="recipe YAML written by `autotune probe`")
    p.add_argument("--swift-args", metavar="FILE", help="the ms-swift arguments you will launch, whose settings replace the recipe's: "
                                                        "a YAML/JSON file (3.x or 4.x) or a shell script running `swift sft` / `swift rlhf` "
                                                        "(e.g. the .swift.sh emit writes)")
    p.add_argument("--device", choices=("cuda", "sim"), help="device to check on (default: the recipe's)")
    p.add_argument("--gpu-memory", metavar="SIZE[,SIZE...]",
                   help="device capacity (default: the recipe's), or one per rank under --nproc-per-node; "
                        "a different capacity is a fingerprint change")
    p.add_argument("--margin", type=float, help="fraction of capacity kept free (default: the recipe's margin)")
    p.add_argument("--world-size", type=int, help="world size the job runs at (default: $WORLD_SIZE, else the recipe's)")
    p.add_argument("--steps", type=int, default=3, help="steps per phase, at least 3 (default: 3)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="json: one JSON object on stdout")
    launch.add_torchrun_arguments(p.add_argument_group("cluster: check a sharded recipe at its world size (README: Clusters)"))
    p.set_defaults(run=run)


def with_swift_args(recipe, path: str, environ: dict | None = None):
    """The recipe with the ms-swift file's settings (and the media variables exported here, which
    ms-swift's templates read too), and a note when the file leaves max_length unset (ms-swift
    then trains at the model's full length, which the check then runs) or when a media limit the
    recipe needs is neither in the file nor exported (ms-swift would use its default). A variable
    the recipe holds at one value (emit/common.py HELD_ENV) set to another is refused."""
    from ..check import model_config, pixels_per_token, unset_length
    from ..model.lora_match import check_before_load

    environ = dict(os.environ) if environ is None else environ
    probed_env = dict(recipe.settings.env or {})
    args = swift_read.read_args(path)
    swift_read.refuse_unprobed(args, path)
    _same_model(recipe, args, path, model_config)
    settings, model = swift_read.settings_from_args(args, environ, pixels_per_token(recipe))
    ignored = []
    if not recipe.multimodal:
        settings, ignored = swift_read.without_vision(settings)
    if model.get("lora"):  # refused here, naming the file, not at the model load
        check_before_load(model_config(recipe), *lora.from_record(model["lora"]), flag="--swift-args")
    probed_length = recipe.settings.max_length
    recipe = dataclasses.replace(recipe, settings=dataclasses.replace(recipe.settings, **settings),
                                 model=dataclasses.replace(recipe.model, **model))
    recipe, note = unset_length(recipe, args, path)
    data = recipe.dataset or {}
    if data and data.get("used") is not False and args.get("max_length") is not None and \
            (recipe.settings.max_length or 0) > (probed_length or 0):
        text = (f"the recipe was probed at {probed_length} tokens, the longest sample of {data['path']} it measured; {path} sets "
                f"max_length {recipe.settings.max_length}, checked as written (`emit swift --swift-args {path}` writes max_length "
                f"{probed_length})")
        note = f"{note}; {text}" if note else text
    given = swift_read.media_env(args, environ)
    held = {k: v for k, v in (recipe.settings.env or {}).items() if k in HELD_ENV}
    for key, value in held.items():
        if key in given and given[key] != value:
            raise UsageError("--swift-args", f"{key}={given[key]} ({path} or this shell) changes the media worst case, which the "
                                             f"recipe holds at {key}={value} and a check cannot vary",
                             f"set {key}={value} or leave it unset")
    given |= {TOKEN_ENV[k].upper(): v for k, v in given.items() if k in TOKEN_ENV}  # the same limit, in tokens
    unset = {k: v for k, v in (recipe.settings.env or {}).items() if k in VISION_ENV and k not in given}
    if unset:
        media = (f"neither {path} nor this shell sets {', '.join(unset)}: ms-swift's template then uses its default limit; "
                 f"export {' '.join(f'{k}={v}' for k, v in unset.items())} before the launch (checked at the recipe's value)")
        note = f"{note}; {media}" if note else media
    changed = {k: v for k, v in swift_read.media_env(args, environ).items() if k in probed_env and probed_env[k] != v}
    if changed and recipe.multimodal:  # the launch's limits are what is checked; say they are not the probe's
        text = ", ".join(f"{k}={v} ({path} or this shell) replaces the recipe's {probed_env[k]}" for k, v in changed.items())
        note = f"{note}; {text}" if note else text
    if ignored:
        text = f"{', '.join(ignored)}: ignored, as ms-swift does for a text model (nothing here reads them)"
        note = f"{note}; {text}" if note else text
    return recipe, note


def _same_model(recipe, args: dict, path: str, model_config) -> None:
    """Refuse a file that trains another model than the recipe's (where the file's model is a local
    directory: a hub id cannot be read here). The check would run the recipe's model, not the file's."""
    from ..model.source import resolve
    from ..plan.match import config_sizes, size_differences

    name = args.get("model")
    if not name or not (Path(str(name)).expanduser() / "config.json").is_file():
        return
    theirs, ours = resolve(None, str(Path(str(name)).expanduser())).config, model_config(recipe)
    differ = ([f"model_type {theirs.model_type} vs {ours.model_type}"] if theirs.model_type != ours.model_type
              else size_differences(config_sizes(theirs), config_sizes(ours)))
    if differ:
        raise UsageError("--swift-args", f"{path} trains another model ({name}) than the recipe was probed on ({recipe.model.path}): "
                                         f"{differ[0]}", f"probe that model: autotune probe --swift-args {path}")


def _attention_runs_here(recipe, args) -> None:
    """An attn_impl the file sets that cannot run on this device: one line naming the file's key
    (the model build would name probe's --attn, a flag check has not)."""
    from ..devices import available_kind
    from ..emit.swift import ATTN_IMPL
    from ..search.attention import attn_unavailable_reason

    attn = recipe.settings.attn_implementation
    if attn != "flash_attention_2":  # sdpa and eager run everywhere transformers does
        return
    import torch

    kind = available_kind(args.device or recipe.hardware.device)
    device = SimpleNamespace(kind=kind, torch_device=torch.device("cuda", 0) if kind == "cuda" else None)  # what the reason reads
    reason = attn_unavailable_reason(attn, device, recipe.settings.torch_dtype or recipe.model.dtype)
    if reason:
        raise UsageError("--swift-args", f"attn_impl {ATTN_IMPL.get(attn, attn)} in {args.swift_args} cannot run here: {reason}",
                         "check where it runs (a CUDA card with flash-attn), or set attn_impl: sdpa to check sdpa's memory here")


def reprobe_out(recipe_path: str) -> str:
    """r.yaml -> r.reprobe.yaml (r.reprobe-2.yaml, ... when taken): never the user's file."""
    path = Path(recipe_path)
    stem = path.name[: -len(path.suffix)] if path.suffix in (".yaml", ".yml") else path.name
    for n in range(1, 100):
        candidate = path.with_name(f"{stem}.reprobe{'' if n == 1 else f'-{n}'}.yaml")
        if not candidate.exists():
            return str(candidate)
    return str(path.with_name(f"{stem}.reprobe-new.yaml"))


def run(args) -> int:
    if args.steps < 3:
        raise UsageError("--steps", f"need at least 3 steps, got {args.steps}", "AdamW creates its state in step 1")
    if args.world_size is not None and args.world_size < 1:
        raise UsageError("--world-size", f"must be a positive whole number, got {args.world_size}")
    if launch.wants_torchrun(args):
        return launch.relaunch(args.argv, args)
    with deferred_interrupt():
        from ..check import check, reprobe_command  # torch: imported only when a check runs, so --help is fast

    recipe, note = load_recipe(args.recipe), None
    if args.swift_args:
        recipe, note = with_swift_args(recipe, args.swift_args)
        _attention_runs_here(recipe, args)
    gpu_memory, per_rank = launch.gpu_memory_sizes(args.gpu_memory)
    if per_rank and launch.rank_from_env()[1] != len(per_rank):
        raise UsageError("--gpu-memory", f"{len(per_rank)} sizes need as many ranks",
                         f"add --nproc-per-node {len(per_rank)}, or give a single size")
    result = check(recipe, device_kind=args.device, gpu_memory=gpu_memory, margin=args.margin,
                   world_size=args.world_size, steps=args.steps, gpu_memory_per_rank=per_rank)
    if note:
        result.notes.insert(0, note)
    if result.reprobe_command:  # the hint writes beside the recipe, under a name not taken
        result.reprobe_command = reprobe_command(recipe, device=args.device or recipe.hardware.device,
                                                 capacity=result.capacity_bytes, out=reprobe_out(args.recipe),
                                                 gpu_memory=args.gpu_memory,
                                                 world_size=args.world_size or int(os.environ.get("WORLD_SIZE", 0)) or None)
    if launch.rank_from_env()[0] != 0:  # under torchrun every rank agrees; rank 0 speaks
        return launch.report_exit_code(result.exit_code)
    if args.format == "json":
        data = dataclasses.asdict(result)
        data["exit_code"] = result.exit_code
        print_json(data)
    else:
        print_text(result, args.recipe)
    return launch.report_exit_code(result.exit_code)


def print_text(result, recipe_path: str) -> None:
    out = sys.stdout
    if result.status == "fingerprint_mismatch":
        print(f"fingerprint changed: {recipe_path} was made elsewhere", file=out)
        for d in result.differences:
            print(f"  {d.key}: recipe {d.recipe!r}, here {d.here!r}", file=out)
        print(f"re-probe here:\n  {result.reprobe_command}", file=out)
        return
    for note in result.notes:
        print(f"note: {note}", file=out)
    for t in result.trials:
        print(f"{t.phase:<5} {t.outcome:<11} peak {format_size(t.peak_bytes):>10}", file=out)
    budget = f"usable {format_size(result.budget_bytes)} of {format_size(result.capacity_bytes)} (margin {result.margin:.0%})"
    if result.status == "fits":
        print(f"fits: peak {format_size(result.peak_bytes)}, {budget}, {result.wall_s:.1f}s", file=out)
    else:
        over = f", {format_size(result.over_by_bytes)} over" if result.over_by_bytes is not None else ""
        oom = [t.phase for t in result.trials if t.outcome == "oom"]
        where = f" ({', '.join(oom)} ran out of memory)" if oom else ""
        print(f"does not fit{where}: peak {format_size(result.peak_bytes)}{over}; {budget}", file=out)
