"""`probe --swift-args FILE`: the ms-swift arguments the user will launch become the probe's flags.

What defines the run is taken from the file: the model, the tuner (LoRA rank, alpha, dropout,
targets; QLoRA from quant_method bnb with quant_bits 4; unset: ms-swift's default, LoRA), max_length (unset: the
model's full length, as ms-swift trains then), torch_dtype (unset: the config's, as ms-swift
loads it), the global batch (per_device_train_batch_size x
gradient_accumulation_steps x the processes the file launches, with ms-swift's own default for
an unset accumulation), freezing, the media limits of its ENV block (and the shell's exports),
what its evaluation keeps (eval_metric / metric acc, predict_with_generate), the levers it turns
on (packing, padding_free, use_liger_kernel, sequence_parallel_size), the DeepSpeed preset, the
optimizer, the `swift rlhf` settings, and its local data (dataset, val_dataset), measured as
--dataset measures it. What autotune searches is not taken: the per-device
batches and accumulation (at the kept global batch), gradient checkpointing and attention; the
file's values for those are what the emitted file then replaces.

A flag given on the command line wins over the file. The reading of the file is emit/swift_read.py's
(as `check --swift-args` reads it); this module maps it onto argparse's names.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..errors import UsageError
from ..recipe.schema import STRATEGIES
from .swift_probe_data import dataset_flags

FLAG = "--swift-args"
TUNERS = ("full", "lora", "qlora")  # qlora: swift_read's name for lora over quant_method bnb, quant_bits 4


def option_dests(parser) -> dict[str, str]:
    """Every option string of `parser` -> its argparse dest."""
    return {option: action.dest for action in parser._actions for option in action.option_strings}


def given_dests(argv: list[str], options: dict[str, str]) -> set[str]:
    """The dests the command line sets (argparse's unique prefixes included), so the file fills only the others."""
    given = set()
    for word in argv:
        if not word.startswith("--"):
            continue
        name = word.split("=", 1)[0]
        if name in options:
            given.add(options[name])
            continue
        dests = {dest for option, dest in options.items() if option.startswith(name)}
        if len(dests) == 1:
            given |= dests
    return given


def fill(args, adjust=None, measure_data: bool = True) -> list[str]:
    """Set on `args` every flag --swift-args's file gives and the command line does not (`adjust`:
    a command's own change to those flags first, as plan's; `measure_data`: the file's local
    dataset becomes --dataset, as a probe measures it); returns the notes for the console."""
    if not getattr(args, "swift_args", None):
        return []
    given = given_dests(getattr(args, "argv", []), getattr(args, "option_dests", {}))
    flags, notes = flags_from_file(args.swift_args, args, given, measure_data=measure_data)
    for dest, value in (adjust(flags) if adjust else flags).items():
        setattr(args, dest, value)
    return notes


def _world_of(args, environ: dict) -> int | None:
    """The world size the probe runs at: torchrun's WORLD_SIZE in a rank it started (a relaunched
    rank's command line has lost --nproc-per-node), else where the flags say it plainly (--nnodes
    2, not 1:2); a plan's --world-size."""
    if getattr(args, "world_size", None):
        return int(args.world_size)
    if str(environ.get("WORLD_SIZE", "")).isdigit():
        return int(environ["WORLD_SIZE"])
    try:
        return int(getattr(args, "nproc_per_node", None) or 1) * int(getattr(args, "nnodes", None) or 1)
    except (TypeError, ValueError):
        return None


def _launch_world(env: dict) -> int:
    """How many processes the file's launch starts: NPROC_PER_NODE x NNODES (ms-swift runs torchrun
    only when NPROC_PER_NODE is set; without it, one process)."""
    try:
        return int(env.get("NPROC_PER_NODE", 1)) * int(env.get("NNODES", 1))
    except ValueError:
        raise UsageError(FLAG, f"NPROC_PER_NODE={env.get('NPROC_PER_NODE')!r} / NNODES={env.get('NNODES')!r} are not whole numbers") from None


def _model_flags(file: dict, given: set[str], path: str) -> dict:
    if "model" in given or "model_config" in given:
        return {}
    model = file.get("model")
    if not model:
        raise UsageError(FLAG, f"{path} names no model", "add `model: DIR` to it, or give --model DIR / --model-config CONFIG")
    directory = Path(str(model)).expanduser()
    if (directory / "config.json").is_file():
        from ..model.source import has_weights

        # a directory with the config alone: random init, the same memory and speed
        return {"model": str(directory)} if has_weights(directory) else {"model_config": str(directory)}
    raise UsageError(FLAG, f"{path}'s model {model!r} is not a local directory with a config.json (autotune downloads nothing)",
                     "give --model DIR (a local copy) or --model-config CONFIG (its config.json: random init, the same memory)")


def _tuner_flags(model: dict) -> dict:
    flags: dict = {}
    tuner = model.get("train_type") or "lora"  # ms-swift's default tuner (rank 8, alpha 32, dropout 0.05, all-linear: autotune's too)
    if tuner not in TUNERS:
        raise UsageError(FLAG, f"tuner_type {tuner!r} is not one autotune probes", "probe full or lora (tuner_type: full | lora)")
    flags["train_type"] = tuner
    lora = model.get("lora")
    if lora:
        flags.update(lora_r=int(lora["r"]), lora_alpha=int(lora["alpha"]), lora_dropout=float(lora["dropout"]))
        if lora.get("target_regex"):
            flags["lora_target_regex"] = lora["target_regex"]
        else:
            flags["lora_target_modules"] = ",".join(lora["target_modules"]) if isinstance(lora["target_modules"], list) else lora["target_modules"]
    return flags


def _eval_flags(file: dict, settings: dict) -> dict:
    """What ms-swift's evaluation keeps: argmax ids for `eval_metric` / `metric` acc, generated ids
    with predict_with_generate, else the loss (no compute_metrics); autotune's default for ms-swift."""
    if settings.get("prediction_loss_only"):
        return {"prediction_loss_only": True}
    if str(file.get("predict_with_generate", "")).lower() in ("true", "1"):
        flags = {"predict_with_generate": True}
        if file.get("max_new_tokens") is not None:
            flags["max_new_tokens"] = int(file["max_new_tokens"])
        return flags
    metric = file.get("eval_metric", file.get("metric"))
    return {"eval_outputs": "argmax" if metric == "acc" else "loss"}


# probe's flags that set the eval phase (--no-eval refuses them beside it); one on the command line
# asks for an eval phase the file's run may not have
EVAL_FLAGS = ("eval_steps", "eval_outputs", "prediction_loss_only", "predict_with_generate", "max_new_tokens")


def _evaluates(file: dict, given: set[str], path: str) -> tuple[bool, str | None]:
    """Whether the file's run evaluates a loss batch during training, as ms-swift decides it (3.x
    and 4.x alike): only with an evaluation set (val_dataset, a cached one, or split_dataset_ratio >
    0, which streaming data resets to 0) and an eval_strategy other than "no" (unset, it follows
    save_strategy); without a set it sets eval_strategy no. An eval_dataset alone is EvalScope's
    benchmark, which generates rather than running the eval batch. (False, note) where it does
    not and the command line asks nothing of the eval phase: the probe then probes none."""
    if "no_eval" in given:
        return False, None
    if given & set(EVAL_FLAGS):
        return True, None
    strategy = file.get("eval_strategy", file.get("save_strategy"))
    if str(strategy).lower() == "no":
        key = "eval_strategy" if "eval_strategy" in file else "save_strategy (which an unset eval_strategy follows)"
        return False, f"{path} sets {key} no: the run evaluates nothing, so no eval batch is probed"
    try:
        split = float(file.get("split_dataset_ratio") or 0)
    except (TypeError, ValueError):
        raise UsageError(FLAG, f"{path}'s split_dataset_ratio {file.get('split_dataset_ratio')!r} is not a number") from None
    if str(file.get("streaming", "")).lower() in ("true", "1"):
        split = 0.0  # ms-swift cannot split a stream
    if split > 0 or any(file.get(key) for key in ("val_dataset", "cached_val_dataset")):
        return True, None
    evalscope = " (its eval_dataset is EvalScope's benchmark, which generates; not probed)" if file.get("eval_dataset") else ""
    return False, (f"{path} has no evaluation set (val_dataset, or split_dataset_ratio > 0 on data that does not stream; ms-swift's "
                   f"default is 0), so ms-swift evaluates no batch during training{evalscope}: no eval batch is probed (add one "
                   "to the file and probe again, or give --eval-outputs loss to probe the eval phase anyway)")


def _strategy_flags(file: dict, settings: dict) -> dict:
    if file.get("fsdp"):
        return {"strategy": "fsdp"}
    strategy = settings.get("strategy")
    if strategy is None:
        return {}
    if strategy not in STRATEGIES:
        raise UsageError(FLAG, f"deepspeed {strategy!r} is not one of ms-swift's presets autotune probes ({', '.join(s for s in STRATEGIES if s.startswith('zero'))})",
                         "give --strategy zero2 / zero3 (the preset your config file matches)")
    return {"strategy": strategy}


# recipe settings (swift_read's names) that are probe dests of the same name and meaning
_SAME = ("max_length", "optim", "freeze_vit", "freeze_aligner", "freeze_llm", "max_pixels", "video_max_pixels", "video_min_pixels",
         "video_frames", "sequence_parallel_size", "rlhf_type", "num_generations", "max_completion_length", "beta", "vllm_mode",
         "vllm_gpu_memory_utilization", "sleep_level", "steps_per_generation")
_SWITCHES = {"use_vllm": "use_vllm", "offload_model": "offload_model", "offload_optimizer": "offload_optimizer"}
_LEVERS = {"packing": "packing", "padding_free": "padding_free", "use_liger_kernel": "liger"}


def flags_from_file(path: str, args, given: set[str], environ: dict | None = None, measure_data: bool = True) -> tuple[dict, list[str]]:
    """(argparse dest -> value for every flag the file sets and the command line does not, notes
    for the user). Raises UsageError naming what in the file cannot be probed."""
    from ..emit.swift_read import default_max_length, launch_environment, read_args, refuse_unprobed, settings_from_args

    environ = dict(os.environ) if environ is None else environ
    file = read_args(path)
    refuse_unprobed(file, path)
    settings, model = settings_from_args(file, environ)  # Qwen-VL token variables need the model: MAX_PIXELS is read
    flags: dict = {"image_resize": settings["image_resize"]}
    if settings.get("rlhf_type"):
        flags["rlhf_target"] = "swift"  # its defaults (beta 0.04, ...) are the run's
    flags.update(_model_flags(file, given, path))
    flags.update(_tuner_flags(model))
    config = _Config(flags, args)
    dtype = settings.get("torch_dtype") or config.dtype()  # unset: ms-swift loads the model in its config's dtype
    if dtype:
        flags["dtype"] = dtype
    _same_precision(file, flags.get("dtype") or getattr(args, "dtype", None), path)
    for key in _SAME:
        if settings.get(key) is not None:
            flags[key] = settings[key]
    if "use_audio_in_video" in settings:
        flags["use_audio_in_video"] = settings["use_audio_in_video"]
    for key, dest in _SWITCHES.items():
        if settings.get(key):
            flags[dest] = True
    for key, dest in _LEVERS.items():
        if settings.get(key) and not (key == "padding_free" and settings.get("packing")):  # ms-swift's packing is padding-free
            flags[dest] = "on"  # the file needs it (padding_free's collator, packing's rows): not searched away
    if settings.get("packing") or settings.get("padding_free"):
        flags["attn"] = "flash_attention_2"  # the only attention ms-swift runs them with (SftArguments._check_padding_free)
    notes = _media_the_model_takes(flags, config.get(), path)
    evaluates, eval_note = _evaluates(file, given, path)
    flags.update(_eval_flags(file, settings) if evaluates else {"no_eval": True})
    if eval_note:
        notes.append(eval_note)
    flags.update(_strategy_flags(file, settings))
    data, data_note = dataset_flags(file, flags, args, given, path, measure_data, environ, config.get())
    flags.update(data)
    if flags.get("max_length") is None and "max_length" not in given:
        full = default_max_length(config.get())
        if full is None:
            raise UsageError(FLAG, f"{path} sets no max_length and the model's config states no length", "add max_length to it, or give --max-length N")
        flags["max_length"] = full
        probed = ("its longest sample up to that" if data else "that") + (", and so does this probe" if measure_data else "; plan at that")
        notes.append(f"{path} sets no max_length: ms-swift then trains at up to the model's full length, {full} tokens, {probed} "
                     f"(give --max-length auto for the longest that fits, or --max-length N)")
    if data_note:
        notes.append(data_note)
    if "global_batch_size" not in given:
        layout = launch_environment(file, environ, ("NPROC_PER_NODE", "NNODES", "CUDA_VISIBLE_DEVICES"))  # a 3.x YAML's: the shell's
        flags["global_batch_size"], note = _global_batch(file, settings, layout, args, path, environ)
        if note:
            notes.append(note)
        cards = [c for c in layout.get("CUDA_VISIBLE_DEVICES", "").split(",") if c.strip()]
        if len(cards) > 1 and "NPROC_PER_NODE" not in layout:
            notes.append(f"{path} launches one process on {len(cards)} cards (CUDA_VISIBLE_DEVICES, no NPROC_PER_NODE): ms-swift then "
                         "splits the model over them (device_map auto); this probe holds it on one card, more than any of them will")
    return {k: v for k, v in flags.items() if k not in given}, notes


_IMAGE_KEYS = ("max_pixels",)
_VIDEO_KEYS = ("video_frames", "video_max_pixels", "video_min_pixels", "use_audio_in_video")
_VISION_ONLY = ("freeze_vit", "freeze_aligner", "freeze_llm", "image_resize")


def _media_the_model_takes(flags: dict, config, path: str) -> list[str]:
    """Drop from `flags` the media limits this model does not read, as ms-swift's template does not
    (a text model reads none; a family with its own image size no MAX_PIXELS; one without video
    no video limits): exported in a shell for another model, they would stop the probe. Notes name
    the limits dropped, and say how to leave out a video the data does not have."""
    from ..model.families import family_for

    family = family_for(config)
    drop = list(_IMAGE_KEYS + _VIDEO_KEYS + _VISION_ONLY) if family is None else \
        [k for k in _IMAGE_KEYS if family.pixels_per_token is None] + [k for k in _VIDEO_KEYS if not family.supports_video]
    dropped = [k for k in drop if flags.pop(k, None) not in (None, False) and k not in _VISION_ONLY]
    what = "a text model" if family is None else family.name
    notes = [f"{', '.join(dropped)} from {path} or this shell: not read for {what} (ms-swift ignores them too); not probed"] if dropped else []
    if flags.get("video_frames"):
        notes.append(f"probing one video of {flags['video_frames']} frames per sample (the frame limit {path} or this shell sets); "
                     "give --video-frames 0 if your data has no video")
    return notes


def _same_precision(file: dict, dtype: str | None, path: str) -> None:
    """The probe's mixed precision follows the dtype (bf16 for bfloat16, fp16 for float16, none for
    float32); ms-swift's follows the file's bf16 / fp16 keys, and turns fp16 on for float32 weights
    where fp16 is unset. A file whose precision is another is refused rather than probed as a
    different run."""
    from ..emit.swift_read import mixed_precision_of
    from ..recipe.training_args import MIXED_PRECISION

    if dtype is None:
        return
    theirs = mixed_precision_of({**file, "torch_dtype": dtype})
    ours = MIXED_PRECISION.get(dtype, "no")
    if theirs != ours:
        raise UsageError(FLAG, f"{path} trains {dtype} weights with {theirs} mixed precision (its bf16 / fp16, as ms-swift sets "
                               f"them), and autotune probes {dtype} with {ours}",
                         "set bf16 / fp16 to match torch_dtype (bf16: true for bfloat16, fp16: true for float16), "
                         "or torch_dtype to the precision you train in")


class _Config:
    """The model's transformers config, read once where the file leaves a value to it."""

    def __init__(self, flags: dict, args):
        self.model = flags.get("model") or getattr(args, "model", None)
        self.model_config = flags.get("model_config") or getattr(args, "model_config", None)
        self._config = None

    def get(self):
        if self._config is None:
            from ..model.source import resolve

            self._config = resolve(self.model, self.model_config).config
        return self._config

    def dtype(self) -> str | None:
        config = self.get()  # transformers 5 names it dtype (torch_dtype warns when read)
        value = getattr(config, "dtype", None) if hasattr(config, "dtype") else getattr(config, "torch_dtype", None)
        name = str(value).replace("torch.", "") if value is not None else None
        return name if name in ("bfloat16", "float16", "float32") else None


def _global_batch(file: dict, settings: dict, env: dict, args, path: str, environ: dict) -> tuple[int, str | None]:
    """per_device_train_batch_size x gradient_accumulation_steps x the launch's processes, with
    ms-swift's defaults (batch 1; accumulation ceil(16 / batch / world), GRPO's 1)."""
    world = _launch_world(env)
    here = _world_of(args, environ)
    if here is not None and here != world:
        raise UsageError(FLAG, f"{path} launches {world} process(es) (NPROC_PER_NODE x NNODES) and this probe runs at world size {here}, "
                               "so its global batch has no per-device split here",
                         f"probe at --nproc-per-node {world} (plan: --world-size {world}), or give --global-batch-size G to keep at world size {here}")
    batch = settings.get("per_device_train_batch_size") or 1
    accumulation = settings.get("gradient_accumulation_steps")
    note = None
    if accumulation is None:
        accumulation = 1 if settings.get("rlhf_type") == "grpo" else max(1, math.ceil(16 / batch / world))
        note = (f"{path} sets no gradient_accumulation_steps: ms-swift then takes {accumulation} "
                f"(a global batch of at least 16), so the probe keeps the global batch {batch * accumulation * world}")
    return batch * accumulation * world, note
