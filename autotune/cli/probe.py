"""`autotune probe`: run real training steps, find what fits, write a recipe."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os

from ..cluster import launch
from ..cluster.journal import journal_path
from ..emit import TARGETS as EMIT_TARGETS
from ..emit.swift import resolve_version as resolve_swift_version
from ..errors import UsageError
from ..model.source import builtin_names
from ..recipe.schema import check_writable, load_recipe, save_recipe
from ..recipe.training_args import EVAL_OUTPUTS
from ..spec import ATTN_IMPLEMENTATIONS, DEFAULT_EVAL_STEPS, DEFAULT_LENGTH_GRANULARITY, FRONTIER_DIMENSIONS, TASKS, DEFAULT_MARGIN, DEFAULT_MAX_BATCH_SIZE, DEFAULT_VALIDATE_STEPS, PROCESSOR, QWEN_VL_UTILS, ProbeSpec
from . import lever_args, multimodal_args, rlhf_args, swift_probe_args
from .model_args import add_model_arguments, lora_kwargs
from .emit import emit_for_probe, emit_paths, write_files
from . import next_steps
from .interrupt import deferred_interrupt
from .output import ConsoleProgress, files_and_next, print_json, stderr_console, stdout_console, summary
from .report import check_plot, write_plot


EXAMPLES = f"""\
examples:
  # demo on a simulated 64 MiB GPU, no CUDA needed (about 15 s on 2 quiet CPU cores)
  python -m autotune probe --model-config tiny-llama --device sim --gpu-memory 64MiB --max-length 128 \\
      --global-batch-size 8 --validate-steps 5

  # a weights-free probe of a real architecture on the real card: config.json only
  python -m autotune probe --model-config ./Qwen2.5-7B/config.json --train-type lora --max-length 4096 \\
      --global-batch-size 64 --out qwen7b-lora.yaml

  # LoRA on the attention's query and value projections only (ms-swift's --target_modules q_proj v_proj);
  # a regex instead: --lora-target-regex '.*layers\\.[0-3]\\..*(q_proj|v_proj)' (ms-swift's --target_regex)
  python -m autotune probe --model-config tiny-qwen2 --device sim --gpu-memory 32MiB --max-length 64 \\
      --train-type lora --lora-target-modules q_proj,v_proj --emit swift --out lo.yaml

  # only sdpa, checkpointing always on, eval as a Trainer without compute_metrics, and a plot
  python -m autotune probe --model-config tiny-qwen2 --device sim --gpu-memory 2GiB --max-length 256 \\
      --attn sdpa --gradient-checkpointing on --prediction-loss-only --plot probe.png

  # your ms-swift file as the input: its model, tuner, length and global batch; written back tuned, the rest kept
  python -m autotune probe --swift-args my-sft.yaml --out my-sft.recipe.yaml --emit swift

  # real weights, emulate a 24 GiB card on a bigger one, machine-readable output
  python -m autotune probe --model ./Qwen2.5-0.5B --max-length 2048 --gpu-memory 24GiB --format json

{multimodal_args.EXAMPLES}
{lever_args.EXAMPLES}
{rlhf_args.EXAMPLES}
built-in configs: {', '.join(builtin_names())}
"""


def add_parser(sub) -> None:
    p = sub.add_parser("probe", help="probe real training steps and write a recipe",
                       description="Load the model on the device, run short real training steps at candidate "
                                   "per-device batch sizes, catch OOM, and write a recipe of what fits.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    train = add_model_arguments(p, "local Hugging Face model directory (real weights)",
                                "full fine-tune, peft LoRA, or QLoRA (4-bit nf4 language model + LoRA) (default: full)")
    train.add_argument("--swift-args", metavar="FILE",
                       help="the ms-swift arguments you will launch (YAML/JSON, or a script running `swift sft` / `swift rlhf`): "
                            "the model, tuner, max_length, dtype, global batch, freezing, media limits, levers and rlhf settings "
                            "come from it (flags given here win); --emit swift then writes it back with the tuned settings")
    train.add_argument("--max-length", type=multimodal_args.whole_or_auto, metavar="N|auto",
                       help="tokens per sample; every sample is probed at exactly this length (required unless --dataset measures it; "
                            "with it, a cap). auto: the longest that fits at --per-device-train-batch-size, up to the model's limit")
    train.add_argument("--length-granularity", type=int, default=DEFAULT_LENGTH_GRANULARITY, metavar="N",
                       help=f"--max-length auto finds a multiple of N tokens, exactly (default: {DEFAULT_LENGTH_GRANULARITY}; 1 for the exact token)")
    train.add_argument("--per-device-train-batch-size", type=int, metavar="B",
                       help="the batch a limit search (auto) runs at (default: 1); the batch search itself uses --max-batch-size")
    train.add_argument("--global-batch-size", type=int, metavar="G", help="keep this global batch: per-device batch x accumulation x world size = G")
    space = p.add_argument_group("search space (the fastest configuration that fits wins)")
    space.add_argument("--gradient-checkpointing", nargs="?", const="on", default="search", metavar="on|off|search|every-N|partial",
                       help="non-reentrant gradient checkpointing: on, off, or search both (default: search, or both as plan says it; the bare flag means on); "
                            "every-N: every N-th layer; partial: off, on and every-N with N searched")
    space.add_argument("--attn", default=",".join(ATTN_IMPLEMENTATIONS), metavar="LIST",
                       help=f"attention implementations to search, comma-separated (default: {','.join(ATTN_IMPLEMENTATIONS)}; "
                            "those that cannot run here are recorded as skipped)")
    space.add_argument("--task", choices=TASKS, default="train",
                       help="train (default), or eval: evaluation only, the Trainer's evaluate() (generate() with "
                            "--predict-with-generate) with no training and no optimizer state, as a benchmark runs")
    space.add_argument("--per-device-eval-batch-size", type=int, metavar="B",
                       help="with --task eval and a limit given as auto: the eval batch it is searched at (default: 1)")
    lever_args.add_arguments(space)
    space.add_argument("--no-eval", action="store_true", help="do not search the eval batch")
    space.add_argument("--eval-steps", type=int,
                       help=f"eval steps whose logits stay on the device; becomes eval_accumulation_steps (default: {DEFAULT_EVAL_STEPS})")
    space.add_argument("--eval-outputs", choices=EVAL_OUTPUTS, metavar="|".join(EVAL_OUTPUTS),
                       help="what the eval phase keeps on the device, as your trainer does: loss (no compute_metrics: "
                            "ms-swift's default), logits (a compute_metrics), argmax (preprocess_logits_for_metrics "
                            "returning ids: ms-swift --metric acc), generate (predict_with_generate). "
                            "Default: loss with --emit swift, else logits")
    space.add_argument("--prediction-loss-only", action="store_true",
                       help="the same as --eval-outputs loss (the Trainer without compute_metrics: no logits kept)")
    space.add_argument("--predict-with-generate", action="store_true", help="the eval phase probes generate() (KV cache growth)")
    space.add_argument("--max-new-tokens", type=int, help="tokens generated per sample with --predict-with-generate")
    space.add_argument("--validate-steps", type=int, default=DEFAULT_VALIDATE_STEPS,
                       help=f"steps of the validation run of the chosen configuration: training steps (eval steps with --task eval) "
                            f"(default: {DEFAULT_VALIDATE_STEPS})")
    multimodal_args.add_arguments(p)
    rlhf_args.add_arguments(p)
    dev = p.add_argument_group("device and search")
    dev.add_argument("--device", help="cuda (default where available) or sim (a simulated GPU on the CPU)")
    dev.add_argument("--gpu-memory", metavar="SIZE", help="capacity: 24GiB, 80GB, 512MiB or bytes. On cuda, emulates a smaller card; required for sim")
    dev.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help=f"fraction of capacity kept free (default: {DEFAULT_MARGIN})")
    dev.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE, help=f"largest per-device batch to try (default: {DEFAULT_MAX_BATCH_SIZE})")
    dev.add_argument("--steps", type=int, default=3, help="optimizer steps per trial, at least 3 (default: 3)")
    dev.add_argument("--seed", type=int, default=0, help="random seed for init and inputs (default: 0)")
    dev.add_argument("--from-plan", metavar="PLAN", help="a recipe written by `autotune plan --out`: start the search at its predicted frontier")
    first = dev.add_mutually_exclusive_group()
    first.add_argument("--plan-first", action="store_true",
                       help="plan every candidate under fake tensors on the CPU first and start each search at its "
                            "planned frontiers (the default on cuda)")
    first.add_argument("--no-plan", action="store_true", help="search without a plan first (the default on sim)")
    out = p.add_argument_group("output")
    out.add_argument("--out", default="autotune-recipe.yaml", help="recipe file to write: YAML, or JSON where the name ends in .json (default: autotune-recipe.yaml)")
    out.add_argument("--force", action="store_true", help="overwrite --out (and --plot) if it exists")
    out.add_argument("--plot", metavar="FILE.png", help="also draw peak memory and throughput against batch size (needs matplotlib)")
    out.add_argument("--format", choices=("text", "json"), default="text", help="json: print the recipe as JSON on stdout and nothing else there")
    out.add_argument("--quiet", action="store_true", help="no progress on stderr")
    out.add_argument("--emit", action="append", choices=EMIT_TARGETS, metavar="TARGET",
                     help=f"also write launch files beside --out ({', '.join(EMIT_TARGETS)}); swift writes OUT.swift.yaml and OUT.swift.sh")
    out.add_argument("--swift-version", metavar="X.Y", help="ms-swift version for --emit swift (default: installed, else 4.6)")
    launch.add_arguments(p)
    p.set_defaults(run=run, kept_on_interrupt=kept_on_interrupt, option_dests=swift_probe_args.option_dests(p))


def spec_from_args(args, cluster: bool = True) -> ProbeSpec:
    """`cluster=False` (autotune plan): no device, ranks, journal or workers."""
    _check_no_eval(args)
    frontier = _frontier(args, cluster)
    return ProbeSpec(
        max_length=None if args.max_length == "auto" else args.max_length,
        frontier=frontier, length_granularity=getattr(args, "length_granularity", DEFAULT_LENGTH_GRANULARITY),
        per_device_train_batch_size=getattr(args, "per_device_train_batch_size", None),
        per_device_eval_batch_size=getattr(args, "per_device_eval_batch_size", None), task=getattr(args, "task", "train"), model=args.model, model_config=args.model_config, train_type=args.train_type,
        **lora_kwargs(args), dtype=args.dtype, device=args.device,
        margin=args.margin,
        max_batch_size=args.max_batch_size, global_batch_size=args.global_batch_size, steps=args.steps,
        seed=args.seed, attn_candidates=tuple(a.strip() for a in args.attn.split(",") if a.strip()),
        **lever_args.spec_kwargs(args), eval=not args.no_eval,
        eval_steps=DEFAULT_EVAL_STEPS if args.eval_steps is None else args.eval_steps, prediction_loss_only=args.prediction_loss_only,
        predict_with_generate=args.predict_with_generate, max_new_tokens=args.max_new_tokens, validate_steps=args.validate_steps,
        eval_outputs=_eval_outputs(args), use_cache_off_in_sub_configs=_launches_swift(args),
        plan_first="off" if getattr(args, "no_plan", False) else "on" if getattr(args, "plan_first", False) else "auto",
        **{**multimodal_args.spec_kwargs(args), "image_resize": _image_resize(args)}, rlhf=rlhf_args.rlhf_spec(args),
        **(launch.spec_fields(args) if cluster else {"gpu_memory": None}),
    )


# The eval phase's flags (--eval-steps has no argparse default, so that giving it is seen).
def _check_no_eval(args) -> None:
    """With --no-eval no eval phase runs and the recipe keeps no eval settings: an eval flag beside
    it would be dropped without a word."""
    if not getattr(args, "no_eval", False):
        return
    for name in swift_probe_args.EVAL_FLAGS:
        if getattr(args, name, None) not in (None, False):
            flag = "--" + name.replace("_", "-")
            raise UsageError(flag, "sets the eval phase, which --no-eval skips", f"leave {flag} out, or drop --no-eval")


def _frontier(args, cluster: bool) -> str | None:
    """The one limit given as auto (issue #14), if any."""
    auto = [name for name in FRONTIER_DIMENSIONS if getattr(args, name, None) == "auto"]
    flags = ["--" + name.replace("_", "-") for name in auto]
    if auto and not cluster:
        raise UsageError(flags[0], "autotune plan predicts the batch frontier; a limit is searched by `autotune probe`",
                         f"run `autotune probe ... {flags[0]} auto`, or give a number here")
    if len(auto) > 1:
        raise UsageError(flags[1], f"only one limit can be auto at a time ({' and '.join(flags)} were)",
                         f"give {flags[1]} a number, search it in a second probe")
    return auto[0] if auto else None


def _eval_outputs(args) -> str | None:
    """--eval-outputs, or its default for the launch target: ms-swift sets no compute_metrics
    unless asked (--metric / --eval_metric), so its eval keeps the loss only."""
    chosen = getattr(args, "eval_outputs", None)
    if chosen or args.prediction_loss_only or args.predict_with_generate:
        return chosen
    return "loss" if _launches_swift(args) else None


def _image_resize(args) -> str | None:
    """The rule that sizes a Qwen-VL image as the launch does: qwen-vl-utils' where ms-swift is the
    only launch target, else transformers' processor (it makes more of a thin strip: the larger).
    With --dataset (None) the data's images decide (model/dataset.py `image_rule`)."""
    if getattr(args, "image_resize", None):
        return args.image_resize
    if (getattr(args, "emit", None) or []) and set(args.emit) == {"swift"}:
        return QWEN_VL_UTILS
    return None if getattr(args, "dataset", None) else PROCESSOR


def _launches_swift(args) -> bool:
    """The launch target is ms-swift (`--emit swift`, or `--swift-args`): the trials then run what
    ms-swift does where it differs from the HF Trainer (its eval keeping, its KV cache switches)."""
    return "swift" in (getattr(args, "emit", None) or []) or bool(getattr(args, "swift_args", None))


def _read_swift_args(args, console) -> None:
    """Fill the flags the command line does not give from --swift-args's file (README: Your ms-swift file)."""
    for note in swift_probe_args.fill(args):
        console.print(f"note: {note}", soft_wrap=True)


def kept_on_interrupt(args) -> str | None:
    """What a Ctrl-C leaves behind: the journal of the trials that finished (README: Journal and resume)."""
    path = None if args.no_journal else journal_path(args.out)
    return f"the finished trials are kept in {path}: rerun the same command to resume" if path and path.exists() else None


def run(args) -> int:
    if launch.wants_torchrun(args):
        return launch.relaunch(args.argv, args)
    _read_swift_args(args, stderr_console(quiet=args.quiet or launch.rank_from_env()[0] != 0))
    spec = spec_from_args(args)
    if spec.task == "eval" and args.emit:
        raise UsageError("--emit", "the launch files are training runs; an evaluation-only recipe has no training to launch",
                         "leave --emit out and read the recipe's eval settings (or recipe.apply them to your TrainingArguments)")
    lever_args.check_targets(args)
    rlhf_args.check_targets(spec.rlhf, args.emit or [])
    if args.device is not None and args.device not in ("cuda", "sim"):
        raise UsageError("--device", f"unknown device {args.device!r}", "choose cuda or sim")
    main_rank = launch.rank_from_env()[0] == 0  # under torchrun only rank 0 prints and writes
    if main_rank:
        check_writable(args.out, args.force or args.resume)
        for path in emit_paths(args.out, args.emit or []):
            check_writable(path, args.force or args.resume)
    if args.swift_version:
        resolve_swift_version(args.swift_version)
    if getattr(args, "swift_args", None) and args.emit and "swift" not in args.emit:
        raise UsageError("--swift-args", "is your ms-swift file, which only --emit swift writes back",
                         "add --emit swift (the other targets' files are written from the recipe alone)")
    if args.plot and main_rank:
        check_plot(args.plot, args.force)
    console = stderr_console(quiet=args.quiet or not main_rank)
    if args.from_plan and (spec.frontier or spec.task == "eval"):
        raise UsageError("--from-plan", "a plan predicts the train batch frontier; a limit search or an evaluation-only probe does not use it",
                         "leave --from-plan out")
    plan = load_recipe(args.from_plan, "--from-plan", "python -m autotune plan ... --out PLAN") if args.from_plan else None
    progress = ConsoleProgress(console)
    # Several seconds of silence otherwise; a transient spinner, so a bad-input error stays one line.
    with console.status("importing torch and transformers") if console.is_terminal else contextlib.nullcontext():
        with deferred_interrupt():
            from ..probe import probe  # imported only when a probe runs, so --help is fast

    recipe = probe(spec, progress=progress, plan=plan)
    if not main_rank:
        return 0
    if getattr(args, "swift_args", None):  # what `emit swift` later needs to write the user's file back
        recipe = dataclasses.replace(recipe, swift_args=os.path.abspath(args.swift_args))
    save_recipe(recipe, args.out)
    written, emitted = [args.out], {}
    for target in args.emit or []:
        outputs = emit_for_probe(target, recipe, args.out, args.swift_version, getattr(args, "swift_args", None))
        write_files(outputs, force=True)
        emitted[target] = list(outputs)
        written += list(outputs)
    if args.plot:
        write_plot(recipe, args.plot)
        written.append(args.plot)
    steps = next_steps.after_probe(args.out, emitted, args.swift_version, training=recipe.settings.task != "eval", rlhf_type=recipe.settings.rlhf_type)
    if args.format == "json":  # stdout holds the JSON only; the files and next steps go to stderr
        print_json(recipe.to_dict())
        files_and_next(console, written, steps)
    else:
        summary(recipe, stdout_console(), written, steps)
    return 0

