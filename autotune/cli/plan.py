"""`autotune plan`: a memory estimate for any model on a CPU, with a breakdown."""

from __future__ import annotations

import argparse

from rich.table import Table

from ..errors import UsageError
from ..model.source import builtin_names
from ..recipe.schema import check_writable, save_recipe
from ..sizes import format_size, parse_size
from ..recipe.training_args import EVAL_OUTPUTS
from ..spec import ATTN_IMPLEMENTATIONS, DEFAULT_EVAL_STEPS, DEFAULT_MARGIN, DEFAULT_MAX_BATCH_SIZE, DEFAULT_VALIDATE_STEPS
from . import multimodal_args, rlhf_args, swift_probe_args
from .interrupt import deferred_interrupt
from .model_args import add_model_arguments
from .output import ConsoleProgress, print_json, stderr_console, stdout_console
from .probe import spec_from_args

DEFAULT_TARGETS = "24GiB,48GiB,80GiB,141GiB"

# plan_breakdown.STRATEGIES, written here so that building the parser (--help) imports no torch;
# tests/test_cli_speed.py checks the two agree.
STRATEGIES = ("zero2", "zero3", "fsdp")

EXAMPLES = f"""\
examples:
  # does Qwen2.5-7B full fine-tuning fit on common cards? (a CPU is enough)
  python -m autotune plan --model-config recipes/configs/qwen2.5-7b/config.json --max-length 2048

  # LoRA with checkpointing only, two cards, machine-readable
  python -m autotune plan --model-config recipes/configs/qwen2.5-7b/config.json --train-type lora \\
      --gradient-checkpointing --max-length 4096 --gpu-memory 24GiB,80GiB --format json

  # per-rank memory on 8 x A30 (24 GB) with ZeRO-3, and a planned recipe to start a probe from
  python -m autotune plan --model-config recipes/configs/qwen2.5-7b/config.json --max-length 2048 \\
      --world-size 8 --strategy zero3 --gpu-memory 24GB --global-batch-size 64 --out plan.yaml
  python -m autotune probe --model-config recipes/configs/qwen2.5-7b/config.json --max-length 2048 \\
      --global-batch-size 64 --nproc-per-node 8 --strategy zero3 --from-plan plan.yaml

  # GRPO LoRA with vLLM colocated at 0.6 of an 80 GB card: the share is its own row
  python -m autotune plan --model-config recipes/configs/qwen2.5-7b/config.json --train-type lora --max-length 1024 \\
      --rlhf-type grpo --num-generations 8 --max-completion-length 1024 --use-vllm --vllm-gpu-memory-utilization 0.6 \\
      --gpu-memory 80GB

built-in configs: {', '.join(builtin_names())}
"""


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="estimate memory on a CPU (fake tensors) and predict what fits each card",
                       description="Run the probe's real training and evaluation steps under PyTorch fake tensors "
                                   "(nothing is allocated), count live bytes, and predict the batch-size frontier and a "
                                   "memory breakdown for each card size. No GPU needed; results are planned, not validated.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    train = add_model_arguments(p, "local Hugging Face model directory (only its config.json is read)",
                                "full fine-tune or peft LoRA; qlora is refused (bitsandbytes quantizes real weights) (default: full)")
    # auto is probe's (a searched limit): taken here only to refuse it in one line that says so
    train.add_argument("--max-length", type=multimodal_args.whole_or_auto, help="tokens per sample (required, unless --swift-args gives it)")
    train.add_argument("--swift-args", metavar="FILE",
                       help="the ms-swift arguments you will launch: the model, tuner, max_length, dtype, global batch, freezing "
                            "and media limits come from it, as in probe --swift-args (flags given here win)")
    train.add_argument("--global-batch-size", type=int, metavar="G", help="keep this global batch: per-device batch x accumulation x world size = G")
    train.add_argument("--gradient-checkpointing", nargs="?", const="on", default="both", choices=("on", "off", "both", "search"),
                       help="checkpointing candidates; the bare flag means on (default: both; search, probe's word, is the same)")
    train.add_argument("--attn", default="sdpa", metavar="LIST",
                       help=f"attention candidates, comma-separated, from {', '.join(ATTN_IMPLEMENTATIONS)} (default: sdpa)")
    train.add_argument("--eval-outputs", choices=EVAL_OUTPUTS[:3], metavar="loss|logits|argmax",
                       help="what the planned evaluation keeps on the device, as in probe (default: probe's without --emit: "
                            f"logits, {DEFAULT_EVAL_STEPS} steps, probe's --eval-steps default; the loss for --rlhf-type); "
                            "probe --from-plan uses the plan's eval frontier only where the two keep the same")
    multimodal_args.add_arguments(p)
    rlhf_args.add_arguments(p)
    cards = p.add_argument_group("cards and sharding")
    cards.add_argument("--gpu-memory", default=DEFAULT_TARGETS, metavar="SIZES",
                       help=f"card sizes to plan for, comma-separated (default: {DEFAULT_TARGETS})")
    cards.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help=f"fraction of each card kept free, as in probe (default: {DEFAULT_MARGIN})")
    cards.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE, help=f"largest per-device batch considered (default: {DEFAULT_MAX_BATCH_SIZE})")
    cards.add_argument("--world-size", type=int, default=1, help="number of GPUs (default: 1)")
    cards.add_argument("--strategy", choices=STRATEGIES, help="sharding across --world-size ranks (documented partitioning)")
    cards.add_argument("--cuda-context", default="512MiB", metavar="SIZE", help="assumed CUDA context per card (default: 512MiB)")
    cards.add_argument("--workspaces", default="64MiB", metavar="SIZE", help="assumed cuBLAS/cuBLASLt workspaces per card (default: 64MiB)")
    train.add_argument("--full-depth", action="store_true",
                       help="run every layer under fake tensors (default: where the layers repeat, measure copies with "
                            "one and two repeating units and extend to the model's depth)")
    cards.add_argument("--fragmentation", type=float, default=0.05, help="assumed allocator fragmentation, fraction of the live peak (default: 0.05)")
    out = p.add_argument_group("output")
    out.add_argument("--out", help="write a planned (unvalidated) recipe for the single --gpu-memory given")
    out.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    out.add_argument("--format", choices=("text", "json"), default="text", help="json: the whole plan as JSON on stdout")
    out.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=run, option_dests=swift_probe_args.option_dests(p))


def _plan_eval(flags: dict) -> dict:
    """A plan keeps the loss, logits or argmax ids; generation is probe's: a generating file's eval is planned as the loss
    (and so is a file's run without evaluation: a plan always has its eval rows)."""
    if flags.pop("predict_with_generate", None) or flags.pop("prediction_loss_only", None) or flags.pop("no_eval", None):
        flags.setdefault("eval_outputs", "loss")
    flags.pop("max_new_tokens", None)
    return flags


def options_from_args(args):
    from ..plan.planner import PlanOptions
    from ..plan.breakdown import Allowance

    targets = [parse_size(size, "--gpu-memory") for size in args.gpu_memory.split(",") if size.strip()]
    if not targets:
        raise UsageError("--gpu-memory", "no card size given", "for example --gpu-memory 24GiB,80GiB")
    attn = [a.strip() for a in args.attn.split(",") if a.strip()]
    unknown = [a for a in attn if a not in ATTN_IMPLEMENTATIONS]
    if unknown or not attn:
        raise UsageError("--attn", f"unknown attention implementation {', '.join(unknown) or '(none)'}",
                         f"choose from {', '.join(ATTN_IMPLEMENTATIONS)}, comma-separated")
    checkpointing = {"on": [True], "off": [False], "both": [False, True], "search": [False, True]}[args.gradient_checkpointing]
    if args.strategy and args.world_size < 2:
        raise UsageError("--strategy", f"{args.strategy} shards over ranks but --world-size is {args.world_size}", "add --world-size N with N >= 2")
    if not 0 <= args.fragmentation < 1:
        raise UsageError("--fragmentation", f"must be a fraction in [0, 1), got {args.fragmentation}")
    allowance = Allowance(cuda_context=_size_or_zero(args.cuda_context, "--cuda-context"),
                          workspaces=_size_or_zero(args.workspaces, "--workspaces"), fragmentation=args.fragmentation)
    return PlanOptions(targets=targets, attn=attn, checkpointing=checkpointing, strategy=args.strategy, allowance=allowance,
                       depth="full" if args.full_depth else "auto")


def _size_or_zero(text: str, flag: str) -> int:
    return 0 if text.strip() in ("0", "0B") else parse_size(text, flag)


def run(args) -> int:
    notes = swift_probe_args.fill(args, _plan_eval, measure_data=False)
    if args.max_length is None:
        raise UsageError("--max-length", "missing (the tokens per sample)", "give --max-length N, or --swift-args FILE (your ms-swift arguments)")
    if multimodal_args.dataset_files(args.dataset):
        raise UsageError("--dataset", "plan takes the worst case from --max-length and the pixel flags, not from data",
                         "run `autotune probe --dataset ...` to measure your data, or give --max-length")
    options = options_from_args(args)
    # The probe's spec carries the model/training flags; a plan has no device and one attention per candidate.
    args.device, args.steps, args.seed = None, 3, 0
    # Eval keeps what --eval-outputs says (the probe's default without --emit); validation does not apply to a plan.
    probe_args = argparse.Namespace(**{**vars(args), "gpu_memory": None, "attn": options.attn[0],
                                       "gradient_checkpointing": "on" if options.checkpointing[0] else "off",
                                       "no_eval": False, "eval_steps": DEFAULT_EVAL_STEPS, "prediction_loss_only": False,
                                       "predict_with_generate": False, "max_new_tokens": None,
                                       "validate_steps": DEFAULT_VALIDATE_STEPS})
    spec = spec_from_args(probe_args, cluster=False).replace(world_size=args.world_size)
    spec.validate()
    if args.out:
        if len(options.targets) != 1:
            raise UsageError("--out", "a plan recipe is for one card", "give a single --gpu-memory with --out")
        check_writable(args.out, args.force)
    console = stderr_console(quiet=args.quiet)
    for note in notes:
        console.print(f"note: {note}", soft_wrap=True)
    with deferred_interrupt():
        from ..plan.planned_recipe import plan_recipe  # torch: only when a plan runs
        from ..plan.planner import make_plan

    plan = make_plan(spec, options, progress=ConsoleProgress(console))
    recipe = plan_recipe(plan) if args.out else None
    if recipe is not None:
        save_recipe(recipe, args.out)
    if args.format == "json":
        print_json(plan.to_dict())
    else:
        show(plan, args.out, stdout_console())
    return 0


def _gib(n) -> str:
    return format_size(n) if n is not None else "-"


def _share_cell(share: dict) -> str:
    whole, training = share["share_bytes"], share["training_bytes"]
    text = _gib(whole) if whole == training else f"{_gib(whole)} generating, {_gib(training)} training"
    return text + (f"; vLLM would refuse: {share['refused']}" if share.get("refused") else "")


def show(plan, out_path, console) -> None:
    from ..plan.planner import no_choice_hint, no_choice_reason  # loaded already: the plan ran

    a = plan.options.allowance
    for c in plan.candidates:
        m = c.measure
        title = f"{m.key}" + (f" (measured with {m.measured_with})" if m.measured_with != m.attn_implementation else "")
        if m.error:
            console.print(f"[red]{title}: not planned[/red] - {m.error}")
            continue
        table = Table(title=f"{title}  [{c.rows.method}]", title_justify="left")
        table.add_column("row")
        table.add_column("bytes per rank", justify="right")
        for label, value in (("weights (and buffers)", c.rows.weights),
                             *((("reference model weights", c.rows.reference_weights),) if c.rows.reference_weights else ()),
                             *((("reward model weights", c.rows.reward_weights),) if c.rows.reward_weights else ()),
                             ("gradients", c.rows.gradients),
                             ("optimizer state", c.rows.optimizer_state), ("optimizer-step transient", c.rows.step_transient),
                             ("activations per sample", c.rows.activations_per_sample), ("logits per sample", c.rows.logits_per_sample),
                             ("gathered layers (zero3/fsdp)", c.rows.gathered_working_set)):
            table.add_row(label, _gib(value))
        for i, capacity in enumerate(plan.options.targets):
            share = c.predictions[i].rollout
            if share:
                table.add_row(f"rollout engine on {format_size(capacity)} (vLLM {share['share']:g}{' auto' if share['auto'] else ''})",
                              _share_cell(share))
        table.add_row("allowance (assumed)", f"{_gib(a.cuda_context)} context + {_gib(a.workspaces)} workspaces + {a.fragmentation:.0%} fragmentation")
        line = m.train_line
        table.add_row("measured train peak", f"{_gib(line.intercept)} + {_gib(line.slope)} x batch")
        table.add_row("measured eval peak", f"{_gib(m.eval_line.intercept)} + {_gib(m.eval_line.slope)} x batch")
        console.print(table)
        if m.note:
            console.print(f"[yellow]note[/yellow] {m.note}")
    frontier = Table(title=f"predicted frontiers (margin {plan.margin:.0%}; world size {plan.spec.world_size}"
                           f"{', ' + plan.options.strategy if plan.options.strategy else ''})", title_justify="left")
    for column in ("card", "candidate", "train", "eval", "batch x accum", "run peak on card", "choice"):
        frontier.add_column(column, justify="left" if column in ("card", "candidate", "choice") else "right")
    for i, capacity in enumerate(plan.options.targets):
        for c in plan.ok():
            p = c.predictions[i]
            split = f"{p.per_device_train_batch_size} x {p.gradient_accumulation_steps}" if p.train_frontier else "does not fit"
            chosen = "<-" if plan.choice[capacity] == c.measure.key else ""
            frontier.add_row(format_size(capacity), c.measure.key, str(p.train_frontier), str(p.eval_frontier), split,
                             _gib(p.run_on_card_bytes), chosen)
    console.print(frontier)
    for i, capacity in enumerate(plan.options.targets):
        chosen = next((c for c in plan.ok() if plan.choice[capacity] == c.measure.key), None)
        if chosen is None:
            console.print(f"[yellow]nothing fits[/yellow] {format_size(capacity)}: {no_choice_reason(plan, i)}; {no_choice_hint(plan, i)}")
            continue
        p = chosen.predictions[i]
        console.print(f"{format_size(capacity)}: {chosen.measure.key} at {p.per_device_train_batch_size} x {p.gradient_accumulation_steps} "
                      f"peaks at {_gib(a.on_card(p.train_peak_bytes))} training"
                      + (f" and {_gib(a.on_card(p.eval_peak_bytes))} evaluating at eval batch {p.eval_frontier}" if p.eval_frontier else "")
                      + f", on the card with the allowance (at its train frontier {p.train_frontier}: {_gib(p.on_card_bytes)})")
        if p.global_batch_note:  # the chosen split, when it is not the global batch asked for
            console.print(f"[yellow]note[/yellow] {format_size(capacity)}: {p.global_batch_note}")
    console.print(plan.depth)
    console.print(f"planned in {plan.wall_s:.1f}s ({plan.import_s:.1f}s of it importing libraries), peak RAM {_gib(plan.peak_rss_bytes)}; planned, not validated: "
                  "probe on the real card (probe --from-plan) before a long run")
    if out_path:
        console.print(f"wrote       {out_path} (validation.method: planned)")
