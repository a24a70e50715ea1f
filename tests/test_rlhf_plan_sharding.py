"""`plan --strategy` with RLHF: what TRL's engines partition besides the policy (the reference and
reward models), and the weight sync to vLLM that gathers a PEFT policy whole under ZeRO-3."""

import pytest

pytest.importorskip("trl")

from autotune.plan.breakdown import (Allowance, frozen_bytes, gathered_layers, generation_shift, layer_bytes,  # noqa: E402
                                     peak_model, rows_for, syncs_whole_policy)
from autotune.plan.planner import PlanOptions, make_plan  # noqa: E402
from autotune.recipe.rlhf import RLHFSpec  # noqa: E402
from autotune.spec import ProbeSpec  # noqa: E402

MiB = 2**20


def _spec(train_type: str, **rlhf):
    values = dict(num_generations=2, max_completion_length=8, use_vllm=True, vllm_mode="server") | rlhf
    return ProbeSpec(max_length=16, model_config="tiny-llama", train_type=train_type, rlhf=RLHFSpec("grpo", **values),
                     global_batch_size=4, world_size=2, attn_candidates=("sdpa",), gradient_checkpointing_candidates=(False,))


def test_zero3_partitions_the_reference_and_reward_models_zero2_keeps_them_whole():
    """TRL's prepare_deepspeed starts the reference and reward models under the run's ZeRO-3 config
    (partitioned), at stage 0 under ZeRO-2 (whole); prepare_fsdp shards the reference, reward
    models stay whole under FSDP (accelerate's evaluation-mode prepare wraps nothing). What a rank
    no longer holds leaves the planned peak."""
    spec = _spec("full", beta=0.04, reward_models=("tiny-qwen2",))
    plan = make_plan(spec, PlanOptions([256 * MiB], checkpointing=[False], strategy="zero3", allowance=Allowance(0, 0, 0.0)))
    (candidate,) = plan.ok()
    m, rows = candidate.measure, candidate.rows
    reference, rewards = frozen = frozen_bytes(plan.workload)
    assert reference > 0 and rewards > 0
    assert (rows.reference_weights, rows.reward_weights) == (reference / 2, rewards / 2)
    policy_layers = layer_bytes(plan.workload.model)
    layers = gathered_layers(plan.workload, "zero3", policy_layers)
    assert 2 * layers[0] + layers[1] >= 2 * policy_layers[0] + policy_layers[1]
    # the phase lines lose the policy's, the optimizer's and the frozen models' partitions
    saved = (m.weights - rows.weights) + (m.optimizer_state - rows.optimizer_state) + (reference + rewards) / 2
    assert candidate.forward_backward_line["intercept"] == pytest.approx(
        m.forward_backward_line.intercept - saved + rows.gathered_working_set)
    assert peak_model(m, rows, frozen).forward_backward.intercept < peak_model(m, rows).forward_backward.intercept - reference / 2
    trainable = plan.workload.trainable_params
    zero2 = rows_for(m, trainable, 2, "zero2", 2, policy_layers, frozen)
    assert (zero2.reference_weights, zero2.reward_weights) == (reference, rewards)
    fsdp = rows_for(m, trainable, 2, "fsdp", 2, policy_layers, frozen)
    assert (fsdp.reference_weights, fsdp.reward_weights) == (reference / 2, rewards)


def test_the_weight_sync_gathers_a_peft_policy_whole_under_zero3():
    """TRL's `_iter_named_params` gathers every parameter of a PEFT policy under ZeRO-3 to merge the
    adapter before pushing the weights to vLLM (colocated or server): at each generation a rank
    holds the whole policy. A full fine-tune is pushed a parameter at a time."""
    lora = _spec("lora")
    assert syncs_whole_policy(lora, "zero3")
    assert not syncs_whole_policy(lora, "zero2") and not syncs_whole_policy(_spec("full"), "zero3")
    plan = make_plan(lora, PlanOptions([256 * MiB], checkpointing=[False], strategy="zero3", allowance=Allowance(0, 0, 0.0)))
    (candidate,) = plan.ok()
    m, rows = candidate.measure, candidate.rows
    shift = generation_shift(m, rows, (0, 0), whole_policy=True)
    assert shift == -(m.optimizer_state - rows.optimizer_state)  # the policy is whole again; only the optimizer stays split
    assert generation_shift(m, rows, (0, 0), whole_policy=False) == rows.gathered_working_set - (m.weights - rows.weights) - (
        m.optimizer_state - rows.optimizer_state)
    # every planned batch's peak holds at least the gathered policy
    assert all(peak >= m.weights for peak in candidate.train_points.values())
