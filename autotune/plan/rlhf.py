"""What an RLHF plan builds beside the policy, on `meta` until the plan materialises it: the
reference model where the framework loads one (built as the policy was, frozen) and GRPO's
reward models passed as models (as TRL loads them: sequence classification, one label, frozen);
and what the plan refuses to model. The step model runs them (trials/rlhf_step_model.py), the
breakdown gives each its row (plan/breakdown.py)."""

from __future__ import annotations

import torch

from ..errors import UsageError
from ..model.workload import build_model

META = torch.device("meta")


class _Meta:
    torch_device = META


def build_frozen_models(workload, setup) -> None:
    """The reference model (`workload.reference`) and the reward models (`workload.reward_models`)
    of an RLHF plan, on `meta`; refused: what the plan cannot model."""
    spec = workload.spec
    rlhf = spec.rlhf
    if rlhf.rlhf_type == "grpo" and not rlhf.use_vllm:
        raise UsageError("--use-vllm", "the plan cannot model generation by the policy's generate(): TRL reads the generated "
                         "ids by value (the first EOS, .tolist()), and fake tensors have none",
                         "plan with --use-vllm (colocated or --vllm-mode server), or probe it on a card")
    if setup is not None and setup.family is not None:
        from ..trials.rlhf_run import check_vision

        check_vision(setup, spec, trials=False)  # the families and inputs the probe's TRL trials run
    if rlhf.reward_models:
        from ..trials.rlhf_run import reward_model

        workload.reward_models = [reward_model(name, spec.dtype, META, weights=False) for name in rlhf.reward_models]
    if rlhf.reference_model(spec.train_type) == "loaded":
        reference = build_model(workload.source, spec, _Meta(), setup.family if setup is not None else None)
        reference.eval()
        for p in reference.parameters():
            p.requires_grad_(False)
        workload.reference = reference


def full_depth_reason(spec) -> str | None:
    """Why a plan runs at full depth whatever the layers (plan/depth.py): a reward model's scoring
    forward has a peak of its own that does not grow with the policy's depth, so a shallow copy's
    peak can sit there while the real depth's sits in the policy's backward, which no line through
    the copies would see."""
    if spec.rlhf is not None and spec.rlhf.reward_models:
        return "reward models passed as models: their scoring peak does not extend with the policy's depth"
    return None


def frozen_models(workload) -> list:
    """The models an RLHF run keeps resident beside the policy, none of them trained."""
    reference = getattr(workload, "reference", None)
    return ([reference] if reference is not None else []) + list(getattr(workload, "reward_models", None) or [])


def weight_bytes(model) -> int:
    """A model's parameters and buffers (on `meta` too: only sizes are read)."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) if model is not None else 0
