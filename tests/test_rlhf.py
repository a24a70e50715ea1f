"""RLHF probes (issue #12): GRPO and DPO through TRL's own trainers on the sim device.

The oracle is TRL's trainer built here by the test, at the recipe's settings, with evaluation
inside training: nothing of autotune's trial code runs in it (the model and the word-per-id
tokenizer come from the workload; a colocated vLLM's share is held on the card with the
device's `reserved`, as the recipe says the probe did). At the recipe's batch the run stays in
the usable budget; at batch + 1 it passes it: the frontier is exact."""

import dataclasses
import random

import pytest

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer  # noqa: E402

from autotune.devices import SimDevice  # noqa: E402
from autotune.errors import UsageError  # noqa: E402
from autotune.model.source import resolve  # noqa: E402
from autotune.model.tokenizer import synthetic_tokenizer, text_of  # noqa: E402
from autotune.model.workload import load_workload  # noqa: E402
from autotune.probe import probe  # noqa: E402
from autotune.recipe.rlhf import RLHFSpec, generation_batch  # noqa: E402
from autotune.spec import ProbeSpec  # noqa: E402
from autotune.trials import rlhf_run  # noqa: E402

MiB = 2**20
CAPACITY = 64 * MiB
PROMPT, COMPLETION, GENERATIONS = 32, 16, 4


def grpo_spec(**changes) -> ProbeSpec:
    rlhf = RLHFSpec("grpo", num_generations=GENERATIONS, max_completion_length=COMPLETION, use_vllm=True,
                    vllm_gpu_memory_utilization=0.25)
    values = dict(max_length=PROMPT, model_config="tiny-llama", train_type="lora", device="sim", gpu_memory=CAPACITY,
                  rlhf=rlhf, global_batch_size=8, attn_candidates=("sdpa",), gradient_checkpointing_candidates=(False,),
                  validate_steps=4, eval_steps=2)
    values.update(changes)
    return ProbeSpec(**values)


def _words(rng, vocab, n):
    return text_of(rng.randrange(2, vocab) for _ in range(n))


# ---------------------------------------------------------------- oracles: TRL's trainers, built here

def launched_grpo(recipe, spec, batch, eval_batch, tmp):
    """TRL's GRPOTrainer at the recipe's settings (batch may be one more), vLLM's share held on the
    card, completions handed over by a rollout_func as an external engine does. Returns the run's peak.
    TRL's configs default gradient_checkpointing to True: the recipe's value is set, as the emitted config sets it."""
    device = SimDevice(CAPACITY)
    workload = load_workload(resolve(None, spec.model_config), spec, device)
    s = recipe.settings
    tokenizer = synthetic_tokenizer(workload.vocab_size)
    rng = random.Random(1)
    vocab = workload.vocab_size
    accumulation = s.gradient_accumulation_steps if batch == s.per_device_train_batch_size else 1
    generated = rlhf_run.trial_generation_batch(batch, accumulation, 1, s.num_generations, None)

    def rollout(prompts, trainer):
        ids = tokenizer(text=list(prompts))["input_ids"]
        return {"prompt_ids": ids, "completion_ids": [[rng.randrange(2, vocab) for _ in range(s.max_completion_length)] for _ in prompts],
                "logprobs": None}

    args = GRPOConfig(output_dir=str(tmp), per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                      per_device_eval_batch_size=eval_batch, num_generations=s.num_generations,
                      max_completion_length=s.max_completion_length, beta=s.beta, generation_batch_size=generated, bf16=True, gradient_checkpointing=s.gradient_checkpointing,
                      max_steps=4, eval_strategy="steps", eval_steps=2, save_strategy="no", report_to="none",
                      logging_strategy="no", disable_tqdm=True, use_cpu=True, log_completions=False)
    prompts = [_words(rng, vocab, s.max_length) for _ in range(8)]
    trainer = GRPOTrainer(model=workload.model, reward_funcs=lambda completions, **kw: [rng.random() for _ in completions],
                          args=args, train_dataset=Dataset.from_dict({"prompt": prompts * 8}),
                          eval_dataset=Dataset.from_dict({"prompt": prompts[:2]}), processing_class=tokenizer, rollout_func=rollout)
    with device.tracking(), device.reserved(recipe.rlhf["rollout"]["share_bytes"]):
        device.reset_peak()
        trainer.train()
    return device.peak_bytes()


def launched_dpo(recipe, spec, batch, eval_batch, tmp):
    """TRL's DPOTrainer at the recipe's settings; a full fine-tune, so the reference model is resident."""
    device = SimDevice(CAPACITY)
    workload = load_workload(resolve(None, spec.model_config), spec, device)
    from autotune.model.workload import build_model

    reference = build_model(workload.source, spec, device)
    device.adopt(list(reference.parameters()))
    s, rng, vocab = recipe.settings, random.Random(1), workload.vocab_size
    half = s.max_length // 2

    def pairs(n):
        # the prompt ends on a space, as the probe's does: the strings are joined, and words must not fuse
        return Dataset.from_dict({k: [_words(rng, vocab, half) + (" " if k == "prompt" else "") for _ in range(n)]
                                  for k in ("prompt", "chosen", "rejected")})

    args = DPOConfig(output_dir=str(tmp), per_device_train_batch_size=batch, gradient_accumulation_steps=s.gradient_accumulation_steps,
                     per_device_eval_batch_size=eval_batch, beta=s.beta, max_length=s.max_length, bf16=True, max_steps=4, gradient_checkpointing=s.gradient_checkpointing,
                     eval_strategy="steps", eval_steps=2, save_strategy="no", report_to="none", logging_strategy="no",
                     disable_tqdm=True, use_cpu=True)
    trainer = DPOTrainer(model=workload.model, ref_model=reference, args=args, train_dataset=pairs(batch * 4 * s.gradient_accumulation_steps),
                         eval_dataset=pairs(eval_batch * 2), processing_class=synthetic_tokenizer(vocab))
    with device.tracking():
        device.reset_peak()
        trainer.train()
    return device.peak_bytes()


def _peak_or_oom(run, *args):
    import torch

    try:
        return run(*args)
    except torch.OutOfMemoryError:
        return None  # past the whole card, so past the budget too


# ---------------------------------------------------------------- the probes

@pytest.mark.slow
def test_grpo_lora_probe_reaches_an_exact_frontier_that_trl_confirms(tmp_path):
    spec = grpo_spec()
    recipe = probe(spec)
    s, budget = recipe.settings, recipe.search.budget_bytes
    assert (s.rlhf_type, s.num_generations, s.max_completion_length, s.use_vllm) == ("grpo", GENERATIONS, COMPLETION, True)
    assert s.vllm_gpu_memory_utilization == 0.25 and s.beta == 0.04  # ms-swift's default beta
    assert recipe.rlhf["rollout"]["share_bytes"] == CAPACITY // 4 and recipe.rlhf["rollout"]["how"].startswith("reserved")
    assert recipe.rlhf["reference_model"].startswith("adapter")
    # The generation batch holds whole groups; the global batch is kept.
    assert generation_batch(s.per_device_train_batch_size, s.gradient_accumulation_steps, 1, None) == 8
    train = [t for t in recipe.search.trials if t.phase == "train" and t.purpose != "throughput"]
    frontier = recipe.search.frontier["train"]
    assert any(t.batch_size == frontier and t.fits for t in train)
    assert any(t.batch_size == frontier + 1 and not t.fits for t in train)
    assert recipe.validation.passed
    peak = launched_grpo(recipe, spec, s.per_device_train_batch_size, s.per_device_eval_batch_size, tmp_path)
    assert peak <= budget
    over = _peak_or_oom(launched_grpo, recipe, spec, frontier + 1, s.per_device_eval_batch_size, tmp_path)
    assert over is None or over > budget
    # The pre-flight check re-runs the RLHF run from the recipe alone; a re-probe asks for it again.
    from autotune.check import check, reprobe_command

    assert check(recipe).exit_code == 0
    command = reprobe_command(recipe)
    assert "--rlhf-type grpo" in command and "--vllm-gpu-memory-utilization 0.25" in command and "--num-generations 4" in command


@pytest.mark.slow
def test_dpo_full_probe_keeps_the_reference_model_and_trl_confirms_it(tmp_path):
    spec = ProbeSpec(max_length=64, model_config="tiny-llama", device="sim", gpu_memory=CAPACITY, rlhf=RLHFSpec("dpo"),
                     attn_candidates=("sdpa",), gradient_checkpointing_candidates=(False,), validate_steps=4, eval_steps=2)
    recipe = probe(spec)
    s, budget = recipe.settings, recipe.search.budget_bytes
    assert (s.rlhf_type, s.beta) == ("dpo", 0.1) and recipe.rlhf["reference_model"] == "loaded"
    frontier = recipe.search.frontier["train"]
    train = [t for t in recipe.search.trials if t.phase == "train"]
    assert any(t.batch_size == frontier and t.fits for t in train)
    assert any(t.batch_size == frontier + 1 and not t.fits for t in train)
    assert launched_dpo(recipe, spec, s.per_device_train_batch_size, s.per_device_eval_batch_size, tmp_path) <= budget
    over = _peak_or_oom(launched_dpo, recipe, spec, s.per_device_train_batch_size + 1, s.per_device_eval_batch_size, tmp_path)
    assert over is None or over > budget


# ---------------------------------------------------------------- the trials

def test_the_reference_model_is_resident_only_where_the_framework_loads_one(make_workload):
    from autotune.trials.trial import run_trial

    peaks = {}
    for name, train_type, beta in (("full, beta", "full", 0.04), ("full, beta 0", "full", 0.0)):
        rlhf = RLHFSpec("grpo", num_generations=2, max_completion_length=4, beta=beta, use_vllm=True, vllm_mode="server")
        workload = make_workload("tiny-llama", CAPACITY, max_length=16, train_type=train_type, rlhf=rlhf, global_batch_size=2)
        result = run_trial(workload, "train", {"per_device_train_batch_size": 2}, 3, CAPACITY)
        assert result.fits, result.message
        peaks[name] = result.peak_bytes
        assert (getattr(workload, "reference", None) is not None) == (beta != 0.0)
    weights = sum(p.numel() * p.element_size() for p in workload.model.parameters())
    assert peaks["full, beta"] - peaks["full, beta 0"] >= weights  # the reference copy, and its forward


BIG = 8 * 2**30  # a card that holds vLLM's fixed allowances (non-torch memory, CUDA graphs: model/rollout.py)


def test_sleeping_vllm_releases_its_share_while_the_trainer_trains(make_workload):
    from autotune.model.rollout import resident_during_training
    from autotune.trials.trial import run_trial

    peaks = {}
    for level in (0, 1):
        rlhf = RLHFSpec("grpo", num_generations=2, max_completion_length=4, use_vllm=True, vllm_gpu_memory_utilization=0.5,
                        sleep_level=level)
        workload = make_workload("tiny-llama", BIG, max_length=16, train_type="lora", rlhf=rlhf, global_batch_size=2)
        result = run_trial(workload, "train", {"per_device_train_batch_size": 2}, 3, BIG)
        assert result.fits, result.message
        peaks[level] = result.peak_bytes
    kept = resident_during_training(workload.rollout_need, BIG // 2, 1)
    # Awake all along, the share sits under the training step's peak; asleep, the engine keeps only
    # its fixed memory while training and takes its whole share again to generate.
    assert kept < BIG // 2 and peaks[1] >= BIG // 2 and peaks[0] - peaks[1] > 0


def test_auto_share_is_the_smallest_that_holds_the_engine(make_workload):
    from autotune.trials.rlhf_rollout import rollout_record
    from autotune.trials.rlhf_run import prepare
    from autotune.trials.trial import run_trial

    rlhf = RLHFSpec("grpo", num_generations=2, max_completion_length=4, use_vllm=True, vllm_gpu_memory_utilization="auto")
    workload = make_workload("tiny-llama", BIG, max_length=16, train_type="lora", rlhf=rlhf, global_batch_size=4)
    prepare(workload)
    share, need = workload.rollout_share, workload.rollout_need
    assert int(share * BIG) >= need.total_bytes > int((share - 0.01) * BIG)
    assert need.sequences == 4  # the generation batch on this rank
    result = run_trial(workload, "train", {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}, 3, BIG)
    assert result.fits and result.peak_bytes >= int(share * BIG)
    record = rollout_record(rlhf, workload, BIG)
    assert record["share"] == share and record["auto"]["need_bytes"] == need.total_bytes


def test_a_reward_model_passed_as_a_model_is_resident_and_runs(make_workload):
    from autotune.trials.trial import run_trial

    peaks = {}
    for rewards in ((), ("tiny-qwen2",)):
        rlhf = RLHFSpec("grpo", num_generations=2, max_completion_length=4, use_vllm=True, vllm_mode="server", reward_models=rewards)
        workload = make_workload("tiny-llama", CAPACITY, max_length=16, train_type="lora", rlhf=rlhf, global_batch_size=2)
        result = run_trial(workload, "train", {"per_device_train_batch_size": 2}, 3, CAPACITY)
        assert result.fits, result.message
        peaks[rewards] = result.peak_bytes
    reward = workload.reward_models[0]
    assert type(reward).__name__ == "Qwen2ForSequenceClassification"
    weights = sum(p.numel() * p.element_size() for p in reward.parameters())
    assert peaks[("tiny-qwen2",)] - peaks[()] >= weights


def test_trls_frozen_copy_of_the_adapter_counts_on_the_card(make_workload):
    """LoRA with beta != 0: TRL's reference is a frozen copy of the adapter ("ref"), made while the
    trainer is built; it is on the card for the run, and gone after the trial."""
    from autotune.trials import trainer_run
    from autotune.trials.trial import _meter_class

    rlhf = RLHFSpec("grpo", num_generations=2, max_completion_length=4, use_vllm=True, vllm_mode="server")
    workload = make_workload("tiny-llama", CAPACITY, max_length=16, train_type="lora", rlhf=rlhf, global_batch_size=2)
    before = workload.device.allocated_bytes()
    trainer, saved = trainer_run.build_trainer(workload, {"per_device_train_batch_size": 2}, 3, None, 0, _meter_class()(workload.device))
    copy = [p for name, p in workload.model.named_parameters() if ".ref." in name]
    assert copy and workload.device.allocated_bytes() - before >= sum(p.numel() * p.element_size() for p in copy)
    trainer = None
    trainer_run.restore_model(workload, saved)
    assert not [name for name, _ in workload.model.named_parameters() if ".ref." in name]


def test_the_share_past_the_card_is_an_out_of_memory(make_workload):
    from autotune.trials.trial import run_trial

    rlhf = RLHFSpec("grpo", num_generations=2, max_completion_length=4, use_vllm=True, vllm_gpu_memory_utilization=0.99)
    workload = make_workload("tiny-llama", CAPACITY, max_length=16, train_type="lora", rlhf=rlhf, global_batch_size=2)
    assert run_trial(workload, "train", {"per_device_train_batch_size": 2}, 3, CAPACITY).outcome == "oom"


def test_generation_by_the_policy_is_measured_at_full_length(make_workload):
    """Without vLLM TRL generates with the policy's generate(): every completion at full length."""
    from autotune.trials.trial import run_trial

    rlhf = RLHFSpec("grpo", num_generations=2, max_completion_length=4)
    workload = make_workload("tiny-llama", CAPACITY, max_length=16, train_type="lora", rlhf=rlhf, global_batch_size=2)
    result = run_trial(workload, "train", {"per_device_train_batch_size": 2}, 3, CAPACITY)
    assert result.fits, result.message
    assert result.tokens_per_s and workload.tokens_per_batch(2) == 2 * (16 + 4)


# ---------------------------------------------------------------- rules and errors

def test_targets_defaults_and_batch_rules():
    swift, trl = RLHFSpec("grpo"), RLHFSpec("grpo", target="trl")
    assert (swift.kl_beta, trl.kl_beta) == (0.04, 0.0)
    assert swift.completion_length == 512
    assert RLHFSpec("grpo", use_vllm=True).share == 0.9
    # TRL's own defaults, read from its GRPOConfig (they were 256 here while TRL's was 512)
    from trl import GRPOConfig

    defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
    assert (trl.completion_length, trl.kl_beta) == (defaults["max_completion_length"], defaults["beta"])
    assert RLHFSpec("grpo", target="trl", use_vllm=True).share == defaults["vllm_gpu_memory_utilization"]
    assert trl.reference_model("full") == "none (beta 0)" and swift.reference_model("full") == "loaded"
    assert RLHFSpec("dpo", precompute_ref_log_probs=True).reference_model("full") == "precomputed"
    rule = RLHFSpec("grpo", num_generations=8)
    assert rule.train_allowed(2, 4, 1) and not rule.train_allowed(3, 1, 1) and rule.train_allowed(1, 1, 8)
    assert rule.eval_allowed(4, 2) and not rule.eval_allowed(3, 2)
    assert rlhf_run.trial_generation_batch(3, 3, 1, 8, None) == 24  # 9 completions are not whole groups: 24 are
    assert rlhf_run.eval_generations(6, 1, 4) == 3
    spec = grpo_spec(global_batch_size=None)
    assert spec.global_batch_size == 16 and spec.rlhf.global_batch_defaulted  # ms-swift's 16, whole groups of 4


@pytest.mark.parametrize("changes, flag", [
    ({"global_batch_size": 6}, "--global-batch-size"),
    ({"rlhf": RLHFSpec("grpo", num_generations=1)}, "--num-generations"),
    ({"rlhf": RLHFSpec("grpo", vllm_gpu_memory_utilization=0.5)}, "--vllm-gpu-memory-utilization"),
    ({"rlhf": RLHFSpec("grpo", use_vllm=True, vllm_gpu_memory_utilization=1.5)}, "--vllm-gpu-memory-utilization"),
    ({"rlhf": RLHFSpec("dpo", num_generations=4)}, "--num-generations"),
    ({"rlhf": RLHFSpec("dpo", use_vllm=True)}, "--use-vllm"),
    ({"rlhf": RLHFSpec("ppo")}, "--rlhf-type"),
    ({"rlhf": RLHFSpec("dpo", reward_models=("tiny-llama",))}, "--reward-model"),
    ({"strategies": ("fsdp",)}, "--strategy"),  # the sim device: accelerate's FSDP plugin needs CUDA
    ({"strategies": ("zero3", "fsdp"), "device": None}, "--strategy"),
    ({"rlhf": RLHFSpec("grpo", num_generations=8, steps_per_generation=1), "max_batch_size": 4}, "--steps-per-generation"),
])
def test_bad_requests_name_the_flag(changes, flag):
    with pytest.raises(UsageError) as info:
        grpo_spec(**changes)
    assert info.value.flag == flag


def test_deepspeed_strategies_are_taken_and_fsdp_refused_in_one_line():
    """ZeRO goes to TRL's trainer as its `deepspeed` config (the cluster test runs it); FSDP is refused
    before any work, naming the plan as what sizes it."""
    for strategy in ("zero2", "zero3", "zero2_offload", "zero3_offload", "ddp"):
        assert grpo_spec(strategies=(strategy,), world_size=2).strategies == (strategy,)
    with pytest.raises(UsageError) as info:
        grpo_spec(strategies=("fsdp",))
    assert "needs CUDA" in info.value.message and "autotune plan" in info.value.hint


def test_trial_deepspeed_config_is_the_launch_files(make_workload):
    """The `deepspeed` argument a sharded RLHF trial hands TRL is `emit deepspeed`'s config at the
    trial's batch: the bucket sizes the run uses."""
    from autotune.emit.deepspeed import engine_config, hidden_size

    workload = make_workload("tiny-llama", CAPACITY, max_length=16, train_type="lora", rlhf=RLHFSpec("grpo", num_generations=2),
                             global_batch_size=2)
    config = rlhf_run.deepspeed_config(workload, {"per_device_train_batch_size": 3, "gradient_accumulation_steps": 2}, "zero3")
    assert config == engine_config("zero3", 3, 2, 1, "bf16", hidden_size(workload.model.config))
    assert config["zero_optimization"]["stage"] == 3 and config["train_batch_size"] == 6


@pytest.mark.parametrize("extra, flag", [
    (["--num-generations", "4"], "--num-generations"),
    (["--sleep-level", "1"], "--sleep-level"),  # the flags with a default were taken without --rlhf-type, and ignored
    (["--vllm-mode", "server"], "--vllm-mode"),
    (["--rlhf-target", "trl"], "--rlhf-target"),
    (["--emit", "trl"], "--emit"),
    (["--rlhf-type", "grpo", "--emit", "hf"], "--emit"),
    (["--rlhf-type", "dpo", "--precompute-ref-log-probs", "--emit", "swift"], "--precompute-ref-log-probs"),
    (["--rlhf-type", "grpo", "--max-completion-length", "100000"], "--max-completion-length"),
])
def test_cli_refuses_before_any_work(tmp_path, capsys, extra, flag):
    from autotune.cli import main

    out = tmp_path / "r.yaml"
    code = main(["probe", "--model-config", "tiny-llama", "--device", "sim", "--gpu-memory", "64MiB", "--max-length", "32",
                 "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and flag in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_rlhf_spec_survives_a_trip_as_plain_data():
    spec = grpo_spec()
    again = ProbeSpec(**{**dataclasses.asdict(spec)})
    assert again.rlhf == spec.rlhf


def test_dpo_pairs_are_whole_length_and_the_prompt_a_prefix_as_trl_tokenizes_them(make_workload):
    """TRL's DPO tokenizes prompt and prompt + chosen (joined as strings) and trains from where the
    two diverge: the trials' prompt ends on a space, so no word fuses across the boundary (a fused
    word is one unknown token, the pair one token short, and TRL warns for every batch)."""
    from trl.trainer.dpo_trainer import _tokenize, common_prefix_length

    from autotune.trials.rlhf_data import TrialData

    workload = make_workload("tiny-llama", CAPACITY, max_length=32, rlhf=RLHFSpec("dpo"))
    data = TrialData(workload, random.Random(0))
    pairs = data.pairs(4, 32)
    for prompt, chosen in zip(pairs["prompt"], pairs["chosen"]):
        alone = _tokenize(data.processing_class, prompt)["input_ids"]
        joined = _tokenize(data.processing_class, prompt + chosen)["input_ids"]
        assert common_prefix_length(alone, joined) == len(alone) == 16 and len(joined) == 32


def test_a_grpo_global_batch_that_does_not_split_over_the_ranks_is_refused_before_any_trial():
    """8 completions in groups of 4 cannot be split over 3 ranks: refused up front (it used to run
    the whole search and end in a false 'does not fit')."""
    with pytest.raises(UsageError, match="do not split over 3 ranks") as refused:
        RLHFSpec("grpo", num_generations=4).check_global_batch(3, 8)
    assert "--global-batch-size 24" in str(refused.value)
    RLHFSpec("grpo", num_generations=4).check_global_batch(2, 8)  # 4 per rank: fine
