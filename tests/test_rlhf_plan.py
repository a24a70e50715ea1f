"""`autotune plan --rlhf-type`: TRL's GRPO/DPO steps modelled (trials/rlhf_step_model.py), pinned
against TRL's own trainers on the sim device, and the planned frontier checked by TRL trials."""

import pytest

pytest.importorskip("trl")

from autotune.cli import main  # noqa: E402
from autotune.plan.breakdown import Allowance  # noqa: E402
from autotune.plan.planned_recipe import plan_recipe  # noqa: E402
from autotune.plan.planner import PlanOptions, make_plan  # noqa: E402
from autotune.recipe.rlhf import RLHFSpec  # noqa: E402
from autotune.spec import ProbeSpec  # noqa: E402
from autotune.trials import rlhf_rollout, rlhf_run, rlhf_step_inputs, rlhf_step_model  # noqa: E402
from autotune.trials.trial import run_trial  # noqa: E402

MiB = 2**20
CAPACITY = 64 * MiB

CASES = {
    # vLLM colocated where it cannot start: its share held on the card; LoRA: the reference is the adapter off
    "grpo lora, share": (RLHFSpec("grpo", num_generations=2, max_completion_length=8, use_vllm=True,
                                  vllm_gpu_memory_utilization=0.25), "lora", 4, (2, 2)),
    "grpo full, reference": (RLHFSpec("grpo", num_generations=2, max_completion_length=8, beta=0.04, use_vllm=True,
                                      vllm_mode="server"), "full", 4, (2, 2)),
    "dpo full": (RLHFSpec("dpo"), "full", None, (2, 1)),
    "dpo lora": (RLHFSpec("dpo"), "lora", None, (2, 1)),
}


VL_PIXELS = 28 * 28 * 8  # 8 image tokens per image (+ vision start and end)
VL_RULE = "qwen-vl-utils"  # the largest grid: TRL's processor makes 40 tokens of a thin image, past the 32-token prompts
VL_CASES = {
    # the field report's shape: LoRA, frozen tower (ms-swift's default), vLLM's share held on the card
    "grpo lora, qwen2.5-vl": ("tiny-qwen2.5-vl", RLHFSpec("grpo", num_generations=2, max_completion_length=8, use_vllm=True,
                                                          vllm_gpu_memory_utilization=0.25), "lora", 4, (2, 2)),
    "dpo lora, qwen2-vl": ("tiny-qwen2-vl", RLHFSpec("dpo"), "lora", None, (2, 1)),
}
PINNED = {**{name: ("tiny-llama", *case, {"max_length": 16}) for name, case in CASES.items()},
          **{name: (*case, {"max_length": 32, "max_pixels": VL_PIXELS, "image_resize": VL_RULE}) for name, case in VL_CASES.items()}}


@pytest.mark.parametrize("name", list(PINNED))
def test_the_step_model_peak_is_trl_s_within_2_percent(name, make_workload):
    """TRL's trainer (run_trial) and the step model, real tensors under the sim counter, same
    settings; a vision-language policy's trainer with the model's processor (trials/rlhf_data.py)
    against the step model's image rows (the family's worst case)."""
    model, rlhf, train_type, global_batch, (batch, accumulation), shape = PINNED[name]
    workload = make_workload(model, CAPACITY, train_type=train_type, rlhf=rlhf, global_batch_size=global_batch, **shape)
    settings = {"per_device_train_batch_size": batch, "gradient_accumulation_steps": accumulation}
    # The step model first, on the model as built: TRL's trainer changes it in place (DPO switches
    # dropout off), which a plan's fresh model must model rather than inherit.
    rlhf_run.prepare(workload)  # the reference model, where one is resident, as the probe builds it
    share = rlhf_rollout.share_bytes(workload)
    workload.configure(gradient_checkpointing=False)
    modelled = rlhf_step_model.train_steps(workload, batch, 3, accumulation, share=(share, rlhf_rollout.training_share_bytes(workload, share)))
    trial = run_trial(workload, "train", settings, 3, CAPACITY)
    assert trial.fits, trial.message
    assert abs(modelled - trial.peak_bytes) <= 0.02 * trial.peak_bytes, (modelled, trial.peak_bytes)
    if name == "grpo lora, share":
        assert trial.peak_bytes > share == CAPACITY // 4


def test_the_step_model_s_image_rows_are_the_processor_s(make_workload):
    """What the step model hands TRL's forward for a vision-language prompt has the shapes the
    model's processor gives for the trials' prompts (and as many image tokens)."""
    import random

    from autotune.trials.rlhf_data import TrialData
    from trl.data_utils import prepare_multimodal_messages

    rlhf = VL_CASES["grpo lora, qwen2.5-vl"][1]
    workload = make_workload("tiny-qwen2.5-vl", CAPACITY, max_length=32, train_type="lora", rlhf=rlhf, max_pixels=VL_PIXELS,
                             image_resize=VL_RULE)
    rows = rlhf_step_inputs.vision_rows(workload, 3)
    data = TrialData(workload, random.Random(0))
    prompts = data.prompts(3, 32)
    texts = [data.processing_class.apply_chat_template(prepare_multimodal_messages(m, images=i), add_generation_prompt=True,
                                                       tokenize=False) for m, i in zip(prompts["prompt"], prompts["images"])]
    processed = data.processing_class(images=prompts["images"], text=texts, padding=True, return_tensors="pt")
    assert {k: tuple(v.shape) for k, v in processed.items()} == {k: tuple(v.shape) for k, v in rows.items() if k != "num_images"}
    image_id = workload.model.config.image_token_id
    assert (rows["input_ids"] == image_id).sum() == (processed["input_ids"] == image_id).sum() > 0
    assert rows["num_images"] == [1, 1, 1]


def _grpo_spec(**changes):
    rlhf = RLHFSpec("grpo", num_generations=2, max_completion_length=8, use_vllm=True, vllm_gpu_memory_utilization=0.25)
    values = dict(max_length=16, model_config="tiny-llama", train_type="lora", rlhf=rlhf, global_batch_size=4,
                  attn_candidates=("sdpa",), gradient_checkpointing_candidates=(False,))
    values.update(changes)
    return ProbeSpec(**values)


def test_the_planned_grpo_frontier_is_confirmed_by_trl_trials(make_workload):
    """The plan's frontier k on a card: TRL's trainer fits the budget at k and passes it at k + 1."""
    spec = _grpo_spec()
    plan = make_plan(spec, PlanOptions([CAPACITY], checkpointing=[False], allowance=Allowance(0, 0, 0.0)))
    (candidate,) = plan.ok()
    p = candidate.predictions[0]
    assert p.rollout["share_bytes"] == CAPACITY // 4 and p.train_frontier > 1
    workload = make_workload("tiny-llama", CAPACITY, max_length=16, train_type="lora", rlhf=spec.rlhf, global_batch_size=4)
    accumulation = lambda b: max(1, round(4 / b))  # noqa: E731 - the plan's (and the probe's) global batch kept
    for batch, fits in ((p.train_frontier, True), (p.train_frontier + 1, False)):
        result = run_trial(workload, "train", {"per_device_train_batch_size": batch, "gradient_accumulation_steps": accumulation(batch)},
                           3, p.budget_bytes)
        assert (result.outcome == "fit") == fits, (batch, result.outcome, result.peak_bytes, p.budget_bytes)
    recipe = plan_recipe(plan)
    s = recipe.settings
    assert (s.rlhf_type, s.num_generations, s.vllm_gpu_memory_utilization) == ("grpo", 2, 0.25)
    assert recipe.rlhf["rollout"]["share_bytes"] == CAPACITY // 4 and recipe.rlhf["rollout"]["how"].startswith("planned")
    assert recipe.rlhf["reference_model"].startswith("adapter")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VL_CASES))
def test_the_planned_vision_language_frontier_is_confirmed_by_trl_trials(name, make_workload):
    """The field report's shape in miniature: a vision-language policy planned on fake tensors (the
    images at --max-pixels); TRL's trainer with the model's processor fits the budget at the
    planned frontier k and passes it at k + 1."""
    model, rlhf, train_type, global_batch, _ = VL_CASES[name]
    spec = _grpo_spec(model_config=model, max_length=32, max_pixels=VL_PIXELS, image_resize=VL_RULE, rlhf=rlhf,
                      global_batch_size=global_batch)
    plan = make_plan(spec, PlanOptions([CAPACITY], checkpointing=[False], allowance=Allowance(0, 0, 0.0)))
    (candidate,) = plan.ok()
    p = candidate.predictions[0]
    assert p.train_frontier > 1
    workload = make_workload(model, CAPACITY, max_length=32, train_type=train_type, rlhf=rlhf, global_batch_size=global_batch,
                             max_pixels=VL_PIXELS, image_resize=VL_RULE)
    accumulation = (lambda b: max(1, round(global_batch / b))) if global_batch else (lambda b: 1)  # noqa: E731
    for batch, fits in ((p.train_frontier, True), (p.train_frontier + 1, False)):
        result = run_trial(workload, "train", {"per_device_train_batch_size": batch, "gradient_accumulation_steps": accumulation(batch)},
                           3, p.budget_bytes)
        assert (result.outcome == "fit") == fits, (batch, result.outcome, result.peak_bytes, p.budget_bytes)


# A reward model whose scoring forward is the step's peak (one layer, a wide MLP): the pin below
# fails by more than 2% if the step model charged its weights but not its forward.
WIDE_MLP_REWARD = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 8192,
                   "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
                   "max_position_embeddings": 256, "tie_word_embeddings": False, "rms_norm_eps": 1e-6}


@pytest.fixture
def reward_rlhf(tmp_path):
    import json

    path = tmp_path / "reward.json"
    path.write_text(json.dumps(WIDE_MLP_REWARD))
    return RLHFSpec("grpo", num_generations=2, max_completion_length=8, use_vllm=True, vllm_mode="server", reward_models=(str(path),))


REWARD_POLICIES = {"tiny-llama": {"max_length": 16},
                   "tiny-qwen2.5-vl": {"max_length": 32, "max_pixels": VL_PIXELS, "image_resize": VL_RULE}}


@pytest.mark.parametrize("policy", list(REWARD_POLICIES))
def test_a_reward_model_s_scoring_is_trl_s_within_2_percent(make_workload, reward_rlhf, monkeypatch, policy):
    """GRPO with a reward model passed as a model: TRL scores every completion of the generation
    in one forward under inference mode; the step model's peak is the trial's within 2%, and
    without that forward (its weights alone) it would not be. A vision-language policy's reward
    model reads the prompt's words and the completion, not the image tokens: scored at the text
    policy's length (prompt + completion), the step model would be more than 2% over."""
    import torch

    workload = make_workload(policy, CAPACITY, train_type="lora", rlhf=reward_rlhf, global_batch_size=4, **REWARD_POLICIES[policy])
    rlhf_run.prepare(workload)
    workload.configure(gradient_checkpointing=False)
    modelled = rlhf_step_model.train_steps(workload, 1, 3, 4)
    trial = run_trial(workload, "train", {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 4}, 3, CAPACITY)
    assert trial.fits, trial.message
    assert abs(modelled - trial.peak_bytes) <= 0.02 * trial.peak_bytes, (modelled, trial.peak_bytes)
    if workload.setup.family is not None:
        text_length = workload.spec.max_length + reward_rlhf.completion_length
        monkeypatch.setattr(rlhf_step_model, "reward_tokens", lambda w: text_length)
        with_images = rlhf_step_model.train_steps(workload, 1, 3, 4)
        assert with_images - trial.peak_bytes > 0.02 * trial.peak_bytes, (with_images, trial.peak_bytes)
    monkeypatch.setattr(rlhf_step_model, "score", lambda w, rows, length: torch.rand(rows, device=w.device.torch_device))
    weights_only = rlhf_step_model.train_steps(workload, 1, 3, 4)
    assert trial.peak_bytes - weights_only > 0.02 * trial.peak_bytes, (weights_only, trial.peak_bytes)


REWARD_CAPACITY = 24 * MiB


def test_the_planned_frontier_with_a_reward_model_is_confirmed_by_trl_trials(make_workload, reward_rlhf, capsys):
    """The plan's frontier with a reward model resident and scoring: TRL's trainer fits the budget
    at k and passes it at k + 1; the breakdown has the reward model's row; the plan ran at full
    depth (the scoring peak does not extend with the policy's depth)."""
    spec = _grpo_spec(rlhf=reward_rlhf)
    plan = make_plan(spec, PlanOptions([REWARD_CAPACITY], checkpointing=[False], allowance=Allowance(0, 0, 0.0)))
    (candidate,) = plan.ok()
    p = candidate.predictions[0]
    reward = plan.workload.reward_models[0]
    assert candidate.rows.reward_weights == sum(t.numel() * t.element_size() for t in [*reward.parameters(), *reward.buffers()]) > 0
    assert plan.depth.startswith("measured at full depth: reward models")
    assert p.train_frontier > 1
    workload = make_workload("tiny-llama", REWARD_CAPACITY, max_length=16, train_type="lora", rlhf=reward_rlhf, global_batch_size=4)
    accumulation = lambda b: max(1, round(4 / b))  # noqa: E731
    for batch, fits in ((p.train_frontier, True), (p.train_frontier + 1, False)):
        result = run_trial(workload, "train", {"per_device_train_batch_size": batch, "gradient_accumulation_steps": accumulation(batch)},
                           3, p.budget_bytes)
        assert (result.outcome == "fit") == fits, (batch, result.outcome, result.peak_bytes, p.budget_bytes)
    assert plan_recipe(plan).rlhf["reward_models"].startswith("resident beside the policy")


def test_a_vision_language_plan_has_the_reward_model_s_row(capsys):
    """`plan` of a VL GRPO policy with a reward model: the breakdown's row for its weights, planned
    at full depth."""
    argv = ["plan", "--model-config", "tiny-qwen2.5-vl", "--max-length", "32", "--max-pixels", str(VL_PIXELS), "--image-resize", VL_RULE,
            "--rlhf-type", "grpo", "--num-generations", "2", "--max-completion-length", "8", "--global-batch-size", "4",
            "--use-vllm", "--vllm-mode", "server", "--reward-model", "tiny-qwen2", "--train-type", "lora",
            "--gradient-checkpointing", "off", "--gpu-memory", "64MiB", "--cuda-context", "0", "--workspaces", "0", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "reward model weights" in out and "full depth: reward models" in out


def test_auto_share_in_the_plan():
    """auto: the smallest share holding the engine, and a frontier under what remains; asleep, the
    engine keeps at most its share while the trainer trains."""
    big = 8 * 2**30
    rlhf = RLHFSpec("grpo", num_generations=2, max_completion_length=8, use_vllm=True, vllm_gpu_memory_utilization="auto",
                    sleep_level=1)
    plan = make_plan(_grpo_spec(rlhf=rlhf), PlanOptions([big], checkpointing=[False], allowance=Allowance(0, 0, 0.0)))
    share = plan.ok()[0].predictions[0].rollout
    assert share["auto"] and share["share_bytes"] >= share["need_bytes"] > int((share["share"] - 0.01) * big)
    assert share["training_bytes"] <= share["share_bytes"] and plan.ok()[0].predictions[0].train_frontier > 0
    # At half the card, asleep, the engine keeps only its fixed memory (model/rollout.py: non-torch + CUDA graphs).
    from autotune.model.rollout import CUDA_GRAPH_BYTES, NON_TORCH_BYTES

    half = RLHFSpec("grpo", num_generations=2, max_completion_length=8, use_vllm=True, vllm_gpu_memory_utilization=0.5, sleep_level=1)
    plan = make_plan(_grpo_spec(rlhf=half), PlanOptions([big], checkpointing=[False], allowance=Allowance(0, 0, 0.0)))
    share = plan.ok()[0].predictions[0].rollout
    assert share["training_bytes"] == NON_TORCH_BYTES + CUDA_GRAPH_BYTES < share["share_bytes"] == big // 2


def test_reference_row_and_refusals(capsys):
    argv = ["plan", "--model-config", "tiny-llama", "--max-length", "16", "--rlhf-type", "dpo", "--gradient-checkpointing", "off",
            "--gpu-memory", "64MiB", "--quiet"]
    assert main(argv) == 0
    assert "reference model weights" in capsys.readouterr().out
    code = main(["plan", "--model-config", "tiny-llama", "--max-length", "16", "--rlhf-type", "grpo", "--num-generations", "2",
                 "--max-completion-length", "8", "--global-batch-size", "4", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("autotune: error: --use-vllm:") and len(err.strip().splitlines()) == 1
