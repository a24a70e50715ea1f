"""Depth-independent plan cost (issue #13): the plan measures shallow copies of the model (one
and two repeating units of each stack) and extends every number to the real depth. Checked
against the same plan at full depth: the same frontiers, peaks within 1% (they are exact)."""

import json
from pathlib import Path

import pytest

import autotune
from autotune.devices.fake import FakeDevice
from autotune.plan.planner import PlanOptions, candidate_steps, make_plan, plan_workloads
from autotune.plan.breakdown import Allowance, layer_bytes
from autotune.plan.depth import choose_depth
from autotune.plan.measure import build_plan_workload, plan_source
from autotune.spec import ProbeSpec

MiB = 2**20
CONFIGS = Path(autotune.__file__).parent / "configs"


def _config(tmp_path, name: str, text=None, vision=None, **top) -> str:
    config = {**json.loads((CONFIGS / f"{name}.json").read_text()), **top}
    if text:
        config["text_config"] = {**config["text_config"], **text}
    if vision:
        config["vision_config"] = {**config["vision_config"], **vision}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    return str(path)


def _peaks(spec, checkpointing: bool, depth: str, batch: int = 2) -> tuple[str, int, int]:
    """(how the depth was covered, the train peak at `batch`, the eval peak at `batch` after a
    train step at batch 2); each copy's peaks are extended at every batch alike."""
    workload, choice, shallow = plan_workloads(spec, 2**40, depth)
    steps, measure = candidate_steps(workload, "sdpa", checkpointing, spec, shallow, choice)
    try:
        return choice.note(), steps.train(batch).peak, steps.eval(2, 1, batch).peak
    finally:
        steps.close()


@pytest.mark.parametrize("name,length,checkpointing,change,unit", [
    ("tiny-llama", 64, True, {"num_hidden_layers": 4}, "4 layers as 4 units of 1"),
    # Gemma 3: sliding and full attention alternate.
    ("tiny-gemma3-text", 64, False, {"num_hidden_layers": 8, "layer_types": ["sliding_attention", "full_attention"] * 4},
     "8 layers as 4 units of 2"),
    # Qwen3-MoE with an MoE block every second layer, a dense MLP between; 9 = 4 units and one more.
    ("tiny-qwen3-moe", 32, False, {"num_hidden_layers": 9, "decoder_sparse_step": 2}, "9 layers as 4 units of 2 + 1"),
    # Two sliding layers, then a full one: measured by kind (copies of 2 and 3 layers, not 3 and 6).
    ("tiny-gemma3-text", 64, True, {"num_hidden_layers": 12, "layer_types": ["sliding_attention"] * 2 + ["full_attention"]},
     "12 layers as 4 units of 3, each kind extended apart (runs of 2, 1 alike layers)"),
])
def test_shallow_copies_extend_to_the_full_depth_run(tmp_path, name, length, checkpointing, change, unit):
    if len(change.get("layer_types", ())) == 3:
        change = {**change, "layer_types": change["layer_types"] * 4}
    spec = ProbeSpec(max_length=length, model_config=_config(tmp_path, name, **change))
    (how, train, evaluate), (full_how, full_train, full_eval) = (_peaks(spec, checkpointing, d) for d in ("auto", "full"))
    assert unit in how and "full depth" in full_how
    assert abs(train - full_train) <= 0.01 * full_train, (train, full_train)
    assert abs(evaluate - full_eval) <= 0.01 * full_eval, (evaluate, full_eval)


def test_a_vision_tower_with_window_and_full_blocks_extends_over_its_unit(tmp_path):
    """Qwen2.5-VL: full attention every second block of the tower (fullatt_block_indexes), the
    text stack uniform; three copies, each stack extended over its own unit."""
    path = _config(tmp_path, "tiny-qwen2.5-vl", text={"num_hidden_layers": 6},
                   vision={"depth": 8, "fullatt_block_indexes": [1, 3, 5, 7]})
    spec = ProbeSpec(max_length=64, model_config=path, max_pixels=56 * 56 * 4)
    (how, train, evaluate), (_, full_train, full_eval) = (_peaks(spec, False, d) for d in ("auto", "full"))
    assert "6 layers as 6 units of 1; 8 layers as 4 units of 2" in how
    assert abs(train - full_train) <= 0.01 * full_train and abs(evaluate - full_eval) <= 0.01 * full_eval


def test_a_tower_of_window_blocks_and_a_full_block_is_measured_by_kind(tmp_path):
    """Qwen2.5-VL-7B's tower: runs of window-attention blocks, each closed by a full-attention
    block (here 3 + 1, three times). Each kind is extended to its own count from copies of 2 and
    3 blocks (one of each, then one more of each kind), not of 4 and 8; with checkpointing the
    frozen tower is in the autograd graph (transformers hooks its patch embedding). The text
    layers beyond the first and the window blocks beyond the first are as many (8, as 27 in
    Qwen2.5-VL-7B), so one copy measures both."""
    path = _config(tmp_path, "tiny-qwen2.5-vl", text={"num_hidden_layers": 9},
                   vision={"depth": 12, "fullatt_block_indexes": [3, 7, 11]})
    spec = ProbeSpec(max_length=96, model_config=path, max_pixels=56 * 56 * 4)
    source = plan_source(spec)
    choice = choose_depth(source.config, build_plan_workload(source, spec, FakeDevice(), fake=False).model)
    # text, tower: the base copy; a text layer and a window block more; a full block more
    assert choice.parts() == [[[0], [0, 3]], [[0, 1], [0, 0, 3]], [[0], [0, 3, 3]]]
    assert choice.repeats() == [9 - 1, 3 - 1]
    (how, train, evaluate), (_, full_train, full_eval) = (_peaks(spec, True, d) for d in ("auto", "full"))
    assert "12 layers as 3 units of 4, each kind extended apart (runs of 3, 1 alike layers)" in how
    assert abs(train - full_train) <= 0.01 * full_train and abs(evaluate - full_eval) <= 0.01 * full_eval


def test_a_kind_set_by_its_position_is_measured_in_whole_units(tmp_path):
    """MoE every third layer (`decoder_sparse_step`) is a rule on the position, which a copy
    selecting layers would not follow: the unit is measured whole."""
    spec = ProbeSpec(max_length=32, model_config=_config(tmp_path, "tiny-qwen3-moe", num_hidden_layers=12, decoder_sparse_step=3))
    source = plan_source(spec)
    choice = choose_depth(source.config, build_plan_workload(source, spec, FakeDevice(), fake=False).model)
    assert [(s.unit, s.runs) for s in choice.stacks] == [(3, ())] and "units of 3" in choice.note()
    assert choice.parts() == [[[0, 1, 2]], [[0, 1, 2, 3, 4, 5]]]


def test_a_plan_says_how_it_covered_the_depth(tmp_path):
    spec = ProbeSpec(max_length=32, model_config=_config(tmp_path, "tiny-llama", num_hidden_layers=4), margin=0.0)
    plan = make_plan(spec, PlanOptions([16 * MiB], checkpointing=[False], allowance=Allowance(0, 0, 0.0)))
    assert "4 layers as 4 units of 1" in plan.depth and plan.to_dict()["depth"] == plan.depth


@pytest.mark.parametrize("change,reason", [
    ({"num_hidden_layers": 8, "mlp_only_layers": [0]}, "do not repeat"),  # a dense first layer, MoE after it
    ({"num_hidden_layers": 8, "first_k_dense_replace": 1}, "first_k_dense_replace is not read"),
    ({"num_hidden_layers": 3}, "shallow"),
])
def test_stacks_that_do_not_repeat_run_at_full_depth_and_say_why(tmp_path, change, reason):
    spec = ProbeSpec(max_length=32, model_config=_config(tmp_path, "tiny-qwen3-moe", **change))
    source = plan_source(spec)
    choice = choose_depth(source.config, build_plan_workload(source, spec, FakeDevice()).model)
    assert not choice.extended and reason in choice.note() and "full depth" in choice.note()


@pytest.mark.parametrize("train_type", ["full", "lora"])
def test_an_extended_plan_counts_the_whole_model_as_the_full_depth_run(tmp_path, train_type):
    """Where shallow copies run the steps the whole model stays on the meta device (LoRA's
    adapters left out of it): its parameter counts, weights, gradients and optimizer state are
    extended from the copies, and equal the full-depth run's; so do the layer sizes ZeRO-3 and
    FSDP gather, read from a copy."""
    spec = ProbeSpec(max_length=32, model_config=_config(tmp_path, "tiny-llama", num_hidden_layers=4), train_type=train_type)
    counts = []
    for depth in ("auto", "full"):
        workload, choice, shallow = plan_workloads(spec, 2**40, depth)
        steps, measure = candidate_steps(workload, "sdpa", False, spec, shallow, choice)
        try:
            steps.train(2)
        finally:
            steps.close()
        counts.append((workload.total_params, workload.trainable_params, measure.weights, measure.gradients,
                       measure.optimizer_state, layer_bytes(shallow[0].model if shallow else workload.model)))
    assert counts[0] == counts[1] and all(counts[1]), counts
