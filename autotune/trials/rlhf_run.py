"""Build the TRL trainer an RLHF trial runs (issue #12): `GRPOTrainer` or `DPOTrainer`, both
`transformers.Trainer` subclasses, so a trial is still `Trainer.train()` measured by the same
callback (trials/trial.py). TRL's loss, generation, reference forward and batch rules run as
in the user's job; autotune supplies only the worst-case data and what it cannot load here.

- **Data.** GRPO: prompts of exactly `max_length` tokens, each generated `num_generations`
  completions of exactly `max_completion_length` tokens (generation may not stop early:
  `min_new_tokens`); a reward function of random rewards, so the advantages are not zero.
  DPO: prompt + chosen and prompt + rejected of `max_length` tokens each. The text comes from
  model/tokenizer.py's word-per-id tokenizer, so every length is exact; a vision-language
  policy's prompts carry the family's worst-case images (trials/rlhf_data.py makes the data).
- **The rollout engine.** Without vLLM, TRL generates with the policy's `generate()` inside the
  training step: measured. With `--use-vllm` where vLLM cannot start here (it is not installed,
  or the card is simulated), the completions come through TRL's own `rollout_func` hook, as an
  external engine hands them over, and a colocated engine's share of the card is held as a
  block (`device.reserved`): whole while it generates, and while the trainer trains what
  trials/rlhf_rollout.py says the engine keeps then (less at sleep levels 1 and 2, ms-swift's
  `sleep_level`, TRL's `vllm_enable_sleep_mode`). Where vLLM is importable on a CUDA card, TRL
  starts it colocated itself at the share, and the run measures it.
- **The reference model** is resident where the framework loads one (recipe/rlhf.py
  `reference_model`): a full fine-tune with beta != 0. TRL builds it with `from_pretrained` from
  the policy's path; a model built from config.json alone has no such path, so the copy is built
  as the policy was (random init on the device, same dtype) and handed to TRL, once per probe.
- **Batch rules per trial.** A search trial at a per-device batch that does not split the
  generation into whole groups gets the next generation batch that does (TRL rejects the
  others), which holds more completions than the launched one: never less memory. The batches a
  recipe may choose are the ones the rules allow (recipe/rlhf.py).
"""

from __future__ import annotations

import contextlib
import math
import random

from .rlhf_data import TrialData
from .rlhf_rollout import resolved_share, rollout_how, rollout_record, share_bytes, size_rollout, training_share_bytes

# TRL warns on every trainer built with its (experimental) rollout_func hook.
_SILENCE = {"TRL_EXPERIMENTAL_SILENCE": "1"}


def recipe_settings(spec, workload) -> dict:
    """The recipe's RLHF settings (ms-swift's names), the share resolved (`auto`: its chosen value)."""
    values = spec.rlhf.settings()
    if spec.rlhf.colocated:
        values["vllm_gpu_memory_utilization"] = resolved_share(spec.rlhf, workload)
    return values


def recipe_record(spec, workload, batch: int, accumulation: int, world_size: int, capacity: int) -> dict:
    """The recipe's `rlhf` record: the target's defaults, the reference model, the rollout engine
    (shared by the probe and the plan)."""
    from ..recipe.rlhf import generation_batch

    from importlib.metadata import version

    rlhf = spec.rlhf
    record = {"type": rlhf.rlhf_type, "target": rlhf.target, "trl": version("trl"), "reference_model": rlhf.reference_model(spec.train_type),
              "beta": rlhf.kl_beta, "beta_from": "given" if rlhf.beta is not None else f"{rlhf.target}'s default"}
    if rlhf.reward_models:
        record["reward_models"] = "resident beside the policy, scoring every completion: " + ", ".join(rlhf.reward_models)
    if rlhf.rlhf_type == "grpo":
        record.update(
            num_generations=rlhf.generations, max_completion_length=rlhf.completion_length,
            generation_batch_size=generation_batch(batch, accumulation, world_size, rlhf.steps_per_generation),
            global_batch=("chosen: ms-swift's default total batch of 16, rounded up to whole groups of num_generations on every rank"
                          if rlhf.global_batch_defaulted else "given"),
            rollout=rollout_record(rlhf, workload, capacity),
            cycles=f"each trial runs >= 3 generate -> score -> train cycles ({spec.steps} optimizer steps)")
    return record


def check_vision(setup, spec, trials: bool = True) -> None:
    """What a vision-language RLHF probe cannot run, refused before the model loads: families whose
    processor autotune does not build yet, video (TRL's RLHF data carries images), and DPO's
    precomputed reference log-probs, which TRL refuses for vision datasets. (Reward models passed
    as models run: TRL hands them text alone, trials/rlhf_data.py.) `trials=False` (a plan):
    Pillow is not needed, since no processor runs."""
    from ..errors import UsageError

    family, rlhf = setup.family, spec.rlhf
    if family is None:
        return
    if family.processor is None:
        raise UsageError("--rlhf-type", f"RLHF probes of {family.name} models are not supported yet: the trials build the "
                         "processor TRL's image path needs for Qwen2-VL and Qwen2.5-VL only", "probe a Qwen2-VL or Qwen2.5-VL model, or SFT")
    import importlib.util

    if trials and importlib.util.find_spec("PIL") is None:
        from ..extras import install_hint

        raise UsageError("--rlhf-type", "TRL's image path takes PIL images, and Pillow is not installed", install_hint("vision"))
    if spec.video_frames:
        raise UsageError("--video-frames", "TRL's GRPO and DPO data carry images, not video", "leave --video-frames out")
    if rlhf.rlhf_type == "dpo" and rlhf.precompute_ref_log_probs:
        raise UsageError("--precompute-ref-log-probs", "TRL does not precompute the reference log-probs of vision datasets",
                         "leave --precompute-ref-log-probs out")
    if rlhf.rlhf_type == "dpo" and setup.vision.tokens + 2 > spec.max_length:
        raise UsageError("--max-length", f"a DPO pair needs the prompt's {setup.vision.tokens} image tokens, a word and a response "
                         f"token: {setup.vision.tokens + 2} tokens", f"use --max-length {setup.vision.tokens + 2} or more, or a lower --max-pixels")


# ---------------------------------------------------------------- the reference model

def prepare(workload) -> None:
    """Build the reference model once per probe when the framework keeps one resident, before a
    trial's baseline is taken (it stays on the card from then on, as in the run)."""
    rlhf = workload.spec.rlhf
    size_rollout(workload)
    _load_reward_models(workload)
    if getattr(workload, "reference", None) is not None or rlhf.reference_model(workload.spec.train_type) != "loaded":
        return
    from ..model.workload import build_model

    family = workload.setup.family if workload.setup is not None else None
    reference = build_model(workload.source, workload.spec, workload.device, family)
    reference.eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    workload.device.adopt(list(reference.parameters()) + list(reference.buffers()))
    workload.reference = reference


def _load_reward_models(workload) -> None:
    """GRPO's reward models passed as models: built once per probe on the device, in the policy's
    dtype, frozen (TRL runs them under no_grad), with a word-per-id tokenizer at their vocabulary."""
    rlhf = workload.spec.rlhf
    if not rlhf.reward_models or hasattr(workload, "reward_models"):
        return
    device = workload.device
    models = [reward_model(name, workload.spec.dtype, device.torch_device) for name in rlhf.reward_models]
    for model in models:
        device.adopt(list(model.parameters()) + list(model.buffers()))
    workload.reward_models = models


def reward_model(name: str, dtype: str, torch_device, weights: bool = True):
    """One reward model as TRL loads it (`AutoModelForSequenceClassification`, `num_labels=1`),
    frozen, in eval mode: from a model directory's weights (`weights`, else its config alone), a
    config.json or a built-in name (random init), built on `torch_device` (`meta` for a plan)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from ..model.source import resolve
    from ..model.workload import TORCH_DTYPES

    dtype_ = TORCH_DTYPES[dtype]
    from_dir = _is_model_dir(name)
    source = resolve(name if from_dir else None, None if from_dir else name, causal_lm=False)
    if from_dir and weights:
        model = AutoModelForSequenceClassification.from_pretrained(source.path, num_labels=1, dtype=dtype_,
                                                                   device_map={"": torch_device})
    else:
        source.config.num_labels = 1
        with torch.device(torch_device):
            model = AutoModelForSequenceClassification.from_config(source.config, dtype=dtype_)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = 0  # the word tokenizer's padding; TRL pads the reward inputs
    return model.eval().requires_grad_(False)


def _is_model_dir(name: str) -> bool:
    from pathlib import Path

    path = Path(name).expanduser()  # a directory with weights beside config.json; a config alone is random init
    return path.is_dir() and (path / "config.json").is_file() and (any(path.glob("*.safetensors")) or any(path.glob("*.bin")))


@contextlib.contextmanager
def _reference_for_grpo(workload):
    """GRPOTrainer builds its reference with `create_model_from_path(policy path)`: hand it ours."""
    reference = getattr(workload, "reference", None)
    if reference is None:
        yield
        return
    import trl.trainer.grpo_trainer as grpo

    original = grpo.create_model_from_path
    grpo.create_model_from_path = lambda *args, **kwargs: reference
    try:
        yield
    finally:
        grpo.create_model_from_path = original


# ---------------------------------------------------------------- batch rules per trial

def trial_generation_batch(batch: int, accumulation: int, world: int, generations: int, steps_per_generation: int | None) -> int:
    """The generation batch a trial runs: the launched one where it holds whole groups, else the
    next that does and that TRL accepts (a multiple of batch x world and of num_generations)."""
    wanted = batch * world * (steps_per_generation or accumulation)
    unit = math.lcm(batch * world, generations)
    return -(-wanted // unit) * unit


def eval_generations(batch: int, world: int, generations: int) -> int:
    """num_generations at evaluation: the run's where the eval batch holds whole groups, else the
    largest group that divides it (same completions per step: the same memory)."""
    total = batch * world
    if total % generations == 0:
        return generations
    return max(d for d in range(1, generations + 1) if total % d == 0)


# ---------------------------------------------------------------- DeepSpeed

def deepspeed_config(workload, settings: dict, strategy: str) -> dict:
    """The DeepSpeed config the launch files carry (emit/deepspeed.py `engine_config`), at this
    trial's batch, for the TRL trainer's `deepspeed` argument: the Trainer initialises the engine,
    TRL gathers ZeRO-3 weights to generate and prepares its reference and reward models with it."""
    import torch.distributed as dist

    from ..emit.deepspeed import engine_config, hidden_size
    from ..recipe.training_args import mixed_precision

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return engine_config(strategy, int(settings["per_device_train_batch_size"]), int(settings.get("gradient_accumulation_steps") or 1),
                         world, settings.get("mixed_precision") or mixed_precision(workload.spec.dtype), hidden_size(workload.model.config))


# ---------------------------------------------------------------- the trainers

def build_rlhf_trainer(workload, settings: dict, values: dict, train_steps: int, eval_every: int | None, eval_steps: int, meter):
    """The TRL trainer for one trial, the context its run needs (the rollout share), and what to
    restore on the reference model. `values`: the run's TrainingArguments (trainer_run)."""
    import os

    os.environ.update(_SILENCE)
    import datasets

    datasets.disable_progress_bars()  # TRL maps its datasets with progress bars
    rlhf = workload.spec.rlhf
    data = TrialData(workload, random.Random(workload.spec.seed))
    import torch.distributed as dist

    # TRL's batch rules count every rank's completions: one process, or a supervised worker's group.
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    build = _grpo if rlhf.rlhf_type == "grpo" else _dpo
    return build(workload, settings, values, train_steps, eval_every, eval_steps, meter, data, world)


def _grpo(workload, settings, values, train_steps, eval_every, eval_steps, meter, data, world):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    rlhf, spec, device = workload.spec.rlhf, workload.spec, workload.device
    batch = int(settings["per_device_train_batch_size"])
    accumulation = int(settings.get("gradient_accumulation_steps") or 1)
    generations, completion = rlhf.generations, rlhf.completion_length
    generation_batch = trial_generation_batch(batch, accumulation, world, generations, rlhf.steps_per_generation)
    how = rollout_how(rlhf, device)
    vllm_here = how == "measured (vLLM colocated)"
    grpo = dict(num_generations=generations, max_completion_length=completion, beta=rlhf.kl_beta,
                generation_batch_size=generation_batch, log_completions=False,
                generation_kwargs={"min_new_tokens": completion})  # no early stop: every completion at full length
    if vllm_here:
        grpo.update(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=float(resolved_share(rlhf, workload)),
                    vllm_enable_sleep_mode=rlhf.sleep_level > 0, vllm_max_model_length=spec.max_length + completion)
    eval_batch = int(settings.get("per_device_eval_batch_size") or 1)
    if eval_every:
        grpo["num_generations_eval"] = eval_generations(eval_batch, world, generations)
    if rlhf.steps_per_generation and not eval_every and rlhf.train_allowed(batch, accumulation, world):
        # One generation feeds several optimizer steps: run three generate -> score -> train cycles. (A search
        # trial at a batch the rules do not allow, whose generation was rounded up, runs its own steps.)
        per_generation = -(-generation_batch // (batch * world * accumulation))
        values = {**values, "max_steps": max(values["max_steps"], 3 * per_generation)}
    args = GRPOConfig(**values, **grpo)
    prompts = data.prompts(max(1, generation_batch // generations), spec.max_length)
    train = Dataset.from_dict({k: v * (train_steps * max(1, args.steps_per_generation) + 1) for k, v in prompts.items()})
    evaluation = None
    if eval_every:
        per_eval = max(1, eval_batch * world // grpo["num_generations_eval"])
        evaluation = Dataset.from_dict({k: v[:1] * (per_eval * eval_steps) for k, v in prompts.items()})
    reserve = share_bytes(workload)
    resident = training_share_bytes(workload, reserve)
    kwargs = {}
    if rlhf.use_vllm and not vllm_here:
        kwargs["rollout_func"] = data.rollout(completion, reserve - resident)
    with _reference_for_grpo(workload):
        rewards = getattr(workload, "reward_models", None)
        if rewards:
            kwargs["reward_processing_classes"] = [data.reward_processing_class(m.config.vocab_size) for m in rewards]
        trainer = GRPOTrainer(model=workload.model, reward_funcs=list(rewards) if rewards else _random_reward(data.rng), args=args,
                              train_dataset=train, eval_dataset=evaluation, processing_class=data.processing_class, callbacks=[meter],
                              **kwargs)
    # With LoRA and beta != 0, TRL copies the adapter as a frozen "ref" adapter while the trainer is
    # built, before the trial's counting starts: charge it to the card as the run holds it.
    device.adopt([p for name, p in workload.model.named_parameters() if ".ref." in name])
    during = device.reserved(resident) if resident else contextlib.nullcontext()
    return trainer, during


def _random_reward(rng):
    def reward(completions, **kwargs):
        return [rng.random() for _ in completions]

    return reward


def _dpo(workload, settings, values, train_steps, eval_every, eval_steps, meter, data, world):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    rlhf, spec = workload.spec.rlhf, workload.spec
    batch = int(settings["per_device_train_batch_size"])
    accumulation = int(settings.get("gradient_accumulation_steps") or 1)
    args = DPOConfig(**values, beta=rlhf.kl_beta, max_length=spec.max_length, precompute_ref_log_probs=rlhf.precompute_ref_log_probs)
    eval_batch = int(settings.get("per_device_eval_batch_size") or 1)
    train = Dataset.from_dict(data.pairs(batch * accumulation * world * train_steps, spec.max_length))
    evaluation = Dataset.from_dict(data.pairs(eval_batch * world * eval_steps, spec.max_length)) if eval_every else None
    trainer = DPOTrainer(model=workload.model, ref_model=getattr(workload, "reference", None), args=args, train_dataset=train,
                         eval_dataset=evaluation, processing_class=data.processing_class, callbacks=[meter])
    data.collate_on_host(trainer)
    return trainer, contextlib.nullcontext()


def restore_reference(workload, prepared_keys) -> None:
    """Undo what the trainer left for the next trial: accelerate's prepare on the cached reference
    model (its forward wrapper and flag), and the frozen copy of the LoRA adapter ("ref") TRL adds
    to a PEFT policy as its reference when beta != 0 (the next trainer would add it again)."""
    reference = getattr(workload, "reference", None)
    if reference is not None:
        for key in prepared_keys:
            reference.__dict__.pop(key, None)
    model = workload.model
    if "ref" in (getattr(model, "peft_config", None) or {}):
        model.delete_adapter("ref")
        model.set_adapter("default")
