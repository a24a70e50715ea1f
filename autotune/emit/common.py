"""What every emitter needs from a recipe: the sharding strategy in engine terms, the mixed
precision, the model location, the launch environment. Pure functions, no I/O."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UsageError
from ..recipe.schema import STRATEGIES, Recipe
from ..spec import QWEN_VL_UTILS

# Written where a value must come from the user (the recipe cannot know it).
DATASET_PLACEHOLDER = "YOUR_DATASET"
MODEL_PLACEHOLDER = "YOUR_MODEL_ID_OR_PATH"


def zero_stage(strategy: str | None) -> int | None:
    """DeepSpeed ZeRO stage for a recipe strategy; None when the strategy is not DeepSpeed."""
    if strategy and strategy.startswith("zero"):
        return int(strategy[4])
    return None


def offloads(strategy: str | None) -> bool:
    return bool(strategy) and strategy.endswith("_offload")


def check_strategy(recipe: Recipe) -> str | None:
    strategy = recipe.settings.strategy
    if strategy is not None and strategy not in STRATEGIES:
        raise UsageError("RECIPE", f"unknown settings.strategy {strategy!r}", f"expected one of {', '.join(STRATEGIES)}")
    return strategy


def mixed_precision(recipe: Recipe) -> str:
    """`bf16`, `fp16` or `no`: how the Trainer / accelerate should run for the recipe's dtype."""
    from ..recipe.training_args import mixed_precision as of_dtype

    return recipe.settings.mixed_precision or of_dtype(recipe.settings.torch_dtype)


def model_location(recipe: Recipe) -> str:
    """Where a launcher loads the model from. A weights probe knows the directory; a config-only
    probe knows the directory of its config.json (the user's weights usually sit beside it);
    a built-in tiny config has no weights anywhere, so a placeholder is written."""
    model = recipe.model
    if model.source == "weights":
        return _absolute(model.path)
    if model.source == "config":
        path = model.path
        return _absolute(path[: -len("/config.json")] if path.endswith("/config.json") else path)
    return MODEL_PLACEHOLDER


REWARD_MODEL_PLACEHOLDER = "YOUR_REWARD_MODEL_ID_OR_PATH"


def reward_model_location(ref: str) -> str:
    """Where a launcher loads a reward model from: a directory (or the one holding the config file
    probed) as an absolute path; a built-in tiny config's name is no hub id or path: a placeholder."""
    path = Path(ref).expanduser()
    if path.is_file():  # a config file probed: ms-swift loads the directory it sits in
        return _absolute(str(path.parent))
    return _absolute(ref) if path.is_dir() else REWARD_MODEL_PLACEHOLDER


def _absolute(path: str) -> str:
    """A local directory as an absolute path: a launcher started elsewhere (a job script's cwd,
    ms-swift's own) would not find `./Qwen2.5-7B`. Relative to where this runs."""
    return os.path.abspath(os.path.expanduser(path))


def world_size(recipe: Recipe) -> int:
    return max(1, int(recipe.hardware.world_size))


# The media limits ms-swift's templates read from the environment (model/multimodal.py swift_env
# writes the family's own into the recipe): Qwen2-VL's and Qwen2.5-Omni's, InternVL's frames.
VISION_ENV = frozenset({"MAX_PIXELS", "VIDEO_MAX_PIXELS", "VIDEO_MIN_PIXELS", "FPS_MAX_FRAMES", "VIDEO_SEGMENTS"})
# Variables a family's worst case holds at one value (its `swift_env`: Qwen3-VL's MODEL_SEQ_LEN,
# qwen-vl-utils' budget over a video's frames) that a check cannot vary; unset means the library's
# default, which is the value held.
HELD_ENV = frozenset({"MODEL_SEQ_LEN"})
# qwen-vl-utils >= 0.0.14 reads the limits as token numbers; ms-swift's Qwen-VL loaders set each
# from its *_PIXELS name (// the factor squared) only where it is not set already, so one set by
# the user wins (swift `compat_qwen_vl_utils`). Recipe setting for each.
TOKEN_ENV = {"IMAGE_MAX_TOKEN_NUM": "max_pixels", "VIDEO_MAX_TOKEN_NUM": "video_max_pixels",
             "VIDEO_MIN_TOKEN_NUM": "video_min_pixels"}


def launch_env(recipe: Recipe) -> dict[str, str]:
    """Environment the launch needs: the recipe's own `env` (PYTORCH_CUDA_ALLOC_CONF, ...), the
    vision-language limits ms-swift and Qwen-VL processors read, and the process layout."""
    s = recipe.settings
    env: dict[str, str] = {}
    n = world_size(recipe)
    per_node = min(n, max(1, int(recipe.hardware.device_count)))
    if recipe.hardware.device == "cuda" or n > 1:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(per_node))
    if n > 1:
        env["NPROC_PER_NODE"] = str(per_node)
        if n > per_node:
            env["NNODES"] = str(-(-n // per_node))
    own = {str(k): str(v) for k, v in (s.env or {}).items()}
    if not own.keys() & VISION_ENV:  # a recipe without its family's env: the Qwen-VL names, from the settings
        for key, value in (("MAX_PIXELS", s.max_pixels), ("VIDEO_MAX_PIXELS", s.video_max_pixels),
                           ("VIDEO_MIN_PIXELS", s.video_min_pixels), ("FPS_MAX_FRAMES", s.video_frames)):
            if value is not None:
                env[key] = str(value)
    env.update(own)
    return env


def memory_comment(recipe: Recipe) -> str:
    """ms-swift examples open with the cards they need, e.g. `# 2*80GB`. The card is written in
    GiB as torch reports it (an 80 GB H100 is 79.6 GiB: `80GiB`, not `86GB` from 85.5e9 bytes),
    and the note says how the peak is known: measured on a card, on the simulated GPU, or only
    planned (nothing ran)."""
    from ..sizes import format_size

    hw, v = recipe.hardware, recipe.validation
    capacity = hw.capacity_bytes
    card = f"{capacity / 2**30:.0f}GiB" if capacity >= 2**30 else format_size(capacity).replace(".00", "").replace(" ", "")
    line = f"# {world_size(recipe)}*{card}"
    peak = format_size(v.peak_bytes) if v.peak_bytes else None
    if v.method == "planned":
        line += (f"  (autotune plan: {peak} peak per device predicted on fake tensors; nothing ran on a GPU)" if peak
                 else "  (autotune plan: predicted on fake tensors; nothing ran on a GPU)")
    elif peak and hw.device == "sim":
        line += f"  (autotune measured {peak} peak per device on a simulated {format_size(capacity)} GPU, not a real card)"
    elif peak:
        line += f"  (autotune measured {peak} peak per device on {hw.name})"
    return line


def require_validated(recipe: Recipe, allow_unvalidated: bool) -> None:
    v = recipe.validation
    if allow_unvalidated:
        return
    if v.method == "planned":
        raise UsageError("RECIPE", "this recipe is a plan (validation.method: planned): nothing ran on a GPU",
                         "probe it on the cluster first, or add --allow-unvalidated to emit it anyway")
    if not v.passed:
        raise UsageError("RECIPE", f"this recipe's validation did not pass ({v.method}: {v.message or 'no message'})",
                         "re-probe, or add --allow-unvalidated to emit it anyway")


def _qwen3_vl_video(recipe: Recipe) -> bool:
    return bool(recipe.settings.video_frames) and (recipe.multimodal or {}).get("family") == "qwen3-vl"


def image_resize_note(recipe: Recipe) -> str | None:
    """For a launch that resizes with transformers' processor (hf, trl, llamafactory): a recipe
    whose images were counted as ms-swift's qwen-vl-utils sizes them (the largest grid) may
    under-count a thin image, which the processor keeps one factor high past the limit; its
    Qwen3-VL video, which the processor gives one budget over all frames, a video of few frames."""
    if recipe.settings.image_resize != QWEN_VL_UTILS:
        return None
    what = []
    if recipe.settings.max_pixels is not None:
        what.append("images were counted as ms-swift's qwen-vl-utils sizes them (the largest grid under max_pixels); "
                    "transformers' processor, which this launch resizes with, makes more of a thin image under a small "
                    "max_pixels (below about 200 tokens)")
    if _qwen3_vl_video(recipe):
        what.append("the video was counted as qwen-vl-utils sizes its frames (at most video_max_pixels each, less past 300 "
                    "frames); transformers' Qwen3VLVideoProcessor, which this launch resizes with, spends one budget over "
                    "all frames and can make more of a video of few frames")
    return "; ".join(what) + ": re-probe with --image-resize processor for this launch" if what else None


def video_frames_note(recipe: Recipe) -> str | None:
    """A Qwen3-VL video counted under transformers' processor's rule (hf, trl): the processor caps
    no frame below its budget over the whole video, so the count holds for frames of at most
    video_max_pixels only, which the launch's own code must make them (LLaMA-Factory's
    video_max_pixels does: it resizes every frame to it first)."""
    s = recipe.settings
    if s.image_resize == QWEN_VL_UTILS or not _qwen3_vl_video(recipe):
        return None
    return (f"the video's frames were counted at most {s.video_max_pixels} pixels each, as transformers' Qwen3VLVideoProcessor "
            "then resizes them (one budget of 25165824 pixels over the whole video, no per-frame cap): hand it frames of at "
            f"most {s.video_max_pixels} pixels (resize them first), or re-probe with --video-max-pixels at your frames' size")