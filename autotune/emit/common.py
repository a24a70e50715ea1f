"""What every emitter needs from a recipe: the sharding strategy in engine terms, the mixed
precision, the model location, the launch environment. Pure functions, no I/O."""

from __future__ import annotations

from ..errors import UsageError
from ..recipe import Recipe

STRATEGIES = ("ddp", "zero2", "zero3", "zero2_offload", "zero3_offload", "fsdp")
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
    from ..training_args import mixed_precision as of_dtype

    return of_dtype(recipe.settings.torch_dtype)


def model_location(recipe: Recipe) -> str:
    """Where a launcher loads the model from. A weights probe knows the directory; a config-only
    probe knows the directory of its config.json (the user's weights usually sit beside it);
    a built-in tiny config has no weights anywhere, so a placeholder is written."""
    model = recipe.model
    if model.source == "weights":
        return model.path
    if model.source == "config":
        path = model.path
        return path[: -len("/config.json")] if path.endswith("/config.json") else path
    return MODEL_PLACEHOLDER


def world_size(recipe: Recipe) -> int:
    return max(1, int(recipe.hardware.world_size))


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
    for key, value in (("MAX_PIXELS", s.max_pixels), ("VIDEO_MAX_PIXELS", s.video_max_pixels), ("FPS_MAX_FRAMES", s.video_frames)):
        if value is not None:
            env[key] = str(value)
    env.update({str(k): str(v) for k, v in (s.env or {}).items()})
    return env


def memory_comment(recipe: Recipe) -> str:
    """ms-swift examples open with the cards they need, e.g. `# 2*80GB`; add what was measured."""
    from ..sizes import format_size

    capacity = recipe.hardware.capacity_bytes
    card = f"{capacity / 1e9:.0f}GB" if capacity >= 1e9 else format_size(capacity).replace(".00", "").replace(" ", "")
    line = f"# {world_size(recipe)}*{card}"
    if recipe.validation.peak_bytes:
        line += f"  (autotune measured {format_size(recipe.validation.peak_bytes)} peak per device on {recipe.hardware.name})"
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
