"""`probe` / `plan` flags for RLHF workloads (issue #12; autotune/recipe/rlhf.py), in ms-swift's
argument names with dashes."""

from __future__ import annotations

from ..errors import UsageError
from ..recipe.rlhf import RLHF_TYPES, SLEEP_LEVELS, TARGETS, VLLM_MODES, RLHFSpec
from .multimodal_args import number_or_auto

EXAMPLES = """\
  # GRPO with LoRA and vLLM colocated at 0.25 of the card (reserved where vLLM is not installed)
  python -m autotune probe --model-config tiny-llama --device sim --gpu-memory 64MiB --train-type lora \\
      --rlhf-type grpo --max-length 32 --max-completion-length 16 --num-generations 4 \\
      --use-vllm --vllm-gpu-memory-utilization 0.25 --global-batch-size 8 --no-eval

  # DPO, full fine-tune: the reference model is resident beside the policy
  python -m autotune probe --model-config tiny-llama --device sim --gpu-memory 64MiB --rlhf-type dpo --max-length 64
"""


def add_arguments(parser) -> None:
    group = parser.add_argument_group("RLHF (GRPO, DPO through TRL's trainers; ms-swift's argument names)")
    group.add_argument("--rlhf-type", choices=RLHF_TYPES, help="probe a GRPO or DPO run instead of supervised fine-tuning")
    group.add_argument("--rlhf-target", choices=TARGETS,
                       help="whose defaults fill what is not given (beta: ms-swift 0.04, TRL 0.0 for GRPO; "
                            "max_completion_length: 512 in both; vllm_gpu_memory_utilization 0.9 / 0.3) (default: swift)")
    group.add_argument("--num-generations", type=int, metavar="N", help="GRPO: completions per prompt (default: 8)")
    group.add_argument("--max-completion-length", type=int, metavar="N",
                       help="GRPO: tokens per completion; every completion is probed at this length (--max-length is the prompt's)")
    group.add_argument("--beta", type=float, help="GRPO's KL coefficient / DPO's beta; with beta 0 no reference model is loaded")
    group.add_argument("--steps-per-generation", type=int, metavar="N",
                       help="GRPO: optimizer micro-steps per generation (default: the accumulation)")
    group.add_argument("--use-vllm", action="store_true", help="GRPO: vLLM generates the rollouts")
    group.add_argument("--vllm-mode", choices=VLLM_MODES,
                       help="colocate: vLLM shares the training cards (default); server: vLLM has cards of its own")
    group.add_argument("--vllm-gpu-memory-utilization", type=number_or_auto(float, "a fraction such as 0.6"), metavar="F|auto",
                       help="the colocated vLLM's share of each card; auto: the smallest that holds the weights and "
                            "the generation batch's KV cache")
    group.add_argument("--sleep-level", type=int, choices=SLEEP_LEVELS,
                       help="ms-swift's vLLM sleep: 1 or 2 release its memory while the trainer trains (default: 0)")
    group.add_argument("--offload-model", action="store_true", help="ms-swift: move the policy to the CPU while vLLM generates")
    group.add_argument("--offload-optimizer", action="store_true", help="ms-swift: move the optimizer state to the CPU while vLLM generates")
    group.add_argument("--reward-model", action="append", metavar="DIR|CONFIG|NAME",
                       help="GRPO: a reward model passed as a model (resident beside the policy, scoring every completion); "
                            "a model directory, a config.json (random init) or a built-in name; repeat for several")
    group.add_argument("--precompute-ref-log-probs", action="store_true",
                       help="DPO: compute the reference log-probs before training (no reference model resident while training)")


_GRPO_ONLY = ("num_generations", "max_completion_length", "steps_per_generation", "vllm_gpu_memory_utilization")
# Flags whose default is filled here, not by argparse, so that giving one without --rlhf-type is seen.
_DEFAULTS = {"rlhf_target": "swift", "vllm_mode": "colocate", "sleep_level": 0}


def rlhf_spec(args) -> RLHFSpec | None:
    """The RLHFSpec from the flags; None without --rlhf-type (an RLHF flag alone is an error)."""
    kind = getattr(args, "rlhf_type", None)
    if kind is None:
        given = [name for name in ("rlhf_target", *_GRPO_ONLY, "beta", "vllm_mode", "sleep_level") if getattr(args, name, None) is not None]
        given += [name for name in ("use_vllm", "offload_model", "offload_optimizer", "precompute_ref_log_probs", "reward_model")
                  if getattr(args, name, False)]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UsageError(flag, "is an RLHF setting", "add --rlhf-type grpo (or dpo)")
        return None
    return RLHFSpec(
        rlhf_type=kind, target=_value(args, "rlhf_target"), num_generations=args.num_generations,
        max_completion_length=args.max_completion_length, beta=args.beta, use_vllm=args.use_vllm, vllm_mode=_value(args, "vllm_mode"),
        vllm_gpu_memory_utilization=args.vllm_gpu_memory_utilization, sleep_level=_value(args, "sleep_level"),
        offload_model=args.offload_model, offload_optimizer=args.offload_optimizer,
        steps_per_generation=args.steps_per_generation, precompute_ref_log_probs=args.precompute_ref_log_probs,
        reward_models=tuple(args.reward_model or ()))


def _value(args, name: str):
    value = getattr(args, name, None)
    return _DEFAULTS[name] if value is None else value


def check_targets(rlhf: RLHFSpec | None, targets: list[str]) -> None:
    """An --emit target that could not launch this run, refused before any work (the emitters
    refuse the recipe too, but only after the probe)."""
    if rlhf is None and "trl" in targets:
        raise UsageError("--emit", "trl writes a GRPOConfig / DPOConfig, for an RLHF run", "add --rlhf-type grpo|dpo, or emit hf")
    if rlhf is None:
        return
    for target in ("hf", "llamafactory"):
        if target in targets:
            raise UsageError("--emit", f"{target}'s files launch supervised training, not {rlhf.rlhf_type}",
                             "use --emit trl or --emit swift (swift rlhf)")
    if "swift" in targets and rlhf.precompute_ref_log_probs:
        raise UsageError("--precompute-ref-log-probs", "no ms-swift version has this argument, so its files could not say it",
                         "drop --emit swift (emit trl can), or leave --precompute-ref-log-probs out")
