"""The memory levers beyond attention x checkpointing (issue #15): what each one is called in a
trial's settings, which values the search tries, and why one cannot run here.

Every lever is a real switch of the libraries the user launches, so a trial runs it as the run
would:
- partial checkpointing: transformers' own `every_n_layers` (>= 5.24), read by the Trainer from
  `activation_checkpointing_kwargs` (it pops the key and calls `activation_checkpointing_enable(
  every_n_layers=N)`, which sets `gradient_checkpointing` on every N-th `GradientCheckpointingLayer`);
- activation offloading: transformers' `offload` in the same kwargs: the checkpointed layers' saved
  inputs go to host memory through torch's `torch.autograd.graph.save_on_cpu` (the sim device
  counts those copies as host memory, see devices/sim.py). It needs checkpointing: without it no
  launch target here has a switch (TrainingArguments has none; TRL's SFTConfig `activation_offloading`
  would, and TRL is not a launch target of autotune);
- packing: rows of `max_length` tokens holding several samples, told apart by `position_ids` that
  restart and no attention mask, which transformers' masking_utils turns into a block-diagonal
  causal mask for sdpa and eager (`find_packed_sequence_indices`), so it runs on a CPU; a
  vision-language row holds the most samples at the media limits it can (model/packing.py);
- padding-free: the whole batch flattened into one row; it needs flash attention's varlen kernels
  (with sdpa or eager the one row's mask is (batch x length)^2);
- Liger kernels: the Trainer's `use_liger_kernel` (CUDA and the liger-kernel package);
- sequence parallelism: ms-swift's `sequence_parallel_size`, which runs inside ms-swift's trainer
  on several GPUs; no trial here runs it.

Settings keys (Hugging Face / ms-swift names where they exist): `checkpoint_every_n_layers`,
`activation_offloading`, `packing`, `padding_free`, `use_liger_kernel`. Absent means off, so a
trial without levers has exactly the settings it had before levers existed (journals match).
"""

from __future__ import annotations

from ..errors import UsageError
from ..extras import install_hint

LEVER_KEYS = ("checkpoint_every_n_layers", "activation_offloading", "packing", "padding_free", "use_liger_kernel")
# "both" is `autotune plan`'s word for search: either command takes the other's.
SWITCHES = {"off": (False,), "on": (True,), "search": (False, True), "both": (False, True)}
# --gradient-checkpointing values beyond on/off/search: every-N (fixed) and partial (N searched).
PARTIAL = "partial"


def parse_switch(flag: str, value: str) -> tuple:
    if value not in SWITCHES:
        raise UsageError(flag, f"unknown value {value!r}", "choose off, on or search")
    return SWITCHES[value]


def parse_checkpointing(value: str) -> tuple[tuple, int | str | None]:
    """`--gradient-checkpointing` -> (on/off candidates, every_n_layers): on | off | search (both,
    as before) | every-N (checkpoint every N-th layer) | partial (off, on, and every-N with N searched)."""
    if value in SWITCHES:
        return SWITCHES[value], None
    if value == PARTIAL:
        return (False, True), PARTIAL
    if value.startswith("every-"):
        number = value[len("every-"):]
        if number.isdigit() and int(number) >= 1:
            return (True,), (int(number) if int(number) > 1 else None)
    raise UsageError("--gradient-checkpointing", f"unknown value {value!r}",
                     "choose on, off, search, every-N (e.g. every-2: every 2nd layer) or partial (N searched)")


def check_spec(spec) -> None:
    """Validation of the lever fields of a ProbeSpec; every error names its flag."""
    every = spec.every_n_layers
    if every is not None and every != PARTIAL and (not isinstance(every, int) or isinstance(every, bool) or every < 2):
        raise UsageError("--gradient-checkpointing", f"every-N needs a whole N >= 2, got {every!r}", "for example every-2")
    if every is not None and False in spec.gradient_checkpointing_candidates and every != PARTIAL:
        raise UsageError("--gradient-checkpointing", "every-N is a checkpointing mode; it cannot be combined with off")
    for flag, name in (("--activation-offloading", "activation_offloading"), ("--packing", "packing"),
                       ("--padding-free", "padding_free"), ("--liger", "liger")):
        values = getattr(spec, name)
        if not isinstance(values, (tuple, list)) or tuple(values) not in SWITCHES.values():
            raise UsageError(flag, f"unknown value {values!r}", "choose off, on or search")
        setattr(spec, name, tuple(values))  # a spec sent to a worker process comes back with lists
    if True in spec.activation_offloading and True not in spec.gradient_checkpointing_candidates:
        raise UsageError("--activation-offloading", "offloads the checkpointed layers' inputs, so it needs checkpointing",
                         "add --gradient-checkpointing on (or search)")
    if True in spec.packing and True in spec.padding_free:
        raise UsageError("--padding-free", "packing and padding-free are two ways to drop padding; choose one",
                         "give --packing or --padding-free, not both")
    size = spec.sequence_parallel_size
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise UsageError("--sequence-parallel-size", f"must be a positive whole number, got {size!r}")
    if size > 1 and spec.world_size % size:
        raise UsageError("--sequence-parallel-size", f"{size} does not divide the world size {spec.world_size}",
                         "choose a divisor of --nproc-per-node x --nnodes")


def checkpointed_layer_count(model) -> int:
    """The layers `every_n_layers` counts: transformers' GradientCheckpointingLayer instances."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return sum(isinstance(m, GradientCheckpointingLayer) for m in model.modules())


def every_n_ladder(layers: int) -> list[int]:
    """The N worth trying for `layers` layers, most memory first: one N per distinct number of
    checkpointed layers ceil(layers / N) (layers 0, N, 2N, ...), from 1 layer checkpointed up to
    half of them; N = 1 is plain checkpointing and is not in the ladder."""
    ladder: dict[int, int] = {}
    for n in range(2, layers + 1):
        ladder.setdefault(-(-layers // n), n)  # the smallest N for each count (16 rather than 31 of 32)
    return [ladder[count] for count in sorted(ladder)]


def checkpointing_modes(spec) -> list[dict]:
    """The checkpointing modes searched per attention, most memory first: off, then on (every-N
    when fixed), then with offloading. `partial` searches every-N between off and on (space.py)."""
    modes: list[dict] = []
    for gc in sorted(spec.gradient_checkpointing_candidates):
        if not gc:
            modes.append({"gradient_checkpointing": False})
            continue
        mode: dict = {"gradient_checkpointing": True}
        if isinstance(spec.every_n_layers, int):
            mode["checkpoint_every_n_layers"] = spec.every_n_layers
        modes += [{**mode, "activation_offloading": True} if offload else mode for offload in sorted(spec.activation_offloading)]
    return modes


def liger_unavailable(device) -> str | None:
    if device.kind != "cuda":
        return f"Liger kernels are Triton kernels for CUDA; the {device.kind} device has none"
    from transformers.utils import is_liger_kernel_available

    if not is_liger_kernel_available():
        return "the liger-kernel package is not installed here; " + install_hint("liger")
    return None


def variants(spec, device) -> list[dict]:
    """The data-side lever settings each attention is searched with: packing / padding-free /
    Liger as the spec asks (a forced lever is in every variant, a searched one in half). Liger
    where it cannot run is left out (the recipe says so, see outcome())."""
    liger = spec.liger if liger_unavailable(device) is None else (False,)
    if liger == (False, True) and device.kind == "cuda":
        # transformers applies Liger to the model instance, irreversibly: a trial without it after one
        # with it would measure Liger. Searching both needs a model per setting (not wired yet).
        liger = (False,)
    out: list[dict] = [{}]
    for key, values in (("packing", spec.packing), ("padding_free", spec.padding_free), ("use_liger_kernel", liger)):
        out = [{**v, key: True} if value else v for v in out for value in values]
    return out


def variant_unavailable(variant: dict, attn: str, device) -> str | None:
    """Why a variant's levers cannot run with this attention on this device (None: they can)."""
    if variant.get("padding_free") and attn != "flash_attention_2":
        return (f"padding-free needs flash attention's varlen kernels; with {attn} transformers builds one "
                "(batch x length)^2 mask for the flattened row")
    if variant.get("use_liger_kernel"):
        return liger_unavailable(device)
    return None


_FLAGS = {"packing": "--packing", "padding_free": "--padding-free", "activation_offloading": "--activation-offloading",
          "checkpoint_every_n_layers": "--gradient-checkpointing", "use_liger_kernel": "--liger"}


def check_forced(spec, candidates: list) -> None:
    """A lever asked `on` that can run nowhere here leaves nothing to measure: say which and why
    (UsageError naming its flag), rather than "batch 1 does not fit"."""
    if any(c.status != "skipped" for c in candidates):
        return
    for c in candidates:
        key = next((k for k in LEVER_KEYS if c.levers.get(k)), None)
        if key is not None and c.reason:
            raise UsageError(_FLAGS[key], f"cannot run here: {c.reason}", f"leave {_FLAGS[key]} off or search it")


def facts_of(workload) -> dict:
    """What the lever search needs to know of a loaded model, as plain data (it travels from a
    supervised worker in its `ready` report): whether its inputs carry media, and how many layers
    `every_n_layers` counts."""
    return {"vision_language": getattr(workload.setup, "family", None) is not None,
            "checkpointed_layers": checkpointed_layer_count(workload.model)}


def runs_here(facts: dict, through_trainer: bool, variant: dict) -> str | None:
    """Why a variant's levers cannot run in this probe's trials (None: they can). The levers are the
    Trainer's switches, so they run wherever a trial runs the Trainer: in this process, or in a
    supervised worker with no strategy or DDP (which the Trainer applies itself); a worker whose
    model a sharding engine wrapped runs the step model instead. Padding-free rows are modelled for
    text inputs only (model/packing.py)."""
    if not through_trainer:
        return ("trials under FSDP or DeepSpeed run the step model in their workers (the model is wrapped by the "
                "engine before the Trainer sees it), which has no lever switches")
    if facts.get("vision_language") and variant.get("padding_free"):
        return ("padding-free rows are modelled for text inputs; a vision-language batch flattened into one row needs flash "
                "attention's varlen kernels (use --packing: rows of max_length tokens, several samples with their media)")
    return None


def describe(settings) -> str:
    """A short name for a configuration's checkpointing and levers: off, on, every-4, on+offload, ...; packing."""
    get = settings.get if isinstance(settings, dict) else lambda k, d=None: getattr(settings, k, d)
    every = get("checkpoint_every_n_layers")
    gc = (f"every-{every}" if every and every > 1 else "on") if get("gradient_checkpointing") else "off"
    if get("activation_offloading"):
        gc += "+offload"
    extras = [name for key, name in (("packing", "packing"), ("padding_free", "padding-free"), ("use_liger_kernel", "liger"))
              if get(key)]
    return ", ".join([gc, *extras])


def modes_in_words(settings: list) -> str:
    """Checkpointing modes in words, for a prune reason: "without checkpointing or with every-3 checkpointing"."""
    words: list[str] = []
    for one in settings:
        name = describe(one).split(", ")[0]
        word = "without checkpointing" if name == "off" else ("with checkpointing" if name == "on" else f"with {name} checkpointing")
        if word not in words:
            words.append(word)
    return " or ".join(words)


def of(settings: dict) -> dict:
    """The lever settings (non-default only) among a trial's settings."""
    return {k: settings[k] for k in LEVER_KEYS if settings.get(k)}


# --------------------------------------------------------------- the recipe's record

_ASKED = (("partial_checkpointing", "checkpoint_every_n_layers"), ("activation_offloading", "activation_offloading"),
          ("packing", "packing"), ("padding_free", "padding_free"), ("liger", "use_liger_kernel"))
SEQUENCE_PARALLEL_REASON = ("ms-swift's sequence parallelism runs inside ms-swift's own trainer across GPUs; no trial "
                            "here runs it, so it is written to ms-swift's launch files as asked and not measured")


def asked(spec) -> dict[str, str]:
    """The levers a spec asks for, as the user said them; empty for the default search."""
    out: dict[str, str] = {}
    if spec.every_n_layers is not None:
        out["partial_checkpointing"] = PARTIAL if spec.every_n_layers == PARTIAL else f"every-{spec.every_n_layers}"
    for name, values in (("activation_offloading", spec.activation_offloading), ("packing", spec.packing),
                         ("padding_free", spec.padding_free), ("liger", spec.liger)):
        if True in values:
            out[name] = "search" if False in values else "on"
    if spec.sequence_parallel_size > 1:
        out["sequence_parallel_size"] = str(spec.sequence_parallel_size)
    return out


def forced_liger(spec, device) -> bool:
    """`--liger on` where Liger cannot run: measured without it, written to the launch files as asked
    (its fused loss only lowers training memory; the recipe says it was not measured)."""
    return spec.liger == (True,) and liger_unavailable(device) is not None


def recipe_settings(spec, chosen, device) -> dict:
    """The recipe Settings fields of the chosen configuration's levers."""
    values = chosen.levers
    out: dict = {k: values[k] for k in LEVER_KEYS if values.get(k)}
    if forced_liger(spec, device):
        out["use_liger_kernel"] = True
    if spec.sequence_parallel_size > 1:
        out["sequence_parallel_size"] = spec.sequence_parallel_size
    return out


def outcome(spec, device, chosen, candidates: list) -> dict:
    """What happened to each lever asked for, and by how much the chosen configuration beats the
    best one without levers (a lever wins only when faster at the global batch). Empty: none asked."""
    wanted = asked(spec)
    if not wanted:
        return {}
    rows: dict[str, dict] = {}
    for name, key in _ASKED:
        if name not in wanted:
            continue
        related = [c for c in candidates if c.levers.get(key)]
        searched = [c for c in related if c.status not in ("skipped",)]
        reason = next((c.reason for c in related if c.status == "skipped"), None)
        if key == "use_liger_kernel" and liger_unavailable(device):
            reason = liger_unavailable(device)
        elif key == "use_liger_kernel" and not related:
            reason = "searching Liger on and off needs a fresh model per setting (transformers patches the model in place)"
        row = {"asked": wanted[name], "status": "searched" if searched else "skipped", "reason": None if searched else reason,
               "chosen": bool(chosen.levers.get(key))}
        if key == "use_liger_kernel" and forced_liger(spec, device):
            row.update(status="not measured", written=True)
        rows[name] = row
    if "sequence_parallel_size" in wanted:
        rows["sequence_parallel_size"] = {"asked": wanted["sequence_parallel_size"], "status": "not measured",
                                          "reason": SEQUENCE_PARALLEL_REASON, "chosen": True, "written": True}
    measured = [m for c in candidates for m in c.measured]
    without = [m for m in measured if not m.levers]
    best_without = max(without, key=lambda m: m.tokens_per_s, default=None)
    record: dict = {"asked": rows, "chosen": describe(chosen.settings)}
    if best_without is not None:
        record["best_without_levers"] = {"configuration": describe(best_without.settings),
                                         "attn_implementation": best_without.attn_implementation,
                                         "per_device_train_batch_size": best_without.per_device_train_batch_size,
                                         "tokens_per_s": round(best_without.tokens_per_s, 2)}
    if chosen.levers:
        record["speedup_pct"] = (round(100.0 * (chosen.tokens_per_s / best_without.tokens_per_s - 1), 1)
                                 if best_without else None)
        record["note"] = ("faster at the global batch than every configuration without levers" if best_without
                          else "no configuration without levers fits the global batch")
    return record


# The flag that asks for each lever again, by its record name (`asked`).
_ASK_FLAGS = {"partial_checkpointing": "--gradient-checkpointing", "activation_offloading": "--activation-offloading",
              "packing": "--packing", "padding_free": "--padding-free", "liger": "--liger",
              "sequence_parallel_size": "--sequence-parallel-size"}


def cli_flags(record: dict | None) -> list[str]:
    """The probe flags that ask for the same levers again (a re-probe command), from the recipe's
    `search.levers` record: what the user asked, not what won."""
    flags: list[str] = []
    for name, row in ((record or {}).get("asked") or {}).items():
        if name in _ASK_FLAGS:
            flags += [_ASK_FLAGS[name], str(row["asked"])]
    return flags
