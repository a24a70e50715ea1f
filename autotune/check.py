"""Pre-flight: does this recipe still fit here? Fingerprint first (hardware and library
versions), then the real Trainer at the recipe's settings for a few steps, with an evaluation
inside training when the recipe has eval settings (as many eval steps as the recipe keeps on
the device). No search. Returns data; the CLI formats and picks the exit code."""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass, field

from .devices import make_device
from .errors import EXIT_DOES_NOT_FIT, EXIT_FINGERPRINT, EXIT_OK, UsageError
from .describe import describe_hardware
from .recipe import levers, lora, rlhf
from .recipe.levers import LEVER_KEYS
from .recipe.schema import Recipe, TrialResult
from .spec import QWEN_VL_UTILS, ProbeSpec
from .trials.trial import run_training, run_trial

CHECK_STEPS = 3  # AdamW's state is lazy: the peak is read from step 2 on
# mixed_precision: as the launch file sets it (check --swift-args reads ms-swift's rule back).
TRAIN_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps", "gradient_checkpointing", "attn_implementation",
              "mixed_precision", *LEVER_KEYS)
EVAL_KEYS = ("per_device_train_batch_size", "per_device_eval_batch_size", "eval_accumulation_steps", "prediction_loss_only", "eval_outputs",
             "max_new_tokens", "gradient_checkpointing", "attn_implementation", "mixed_precision", *LEVER_KEYS)


@dataclass
class Difference:
    key: str
    recipe: object
    here: object


@dataclass
class CheckResult:
    status: str  # "fits" | "does_not_fit" | "fingerprint_mismatch"
    differences: list[Difference] = field(default_factory=list)
    reprobe_command: str | None = None
    capacity_bytes: int | None = None
    margin: float | None = None
    budget_bytes: int | None = None
    peak_bytes: int | None = None
    over_by_bytes: int | None = None  # peak - budget, when a trial ran past the budget
    trials: list[TrialResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return {"fits": EXIT_OK, "does_not_fit": EXIT_DOES_NOT_FIT}.get(self.status, EXIT_FINGERPRINT)


def reprobe_command(recipe: Recipe, device: str | None = None, capacity: int | None = None,
                    out: str = "autotune-recipe.reprobe.yaml", gpu_memory: str | None = None,
                    world_size: int | None = None) -> str:
    """The `autotune probe` command that rebuilds this recipe on the current machine: the same
    model and training flags, the device, capacity and world size here (`gpu_memory` as the user
    gave it, else `capacity`, else the recipe's; `world_size` else the recipe's), the whole search
    space again (the recipe's attention and checkpointing were the winners elsewhere), and a new
    file (never --force: the user's recipe stays)."""
    m, s = recipe.model, recipe.settings
    source = "--model" if m.source == "weights" else "--model-config"
    parts = ["python -m autotune probe", source, shlex.quote(m.path), "--max-length", str(m.max_length),
             "--train-type", m.train_type, "--dtype", m.dtype]
    if m.lora:
        parts += ["--lora-r", str(m.lora["r"]), "--lora-alpha", str(m.lora["alpha"])]
        if m.lora.get("dropout") is not None:
            parts += ["--lora-dropout", str(m.lora["dropout"])]
        parts += [shlex.quote(word) for word in lora.cli_flags(m.lora)]
    if recipe.search.global_batch_size:
        parts += ["--global-batch-size", str(recipe.search.global_batch_size)]
    parts += ["--optim", s.optim]
    for name, value in vision_fields(recipe).items():
        if value is not None:
            flag = "--" + name.replace("_", "-")
            parts += [flag, str(value).lower() if isinstance(value, bool) else str(value)]
    if s.strategy:
        parts += ["--strategy", s.strategy]
    world = world_size or recipe.hardware.world_size
    if world > 1:
        parts += ["--nproc-per-node", str(world)]
    parts += levers.cli_flags(recipe.search.levers) + rlhf.cli_flags(rlhf.from_recipe(s, recipe.rlhf))
    parts += _eval_flags(s)
    if s.use_cache_off_in_sub_configs:
        parts += ["--emit", "swift"]  # probed for an ms-swift launch: its KV cache switches (and eval keeping) again
    parts += ["--device", device or recipe.hardware.device]
    size = gpu_memory or _size_flag(capacity if capacity is not None else recipe.hardware.capacity_bytes)
    if size:
        parts += ["--gpu-memory", shlex.quote(size)]
    parts += ["--margin", str(recipe.search.margin), "--out", shlex.quote(out)]
    return " ".join(parts)


def _eval_flags(s) -> list[str]:
    """The evaluation the recipe was probed with: an evaluation-only probe, none, or what its eval
    kept (a re-probe with the target's default could keep less and find an eval batch too large)."""
    if s.task == "eval":
        parts = ["--task", "eval"]
    elif s.per_device_eval_batch_size is None:
        return ["--no-eval"]
    else:
        parts = []
    if s.eval_outputs:
        parts += ["--eval-outputs", s.eval_outputs]
    if s.eval_outputs == "generate" and s.max_new_tokens:
        parts += ["--max-new-tokens", str(s.max_new_tokens)]
    if s.eval_accumulation_steps:
        parts += ["--eval-steps", str(s.eval_accumulation_steps)]
    return parts


def _size_flag(capacity: int | None) -> str | None:
    """A capacity as --gpu-memory reads it back exactly: 24GiB, 64MiB, else bytes."""
    if not capacity:
        return None
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if capacity % scale == 0:
            return f"{capacity // scale}{unit}"
    return str(capacity)


def unset_length(recipe: Recipe, swift_args: dict, where: str) -> tuple[Recipe, str | None]:
    """ms-swift arguments without max_length train at the model's full length (the Ovis2 OOM).
    Returns the recipe at that length, which the check then runs, and a note naming the length
    and the one that fits (the recipe's max_length frontier, else the length it was probed at)."""
    if swift_args.get("max_length") is not None:
        return recipe, None
    from dataclasses import replace

    from .emit.swift_read import default_max_length

    m = recipe.model
    full = default_max_length(model_config(recipe))
    fits = recipe.search.frontier.get("max_length") or recipe.settings.max_length or m.max_length
    if full is None or full <= fits:
        return recipe, None
    known = "its max_length frontier" if "max_length" in recipe.search.frontier else "the length it was probed at"
    note = (f"{where} sets no max_length: ms-swift then trains at the model's full length, {full} tokens; the recipe fits at "
            f"{fits} ({known}): add `max_length: {fits}` to {where} (or probe --max-length auto for the longest that fits)")
    return replace(recipe, settings=replace(recipe.settings, max_length=full)), note


def model_config(recipe: Recipe):
    """The transformers config of the recipe's model (its weights' directory or its config)."""
    from .model.source import resolve

    m = recipe.model
    weights = m.source == "weights"
    return resolve(m.path if weights else None, None if weights else m.path).config


def pixels_per_token(recipe: Recipe) -> int | None:
    """A Qwen-VL recipe's pixels per token (its factor squared), for qwen-vl-utils' token numbers;
    None for other models."""
    if not recipe.multimodal:
        return None
    from .model.families import family_for

    config = model_config(recipe)
    family = family_for(config)
    return family.pixels_per_token(config) if family is not None and family.pixels_per_token is not None else None


def compare_fingerprints(expected: dict, here: dict) -> list[Difference]:
    return [Difference(k, expected.get(k), here.get(k)) for k in expected if expected.get(k) != here.get(k)]


def spec_for(recipe: Recipe, device_kind: str, capacity: int, margin: float) -> ProbeSpec:
    m, s = recipe.model, recipe.settings
    adapters = m.lora or {}
    names, regex = lora.from_record(adapters)
    return ProbeSpec(
        max_length=s.max_length or m.max_length,
        model=m.path if m.source == "weights" else None,
        model_config=m.path if m.source != "weights" else None,
        train_type=m.train_type, lora_r=int(adapters.get("r", 8)), lora_alpha=int(adapters.get("alpha", 32)),
        lora_dropout=float(adapters.get("dropout", 0.05)), lora_target_modules=names, lora_target_regex=regex,
        dtype=s.torch_dtype, device=device_kind, gpu_memory=capacity, margin=margin,
        gradient_checkpointing=bool(s.gradient_checkpointing), attn_implementation=s.attn_implementation,
        optim=s.optim, task=s.task or "train", **vision_fields(recipe),
        use_cache_off_in_sub_configs=bool(s.use_cache_off_in_sub_configs),  # None: an older recipe, the HF Trainer's
        rlhf=rlhf.from_recipe(s, recipe.rlhf), global_batch_size=recipe.search.global_batch_size if s.rlhf_type else None,
    )


def vision_fields(recipe: Recipe) -> dict:
    """A vision-language recipe's media limits and freezing: without them the check would build
    the model's default worst case (Qwen2-VL: 16384 image tokens), not the probed one."""
    s, media = recipe.settings, recipe.multimodal or {}
    fields = {"freeze_vit": s.freeze_vit, "freeze_aligner": s.freeze_aligner, "freeze_llm": s.freeze_llm,
              "max_pixels": s.max_pixels, "image_resize": image_resize(recipe), "video_max_pixels": s.video_max_pixels, "video_min_pixels": s.video_min_pixels,
              "video_frames": s.video_frames}
    if media:
        fields["images_per_sample"] = media.get("images_per_sample")
        fields["audio_clips"] = media.get("audio_clips_per_sample")
        if media.get("video_audio_tokens"):
            fields["use_audio_in_video"] = True  # the sound track the probe heard (a recipe older than the setting)
    if s.use_audio_in_video is not None:  # the setting, which an ms-swift file's USE_AUDIO_IN_VIDEO replaces
        fields["use_audio_in_video"] = s.use_audio_in_video
    return fields


def image_resize(recipe: Recipe) -> str | None:
    """The rule that sized the recipe's images (and a Qwen3-VL video); an older recipe's was qwen-vl-utils'."""
    s = recipe.settings
    return s.image_resize or (QWEN_VL_UTILS if s.max_pixels is not None or s.video_max_pixels is not None else None)


def phases(recipe: Recipe) -> list[tuple[str, dict]]:
    """The recipe's trials; a lever is in the settings only when used (Liger only where it runs:
    a recipe that asked for it where it could not be measured is checked as it was probed)."""
    s = recipe.settings
    used = {k: getattr(s, k) for k in LEVER_KEYS if getattr(s, k) and not (k == "use_liger_kernel" and _liger_unmeasured(recipe))}
    train = {k: getattr(s, k) for k in TRAIN_KEYS if k not in LEVER_KEYS} | used
    out = [("train", train)]
    if s.per_device_eval_batch_size is not None:
        out.append(("eval", {k: getattr(s, k) for k in EVAL_KEYS if getattr(s, k) is not None and k not in LEVER_KEYS} | used))
    return out


def _liger_unmeasured(recipe: Recipe) -> bool:
    row = (recipe.search.levers or {}).get("asked", {}).get("liger") or {}
    return row.get("status") == "not measured"


def check(recipe: Recipe, device_kind: str | None = None, gpu_memory: int | None = None, margin: float | None = None,
          world_size: int | None = None, steps: int = CHECK_STEPS, device=None,
          gpu_memory_per_rank: tuple | None = None) -> CheckResult:
    """Fingerprint, then run the recipe's configuration. `gpu_memory`/`device_kind` override
    the device (a changed capacity is a fingerprint change); `margin` overrides the recipe's
    margin (a larger one shrinks the budget without touching the fingerprint). Under torchrun
    every rank runs the recipe's steps with its sharding strategy, as the probe did."""
    from .cluster.control import under_torchrun

    started = time.perf_counter()
    kind = device_kind or recipe.hardware.device
    if kind == "plan":  # `autotune plan --out`: made on no device, so there is none to default to
        raise UsageError("RECIPE", "this recipe is a plan (validation.method: planned): nothing ran, and it names no device to check on",
                         "probe on this machine first (python -m autotune probe ... --from-plan PLAN), then check that recipe")
    margin = recipe.search.margin if margin is None else margin
    if not 0.0 <= margin < 1.0:
        raise UsageError("--margin", f"must be a fraction in [0, 1), got {margin}")
    world = world_size or int(os.environ.get("WORLD_SIZE", 0)) or recipe.hardware.world_size
    if device is None and world > 1 and under_torchrun():
        result = _check_on_ranks(recipe, kind, gpu_memory, margin, world, steps, gpu_memory_per_rank)
    else:
        result = _check_here(recipe, kind, gpu_memory, margin, world, steps, device)
    result.wall_s = round(time.perf_counter() - started, 3)
    return result


def _check_here(recipe: Recipe, kind: str, gpu_memory, margin: float, world: int, steps: int, device) -> CheckResult:
    """One process on this machine's device."""
    from .model.source import resolve
    from .model.workload import load_workload

    hw = recipe.hardware
    if device is None:
        capacity = gpu_memory if gpu_memory is not None else (hw.capacity_bytes if kind == "sim" else _cuda_capacity(hw))
        device = make_device(kind, capacity)
    here = describe_hardware(device, world)
    result = CheckResult(status="fits", capacity_bytes=device.capacity, margin=margin)
    if _fingerprint_changed(result, recipe, here):
        return result
    strategy = recipe.settings.strategy
    if strategy not in (None, "ddp") and world > 1:
        result.notes.append(f"the check runs one unsharded process; the recipe shards with {strategy} over {world} ranks, "
                            "so a peak measured here overstates the per-rank peak: run it under torchrun "
                            f"(check --nproc-per-node {world}) to measure the sharded step")
    spec = spec_for(recipe, kind, device.capacity, margin)
    workload = load_workload(resolve(spec.model, spec.model_config), spec, device)
    result.budget_bytes = int(device.capacity * spec.usable_fraction)
    settings = {k: v for _, phase_settings in phases(recipe) for k, v in phase_settings.items()}
    evaluating = recipe.settings.per_device_eval_batch_size is not None
    if recipe.settings.task == "eval":  # an evaluation-only recipe: the Trainer's evaluate() alone
        result.trials.append(run_trial(workload, "eval", settings, eval_steps_of(recipe), result.budget_bytes))
        return _judged(result)
    train, evaluation = run_training(workload, settings, steps, eval_steps_of(recipe), 1 if evaluating else 0,
                                     result.budget_bytes)
    result.trials += [t for t in (train, evaluation) if t is not None]
    return _judged(result)


def eval_steps_of(recipe: Recipe) -> int:
    """Eval steps that reach the recipe's peak: all the steps whose outputs stay on the device."""
    from .spec import DEFAULT_EVAL_STEPS

    return max(recipe.settings.eval_accumulation_steps or DEFAULT_EVAL_STEPS, 2)


def _check_on_ranks(recipe: Recipe, kind: str, gpu_memory, margin: float, world: int, steps: int,
                    per_rank: tuple | None) -> CheckResult:
    """Every rank of a torchrun job: the probe's supervised workers, sharded with the recipe's
    strategy, each trial agreed across ranks (any rank out of memory: the trial is; the peak is
    the largest rank's). The supervisor processes never touch the device."""
    from .cluster.session import open_session
    from .model.source import resolve
    from .progress import ProgressSink

    s = recipe.settings
    capacity = gpu_memory if gpu_memory is not None else (recipe.hardware.capacity_bytes if kind == "sim" else None)
    spec = spec_for(recipe, kind, capacity, margin).replace(
        strategies=(s.strategy,) if s.strategy else (), world_size=world, expandable_segments="off", env=dict(s.env),
        gpu_memory_per_rank=per_rank)
    session = open_session(spec, resolve(spec.model, spec.model_config), ProgressSink())
    try:
        result = CheckResult(status="fits", capacity_bytes=session.capacity, margin=margin)
        if _fingerprint_changed(result, recipe, session.hardware):
            return result
        result.budget_bytes = session.budget
        for phase, settings in phases(recipe):
            trial = session.runner.run(phase, {**settings, "strategy": s.strategy, "env": dict(s.env)},
                                       steps if phase == "train" else eval_steps_of(recipe))
            result.trials.append(trial)
            if trial.outcome == "error":
                break
    finally:
        session.close()
    return _judged(result)


def _fingerprint_changed(result: CheckResult, recipe: Recipe, here) -> bool:
    result.differences = compare_fingerprints(recipe.hardware.fingerprint(), here.fingerprint())
    if result.differences:
        result.status = "fingerprint_mismatch"
        result.reprobe_command = reprobe_command(recipe, device=here.device, capacity=here.capacity_bytes, world_size=here.world_size)
    return bool(result.differences)


def _judged(result: CheckResult) -> CheckResult:
    for trial in result.trials:
        if trial.outcome == "error":
            raise RuntimeError(f"the {trial.phase} step failed for a reason other than memory: {trial.message}")
    peaks = [t.peak_bytes for t in result.trials if t.peak_bytes is not None]
    result.peak_bytes = max(peaks) if peaks else None
    if not all(t.fits for t in result.trials):
        result.status = "does_not_fit"
        if result.peak_bytes is not None and result.peak_bytes > result.budget_bytes:
            result.over_by_bytes = result.peak_bytes - result.budget_bytes
    return result


def _cuda_capacity(hw) -> int | None:
    """Emulate the recipe's card size when it was probed with --gpu-memory on a bigger card."""
    import torch

    if not torch.cuda.is_available():
        return None
    total = torch.cuda.get_device_properties(0).total_memory
    return hw.capacity_bytes if hw.capacity_bytes < total else None
