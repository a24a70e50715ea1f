"""`autotune plan`: fake-tensor peaks against the sim device, closed-form rows, sharding, CLI."""

import json
from pathlib import Path

import pytest
import torch

import autotune

from autotune.cli import main
from autotune.devices import SimDevice
from autotune.devices.fake import FakeDevice
from autotune.devices.sim import _rounded
from autotune.model.source import resolve
from autotune.plan.planned_recipe import plan_recipe
from autotune.plan.planner import PlanOptions, make_plan
from autotune.plan.breakdown import Allowance, rows_for
from autotune.plan.measure import build_plan_workload, measure_candidate, plan_source
from autotune.probe import probe
from autotune.recipe.schema import load_recipe
from autotune.sizes import format_size
from autotune.spec import ProbeSpec
from autotune.trials.trial import run_eval_trial, run_train_trial
from autotune.model.workload import load_workload
from plan_oracle import check_plan_against_sim

MiB = 2**20


def _fake(spec):
    return build_plan_workload(plan_source(spec), spec, FakeDevice())


@pytest.fixture(scope="module")
def llama_full():
    spec = ProbeSpec(max_length=64, model_config="tiny-llama")
    workload = _fake(spec)
    return workload, measure_candidate(workload, "sdpa", False)


@pytest.fixture(scope="module")
def qwen_lora():
    spec = ProbeSpec(max_length=64, model_config="tiny-qwen2", train_type="lora", lora_r=4)
    workload = _fake(spec)
    return workload, measure_candidate(workload, "sdpa", True)


@pytest.mark.parametrize("which", ["llama_full", "qwen_lora"])
def test_plan_peak_equals_sim_device_peak_within_2_percent(which, request):
    """Same step code, real tensors on the sim device against fake tensors: train and eval."""
    fake, measure = request.getfixturevalue(which)
    spec = fake.spec.replace(device="sim", gpu_memory=2**30, gradient_checkpointing=measure.gradient_checkpointing)
    real = load_workload(resolve(None, spec.model_config), spec, SimDevice(2**30))
    for batch in (1, 2):
        train = run_train_trial(real, batch, 3, 2**30).peak_bytes
        evaluate = run_eval_trial(real, batch, 2, 2**30).peak_bytes
        assert abs(measure.train_peaks[batch] - train) <= 0.02 * train, (batch, measure.train_peaks[batch], train)
        assert abs(measure.eval_peaks[batch] - evaluate) <= 0.02 * evaluate


def _bytes(numels, itemsize=2):
    return sum(_rounded(n * itemsize) for n in numels)


def test_full_rows_match_closed_form(llama_full):
    """tiny-llama from its config alone: every weight matrix, its gradient, AdamW's two moments
    (in the parameter dtype) and the fused optimizer's per-parameter step counter (float32)."""
    workload, m = llama_full
    c = workload.source.config
    h, i, v, layers = c.hidden_size, c.intermediate_size, c.vocab_size, c.num_hidden_layers
    kv = c.num_key_value_heads * h // c.num_attention_heads
    per_layer = [h * h, h * kv, h * kv, h * h, h * i, h * i, i * h, h, h]  # q k v o gate up down, two norms
    numels = [v * h] + per_layer * layers + [h, v * h]  # embeddings, layers, final norm, lm_head
    assert workload.trainable_params == sum(numels)
    head_dim = h // c.num_attention_heads
    rotary = 2 * _rounded(head_dim // 2 * 4)  # float32 buffers inv_freq and original_inv_freq
    assert m.weights == _bytes(numels) + rotary
    assert m.gradients == _bytes(numels)
    assert m.optimizer_state == 2 * _bytes(numels) + len(numels) * _rounded(4)
    assert m.logits_per_sample == _rounded(64 * v * 2)
    rows = rows_for(m, workload.trainable_params, 2)
    assert rows.activations_per_sample > 0 and rows.method == "measured"


def test_lora_rows_match_closed_form(qwen_lora):
    """LoRA r=4 on every linear layer of the decoder: A (r x in) and B (out x r) are trainable
    (their gradients and AdamW state are all the training holds); the base stays frozen."""
    workload, m = qwen_lora
    c, r = workload.source.config, 4
    h, i = c.hidden_size, c.intermediate_size
    kv = c.num_key_value_heads * h // c.num_attention_heads
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]  # (in, out)
    lora = [n for fan_in, fan_out in shapes for n in (r * fan_in, fan_out * r)] * c.num_hidden_layers
    assert workload.trainable_params == sum(lora)
    # peft keeps adapter weights in float32 under a bf16 base (autocast_adapter_dtype)
    assert m.gradients == _bytes(lora, 4)
    assert m.optimizer_state == 2 * _bytes(lora, 4) + len(lora) * _rounded(4)


def test_sharded_rows_follow_the_documented_partitioning(llama_full):
    workload, m = llama_full
    trainable = workload.trainable_params
    zero3 = rows_for(m, trainable, 2, "zero3", 4, layers=(1000, 2000))
    assert zero3.weights == m.weights / 4 and zero3.gradients == m.gradients / 4
    assert zero3.optimizer_state == 12 * trainable / 4  # fp32 master + momentum + variance
    assert zero3.gathered_working_set == 2 * 1000 + 2000 and "not measured" in zero3.method
    zero2 = rows_for(m, trainable, 2, "zero2", 4)
    assert zero2.weights == m.weights and zero2.gradients == m.gradients / 4
    fsdp = rows_for(m, trainable, 2, "fsdp", 4, layers=(1000, 0))
    assert fsdp.optimizer_state == m.optimizer_state / 4 and fsdp.weights == m.weights / 4
    assert rows_for(m, trainable, 2).activations_per_sample == zero3.activations_per_sample


def test_an_operation_fake_tensors_cannot_run_is_reported_not_raised(llama_full):
    workload, _ = llama_full
    workload.make_batch = lambda b: {"input_ids": torch.zeros(b, 3, 3, dtype=torch.long)}  # wrong shape
    try:
        measure = measure_candidate(workload, "sdpa", False)
    finally:
        del workload.make_batch
    assert measure.error and "training step at batch 1 failed under fake tensors" in measure.error


def test_probe_from_plan_needs_two_trials_per_frontier(tmp_path):
    """A plan for a 6 MiB sim card (no allowance: the sim device has no context) measured each
    candidate's frontiers as the probe does, so the probe started from it measures a fit at k
    and a non-fit at k + 1 and stops: 2 trials per frontier, the same frontiers as without it."""
    capacity = 6 * MiB
    spec = ProbeSpec(max_length=64, model_config="tiny-llama", device="sim", gpu_memory=capacity, margin=0.0,
                     attn_candidates=("sdpa",), gradient_checkpointing_candidates=(False, True), validate_steps=3,
                     prediction_loss_only=True)
    plan = make_plan(spec, PlanOptions([capacity], checkpointing=[False, True], allowance=Allowance(0, 0, 0.0)))
    recipe = plan_recipe(plan)
    assert recipe.validation.passed is False and recipe.validation.method == "planned"
    cold = probe(spec, device=SimDevice(capacity))
    warm = probe(spec, device=SimDevice(capacity), plan=recipe)

    def frontiers(r):
        return {(c["gradient_checkpointing"]): c["frontier"] for c in r.search.candidates}

    def counted(r, phase):
        return sum(1 for t in r.search.trials if t.phase == phase and t.purpose == "frontier")

    assert frontiers(warm) == frontiers(cold)
    assert frontiers(warm)[False] == plan.candidates[0].predictions[0].train_frontier
    assert frontiers(warm)[True] == plan.candidates[1].predictions[0].train_frontier
    searched = sum(1 for c in warm.search.candidates if c["status"] in ("searched", "pruned") and c["frontier"])
    assert counted(warm, "train") == 2 * searched < counted(cold, "train")
    assert counted(warm, "eval") == 2 and warm.search.frontier["eval"] == cold.search.frontier["eval"]
    # --plan-first: the probe plans its own space first (the default on cuda), to the same effect.
    first = probe(spec.replace(plan_first="on"), device=SimDevice(capacity))
    assert frontiers(first) == frontiers(cold) and counted(first, "train") == counted(warm, "train")
    assert counted(first, "eval") == 2


def test_cli_plan_json_and_planned_recipe(tmp_path, capsys):
    out = tmp_path / "plan.yaml"
    code = main(["plan", "--model-config", "tiny-llama", "--max-length", "32", "--gradient-checkpointing", "off",
                 "--gpu-memory", "1GiB", "--global-batch-size", "8", "--world-size", "2", "--strategy", "fsdp",
                 "--out", str(out), "--format", "json", "--quiet"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    (candidate,) = data["candidates"]
    assert candidate["rows"]["method"].startswith("documented partitioning")
    assert data["allowance"]["cuda_context_bytes"] == 512 * MiB
    recipe = load_recipe(out)
    assert recipe.validation.method == "planned" and not recipe.validation.passed
    assert recipe.settings.strategy == "fsdp"
    assert recipe.settings.per_device_train_batch_size * recipe.settings.gradient_accumulation_steps * 2 == 8
    # emit (issue #4) refuses a plan unless told otherwise; with --allow-unvalidated it writes
    assert main(["emit", "hf", str(out), "-o", str(tmp_path / "args.json")]) == 2
    assert "validation.method: planned" in capsys.readouterr().err and not (tmp_path / "args.json").exists()
    assert main(["emit", "hf", str(out), "-o", str(tmp_path / "args.json"), "--allow-unvalidated"]) == 0


@pytest.mark.parametrize("argv, flag", [
    (["--gpu-memory", "24GiB,80GiB", "--out", "x.yaml"], "--out"),
    (["--strategy", "zero3"], "--strategy"),
    (["--attn", "sdpa,paged"], "--attn"),
    (["--gpu-memory", "lots"], "--gpu-memory"),
])
def test_cli_plan_bad_input_is_one_line_and_exit_2(argv, flag, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["plan", "--model-config", "tiny-llama", "--max-length", "32", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"autotune: error: {flag}:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.yaml").exists()


def test_plan_frontier_is_the_sim_probe_frontier_where_the_peak_is_the_largest_of_several_lines(tmp_path):
    """Issue #13: hidden 256, 4 layers, a 32,000-token vocabulary, 32 tokens, checkpointing, a
    512 MiB card. At batches 1-3 the peak sits in a batch-independent moment (the logits), so the
    line through two small batches put the frontier at 256; the trials put it at 33."""
    config = {**json.loads((Path(autotune.__file__).parent / "configs" / "tiny-llama.json").read_text()),
              "hidden_size": 256, "intermediate_size": 688,
              "num_hidden_layers": 4, "vocab_size": 32000}
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec = ProbeSpec(max_length=32, model_config=str(tmp_path / "config.json"))
    p = check_plan_against_sim(spec, checkpointing=True, capacity=512 * MiB)
    assert p.train_trials == 2  # the envelope put the first trial on the frontier


@pytest.mark.parametrize("name,length,checkpointing,card_mib", [
    # Another shape where small batches mislead (on this card the line through batches 2 and 3
    # says 49, the trials 35): 16 tokens, no checkpointing; batch-independent moments of the
    # backward hold the peak at small batches, the forward's activations later.
    ("tiny-mistral", 16, False, 24),
    ("tiny-gpt2", 64, False, None),  # None: a card near batch 4 (plan_oracle.card_near)
    ("tiny-qwen2", 64, True, None),
    ("tiny-llama", 64, False, None),
    ("tiny-llava", 64, False, None),  # ms-swift's defaults: the vision tower and the projector frozen
])
def test_plan_frontiers_are_the_sim_probe_frontiers(name, length, checkpointing, card_mib):
    check_plan_against_sim(ProbeSpec(max_length=length, model_config=name), checkpointing=checkpointing,
                           capacity=card_mib and card_mib * MiB, keep_logits=name != "tiny-llava")


def test_planned_peaks_are_the_sim_probes_at_the_recipes_own_settings(tmp_path, capsys):
    """A global batch of 8 on a card whose train frontier is 29: the recipe trains at 8 x 1 and
    evaluates at its eval frontier after it, so its predicted peak is that run's (the larger of
    the two), not the train frontier's. Each within 2% of the sim device's Trainer trial at the
    same settings (plan_oracle's tolerance)."""
    capacity, out = 64 * MiB, tmp_path / "plan.yaml"
    assert main(["plan", "--model-config", "tiny-llama", "--max-length", "64", "--gpu-memory", "64MiB", "--global-batch-size", "8",
                 "--cuda-context", "0", "--workspaces", "0", "--fragmentation", "0", "--attn", "sdpa",
                 "--gradient-checkpointing", "off", "--eval-outputs", "logits", "--out", str(out), "--format", "json", "--quiet"]) == 0
    (p,) = json.loads(capsys.readouterr().out)["candidates"][0]["predictions"]
    recipe = load_recipe(out)
    s = recipe.settings
    assert (s.per_device_train_batch_size, s.gradient_accumulation_steps) == (8, 1) and p["train_frontier"] > 2 * 8
    spec = ProbeSpec(max_length=64, model_config="tiny-llama", device="sim", gpu_memory=capacity)
    real = load_workload(resolve(None, "tiny-llama"), spec, SimDevice(capacity))
    settings = {"attn_implementation": "sdpa", "gradient_checkpointing": False, "gradient_accumulation_steps": 1}
    train = run_train_trial(real, 8, 2, capacity, settings).peak_bytes
    after = {**settings, **spec.eval_keep_settings(), "per_device_train_batch_size": 8}
    evaluate = run_eval_trial(real, s.per_device_eval_batch_size, max(spec.eval_steps, 2), capacity, after).peak_bytes
    assert abs(p["train_peak_bytes"] - train) <= 0.02 * train, (p["train_peak_bytes"], train)
    assert p["train_peak_bytes"] < p["live_peak_bytes"] / 2  # the frontier's peak, kept beside it
    assert abs(recipe.validation.eval_peak_bytes - evaluate) <= 0.02 * evaluate, (recipe.validation.eval_peak_bytes, evaluate)
    assert recipe.validation.peak_bytes == p["run_peak_bytes"] == max(p["train_peak_bytes"], p["eval_peak_bytes"])
    assert recipe.validation.headroom_bytes == p["budget_bytes"] - p["run_peak_bytes"]
    assert main(["report", str(out)]) == 0
    assert f"predicted peak {format_size(recipe.validation.peak_bytes)}" in " ".join(capsys.readouterr().out.split())
    from autotune.emit.common import memory_comment

    assert f"{format_size(recipe.validation.peak_bytes)} peak per device predicted" in memory_comment(recipe)


def _big_vocab(tmp_path) -> str:
    """tiny-llama with a 32,000-token vocabulary: at 64 tokens on a 64 MiB card batch 1 trains,
    and four steps of kept fp32 logits do not fit beside the optimizer state."""
    config = {**json.loads((Path(autotune.__file__).parent / "configs" / "tiny-llama.json").read_text()), "vocab_size": 32000}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path / "config.json")


def test_plan_chooses_nothing_where_training_fits_and_evaluation_does_not(tmp_path, capsys):
    """The probe's validation fails such a card (its mid-training evaluation does not fit), so the
    plan must not choose a candidate and write a recipe with no eval batch (the Trainer's default
    of 8 then runs). One line, exit 2, no file; with the loss alone kept it chooses."""
    config, out = _big_vocab(tmp_path), tmp_path / "plan.yaml"
    flags = ["plan", "--model-config", config, "--max-length", "64", "--gpu-memory", "64MiB", "--cuda-context", "0",
             "--workspaces", "0", "--fragmentation", "0", "--attn", "sdpa", "--quiet"]
    assert main([*flags, "--eval-outputs", "logits", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "evaluation fits at eval batch 1" in err and "--eval-outputs loss" in err
    assert not out.exists()
    assert main([*flags, "--eval-outputs", "logits"]) == 0
    shown = capsys.readouterr().out
    assert "nothing fits" in shown and "<-" not in shown
    # The oracle: the sim probe of the same card refuses it too, in its validation.
    spec = ProbeSpec(max_length=64, model_config=config, device="sim", gpu_memory=64 * MiB, attn_candidates=("sdpa",),
                     eval_outputs="logits")
    with pytest.raises(autotune.errors.DoesNotFitError):
        probe(spec, device=SimDevice(64 * MiB))
    assert main([*flags, "--eval-outputs", "loss", "--out", str(out)]) == 0
    recipe = load_recipe(out)
    assert recipe.settings.per_device_eval_batch_size >= 1


def test_plan_choice_passes_over_a_candidate_whose_evaluation_does_not_fit():
    """The rule itself: no checkpointing is preferred, but not when its evaluation does not fit."""
    from autotune.plan.planner import CandidatePlan, Prediction, choose
    from autotune.plan.measure import CandidateMeasure

    def candidate(checkpointing, train, evaluate):
        measure = CandidateMeasure("sdpa", checkpointing, "sdpa")
        return CandidatePlan(measure, None, None, None, [Prediction(MiB, MiB, train, evaluate, None, None)])

    off, on = candidate(False, 4, 0), candidate(True, 6, 2)
    assert choose([off, on], 0) == on.measure.key
    assert choose([off, on], 0, evaluating=False) == off.measure.key
    assert choose([candidate(False, 4, 0)], 0) is None
