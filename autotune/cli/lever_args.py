"""`probe` flags for the memory levers (issue #15; autotune/recipe/levers.py), kept apart from the core
flags. Each is off unless asked; `search` measures with and without it."""

from __future__ import annotations

from ..recipe import levers

EXAMPLES = """\
  # partial checkpointing (every N-th layer, N searched) and activation offloading searched too
  python -m autotune probe --model-config tiny-llama --device sim --gpu-memory 64MiB --max-length 128 \\
      --global-batch-size 8 --gradient-checkpointing partial --activation-offloading search
"""

_SWITCH = dict(choices=tuple(levers.SWITCHES), default="off", metavar="off|on|search")


def add_arguments(group) -> None:
    """The lever flags, in the search-space group beside --gradient-checkpointing."""
    group.add_argument("--activation-offloading", **_SWITCH,
                       help="hold the checkpointed layers' saved inputs in host memory (transformers' offload; "
                            "needs checkpointing) (default: off)")
    group.add_argument("--packing", **_SWITCH,
                       help="rows of --max-length tokens holding several samples (ms-swift packing; probed as packed "
                            "full-length rows) (default: off)")
    group.add_argument("--padding-free", **_SWITCH,
                       help="the batch flattened into one row (ms-swift padding_free; needs flash attention) (default: off)")
    group.add_argument("--liger", **_SWITCH,
                       help="Liger kernels (use_liger_kernel; CUDA with liger-kernel; on: written to the launch files "
                            "even where it cannot be measured) (default: off)")
    group.add_argument("--sequence-parallel-size", type=int, default=1, metavar="N",
                       help="ms-swift sequence parallelism over N ranks: written to ms-swift's launch files, not measured (default: 1)")


def spec_kwargs(args) -> dict:
    """ProbeSpec fields from the flags (absent flags, as under `autotune plan`: the defaults)."""
    candidates, every = levers.parse_checkpointing(getattr(args, "gradient_checkpointing", "search"))
    get = lambda name: getattr(args, name, "off")  # noqa: E731
    return {
        "gradient_checkpointing_candidates": candidates, "every_n_layers": every,
        "activation_offloading": levers.parse_switch("--activation-offloading", get("activation_offloading")),
        "packing": levers.parse_switch("--packing", get("packing")),
        "padding_free": levers.parse_switch("--padding-free", get("padding_free")),
        "liger": levers.parse_switch("--liger", get("liger")),
        "sequence_parallel_size": getattr(args, "sequence_parallel_size", 1),
    }


# Launch targets that cannot say a lever (their emitters refuse it): refused before any work.
_REFUSED = {"activation_offloading": ("--activation-offloading", ("swift", "llamafactory")),
            "padding_free": ("--padding-free", ("llamafactory",))}


def check_targets(args) -> None:
    """A lever asked for together with an --emit target that cannot launch it: one line, exit 2."""
    from ..errors import UsageError

    swift = "swift" in (getattr(args, "emit", None) or []) or bool(getattr(args, "swift_args", None))
    from ..emit.swift import FLASH_IMPLS

    flash = {a.strip() for a in getattr(args, "attn", "").split(",")} <= set(FLASH_IMPLS)
    for name, flag in (("packing", "--packing"), ("padding_free", "--padding-free")):
        if swift and getattr(args, name, "off") != "off" and not flash:
            raise UsageError(flag, "ms-swift runs it with flash attention only (its packing is padding-free), so a recipe using it "
                                   "with sdpa or eager could not be launched there",
                             f"add --attn flash_attention_2 (a CUDA card with flash-attn), or leave {flag} off")
    for name, (flag, targets) in _REFUSED.items():
        bad = [t for t in (getattr(args, "emit", None) or []) if t in targets]
        if getattr(args, name, "off") != "off" and bad:
            raise UsageError(flag, f"--emit {bad[0]} has no argument for this lever, so a recipe using it could not be launched there",
                             f"drop --emit {bad[0]} (emit hf can say it), or leave {flag} off")
