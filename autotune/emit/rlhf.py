"""What every RLHF launch file needs from a recipe (issue #12): which trainer it is, the batch
rules TRL and ms-swift enforce at start-up, and what the recipe's `rlhf` record says about the
reference model and the rollout engine's share, as sentences a file's comments (or TRL's
sidecar) carry. Pure functions, no I/O."""

from __future__ import annotations

from ..errors import UsageError
from ..recipe.schema import Recipe
from ..sizes import format_size
from .common import world_size

TYPES = ("grpo", "dpo")


def rlhf_type(recipe: Recipe) -> str | None:
    """"grpo" | "dpo" for an RLHF recipe, None for a supervised one."""
    kind = recipe.settings.rlhf_type
    if kind is None:
        return None
    if kind not in TYPES:
        raise UsageError("RECIPE", f"unknown settings.rlhf_type {kind!r}", f"expected one of {', '.join(TYPES)}")
    check_batch_rules(recipe)
    return kind


def steps_per_generation(recipe: Recipe) -> int:
    """The value the run uses: the recipe's, else TRL's and ms-swift's default, the accumulation."""
    s = recipe.settings
    return int(s.steps_per_generation or s.gradient_accumulation_steps)


def generation_batch_size(recipe: Recipe) -> int:
    """Completions generated per rollout, all ranks: per-device batch x world x steps_per_generation."""
    return recipe.settings.per_device_train_batch_size * world_size(recipe) * steps_per_generation(recipe)


def check_batch_rules(recipe: Recipe) -> None:
    """GRPO's divisibility rules (TRL's GRPOConfig and ms-swift's check them at start-up): a recipe
    that breaks them (edited by hand) would fail there, after the job waited for its cards."""
    s = recipe.settings
    if s.rlhf_type != "grpo" or not s.num_generations or s.num_generations < 2:
        return
    g, world = s.num_generations, world_size(recipe)
    if generation_batch_size(recipe) % g:
        raise UsageError("RECIPE", f"the generation batch {s.per_device_train_batch_size} x {world} ranks x "
                         f"{steps_per_generation(recipe)} steps_per_generation = {generation_batch_size(recipe)} is not "
                         f"divisible by num_generations {g}", "re-probe, or edit settings.steps_per_generation or the batch")
    if s.per_device_eval_batch_size and (s.per_device_eval_batch_size * world) % g:
        raise UsageError("RECIPE", f"the eval batch {s.per_device_eval_batch_size} x {world} ranks is not divisible by "
                         f"num_generations {g}", "re-probe, or edit settings.per_device_eval_batch_size")


def notes(recipe: Recipe, framework: str) -> list[str]:
    """Sentences on how the run was modelled: the target it followed, the reference model, the
    rollout engine's share (reserved or measured, and why), sleep. `framework`: who reads the file."""
    record, s = recipe.rlhf or {}, recipe.settings
    out: list[str] = []
    target = record.get("target")
    if target and target != framework:
        out.append(f"modelled as {target} runs it (beta {s.beta}); the settings are written out here, so {framework}'s "
                   f"defaults do not apply, but what {framework} keeps resident may differ")
    if record.get("reference_model"):
        out.append(f"reference model: {record['reference_model']}")
    rollout = record.get("rollout")
    if rollout:
        out.append(rollout_sentence(rollout))
        auto = rollout.get("auto")
        if auto:
            out.append("vllm_gpu_memory_utilization auto: " + ", ".join(_auto_items(auto)))
    elif s.use_vllm:
        out.append("the recipe records nothing of vLLM's share (no rlhf.rollout): it was not modelled")
    if s.sleep_level:
        out.append(f"sleep_level {s.sleep_level}: vLLM releases its share while the policy trains "
                   "(1: KV cache freed, weights to host memory; 2: both discarded) and takes it back to generate")
    return out


def rollout_sentence(rollout: dict) -> str:
    engine = {"vllm": "vLLM"}.get(rollout.get("engine", "vllm"), rollout.get("engine"))
    if rollout.get("mode") == "server":
        return f"{engine} runs as its own server (vllm_mode server): no share of the training cards was set aside"
    if rollout.get("engine") == "generate":  # no rollout engine: the policy generates, inside the probed step
        return "generation was measured as the run does it: " + (rollout.get("why") or "the policy's own generate()")
    share = rollout.get("share")
    size = f" ({format_size(rollout['share_bytes'])})" if rollout.get("share_bytes") else ""
    how = rollout.get("how")
    why = rollout.get("why") or rollout.get("reason")
    if how == "measured":
        text = f"{engine}'s share {share} of the card{size} was measured: {engine} ran colocated while probed"
    else:
        text = f"{engine}'s share {share} of the card{size} was reserved, not measured"
    return text + (f": {why}" if why else "")


def _auto_items(auto: dict) -> list[str]:
    return [f"{k} {format_size(v) if isinstance(v, int) and k.endswith('bytes') else v}" for k, v in auto.items()]
