"""Depth-independent plan cost (issue #13): the plan measures shallow copies of the model (one
and two repeating units of each stack) and extends every number to the real depth. Checked
against the same plan at full depth: the same frontiers, peaks within 1% (they are exact)."""

import json
from pathlib import Path

import pytest

import autotune
from autotune.devices.fake import FakeDevice
from autotune.plan.copies import candidate_steps
from autotune.plan.planner import PlanOptions, make_plan, plan_workloads
from autotune.plan.breakdown import Allowance
from autotune.plan.depth import DepthChoice, Stack, Unsound, choose_depth
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


def _peaks(spec, checkpointing: bool, depth: str, batch: int = 2, *more: int) -> tuple:
    """(how the depth was covered, the train peak at `batch`, the eval peak at `batch` after a
    train step at batch 2, then those at each of `more`); each copy's peaks are extended at every
    batch alike."""
    workload, choice, shallow = plan_workloads(spec, 2**40, depth)
    steps, measure = candidate_steps(workload, "sdpa", checkpointing, spec, shallow, choice)
    try:
        return choice.note(), *(peak for b in (batch, *more) for peak in (steps.train(b).peak, steps.eval(2, 1, b).peak))
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
    block (here 3 + 1, three times). Each kind is extended to its own count from copies of 1 to 3
    blocks, not of 4 and 8; the window blocks (whose SDPA path loops over the windows in Python)
    are left out of the base copy: one copy holds one, and the others count as one more full
    block adds (the same parameters), checked at every step. With checkpointing the frozen tower
    is in the autograd graph (transformers hooks its patch embedding). Images of 4 windows each;
    every peak equals the full-depth run's."""
    path = _config(tmp_path, "tiny-qwen2.5-vl", text={"num_hidden_layers": 9},
                   vision={"depth": 12, "fullatt_block_indexes": [3, 7, 11]})
    spec = ProbeSpec(max_length=96, model_config=path, max_pixels=112 * 112 * 4, image_resize="qwen-vl-utils")  # square: 4 windows
    source = plan_source(spec)
    choice = choose_depth(source.config, build_plan_workload(source, spec, FakeDevice(), fake=False).model)
    # text, tower: the base copy (no window block); a text layer more; a window block; a full block more
    assert choice.parts() == [[[0], [3]], [[0, 1], [3]], [[0], [0, 3]], [[0], [3, 3]]]
    assert choice.repeats() == [9 - 1, 1, (3 - 1) + (3 * 3 - 1)]
    # where the check fails: one of each kind in every copy; the text layers and window blocks
    # beyond the first are as many (8, as 27 in Qwen2.5-VL-7B), so one copy measures both
    assert choice.fallback().parts() == [[[0], [0, 3]], [[0, 1], [0, 0, 3]], [[0], [0, 3, 3]]]
    assert choice.fallback().repeats() == [9 - 1, 3 - 1]
    (how, *peaks), (_, *full_peaks) = (_peaks(spec, True, d) for d in ("auto", "full"))
    assert "12 layers as 3 units of 4, each kind extended apart (runs of 3, 1 alike layers)" in how
    assert "base without its run of 3" in how
    assert peaks == full_peaks  # train and eval, byte for byte


def _lean_choice():
    """Qwen2.5-VL-7B's stacks as plan/depth.py reads them: 28 text layers; 32 tower blocks, 7
    window blocks and a full one, 4 times, the window blocks left out of the base copy."""
    return DepthChoice(stacks=[Stack(None, "num_hidden_layers", 28, 1, 0),
                               Stack(None, "depth", 32, 8, 0, runs=(7, 1), absent=0, reference=1)])


def test_the_7b_tower_runs_one_window_block_in_four_copies():
    choice = _lean_choice()
    assert choice.parts() == [[[0], [7]], [[0, 1], [7]], [[0], [0, 7]], [[0], [7, 7]]]
    assert choice.repeats() == [27, 1, 27 + 3]
    assert choice.fallback().parts() == [[[0], [0, 7]], [[0, 1], [0, 0, 7]], [[0], [0, 7, 7]]]


@pytest.mark.parametrize("window,passes", [
    (MiB, True),  # both kinds hold their checkpointed input (1 MiB) at the peak
    (MiB + 512, True),  # and a small tensor all window blocks share, held once: 27 x 512 bytes, under 0.1%
    (3 * MiB, False),  # the peak inside the window block's own moments: its transient
    (0, False),  # the peak where the window block holds nothing and a full block its input
])
def test_the_check_refuses_a_window_block_that_adds_what_a_full_block_does_not(window, passes):
    base, text, full = 100 * MiB, 5 * MiB, MiB
    values = (base, base + text, base + window, base + full)  # parts() order
    if passes:
        _lean_choice().check("the peak", *values)
    else:
        with pytest.raises(Unsound, match="the peak: the vision tower's layer 0 .* added"):
            _lean_choice().check("the peak", *values)


def test_a_tower_whose_peak_moves_between_kinds_falls_back_to_one_of_each_kind(tmp_path):
    """A full-attention block opening each unit of 3 window blocks: the step's peak sits in the
    full block's moments, where a window block after it holds nothing and a second full block
    holds the first's output. The first window block adds less than a full block: the check
    refuses the base without window blocks at the first step, and the plan runs the fallback
    copies (one block of each kind in every copy), reusing the one copy they share, and says so."""
    path = _config(tmp_path, "tiny-qwen2.5-vl", text={"num_hidden_layers": 3},
                   vision={"depth": 12, "fullatt_block_indexes": [0, 4, 8], "hidden_size": 64, "intermediate_size": 256})
    spec = ProbeSpec(max_length=96, model_config=path, max_pixels=224 * 224, margin=0.0, image_resize="qwen-vl-utils")
    plan = make_plan(spec, PlanOptions([14 * MiB], attn=["eager"], checkpointing=[True], allowance=Allowance(0, 0, 0.0)))
    candidate = plan.candidates[0]
    assert "eager/gc-on fell back: measured on shallow copies" in plan.depth
    assert "forward/backward peak at train batch 2" in candidate.depth_fallback
    assert "base without" in plan.depth and "base without" not in candidate.depth_fallback
    workload, choice, shallow = plan_workloads(spec, 2**40, "auto")
    fallback = choice.fallback()
    steps, _ = candidate_steps(workload, "eager", True, spec, shallow.for_choice(fallback), fallback)
    try:
        assert candidate.measure.train_peaks[2] == steps.train(2).peak
    finally:
        steps.close()


def test_the_whole_model_is_left_without_adapters_where_shallow_copies_run(tmp_path):
    """peft on the whole (meta) model is wasted where the copies run the steps (0.6 s of a 7B
    LoRA plan): its adapters are left out and its parameter counts are the copies', extended,
    equal to those of the full-depth model with its adapters."""
    spec = ProbeSpec(max_length=32, train_type="lora", model_config=_config(tmp_path, "tiny-llama", num_hidden_layers=4))
    workload, choice, shallow = plan_workloads(spec, 2**40, "auto")
    full, full_choice, _ = plan_workloads(spec, 2**40, "full")
    assert choice.extended and not full_choice.extended
    assert workload.adapters_left_out and not any("lora_" in name for name, _ in workload.model.named_parameters())
    assert not full.adapters_left_out and any("lora_" in name for name, _ in full.model.named_parameters())
    assert (workload.total_params, workload.trainable_params) == (full.total_params, full.trainable_params)
    assert 0 < workload.trainable_params < workload.total_params
