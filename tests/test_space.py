"""The search space (issue #3) on the sim device: eval frontier, checkpointing and attention as
dimensions, skipped candidates, the validation run and its fallback, report and plot."""

import pytest

from autotune.cli import main
from autotune.devices import SimDevice
from autotune.errors import DoesNotFitError
from autotune.probe import probe
from autotune.progress import ProgressSink
from autotune.search.frontier import find_frontier
from autotune.recipe.schema import load_recipe
from autotune.search.space import SearchSpace
from autotune.search.throughput import Measured, rank
from autotune.spec import ProbeSpec
from autotune.trials.trial import InProcessRunner, run_trial
from autotune.search.validate import validate

MiB = 2**20


def _space(workload, budget, **spec_kwargs):
    spec = workload.spec.replace(**spec_kwargs)
    return SearchSpace(spec, InProcessRunner(workload, 3, budget), workload.device, budget, ProgressSink(), find_frontier)


def _brute_force_eval(workload, settings, steps, budget, limit):
    frontier = 0
    for batch in range(1, limit + 1):
        if run_trial(workload, "eval", {**settings, "per_device_eval_batch_size": batch}, steps, budget).outcome != "fit":
            break
        frontier = batch
    return frontier


def test_eval_frontier_keeping_logits_is_lower_and_matches_brute_force(make_workload):
    workload = make_workload("tiny-qwen2", 10 * MiB, max_length=64)
    budget = int(10 * MiB * 0.9)
    kept = _space(workload, budget, prediction_loss_only=False, eval_steps=3)
    loss_only = _space(workload, budget, prediction_loss_only=True, eval_steps=3)
    config = Measured("sdpa", False, 1, 1, 0.0, 0)  # evaluating after training at batch 1
    f_kept, f_loss = kept.eval_frontier(config), loss_only.eval_frontier(config)
    assert 1 <= f_kept < f_loss < 64
    settings = kept.eval_settings("sdpa", False)
    assert settings["eval_accumulation_steps"] == 3 and settings["prediction_loss_only"] is False
    assert _brute_force_eval(workload, settings, 3, budget, f_kept + 1) == f_kept
    assert _brute_force_eval(workload, loss_only.eval_settings("sdpa", False), 3, budget, f_loss + 1) == f_loss
    assert kept.phases["eval"]["trials"] == len([t for t in kept.trials if t.phase == "eval"]) <= 6


def test_generate_eval_keeps_ids_not_logits(make_workload):
    workload = make_workload("tiny-llama", 256 * MiB, max_length=32)
    keep = {"prediction_loss_only": False, "eval_accumulation_steps": 2, "per_device_eval_batch_size": 4}
    plain = run_trial(workload, "eval", keep, 2, 10**12)
    generated = run_trial(workload, "eval", {**keep, "predict_with_generate": True, "max_new_tokens": 4}, 2, 10**12)
    assert plain.fits and generated.fits
    assert generated.peak_bytes < plain.peak_bytes  # the held predictions are token ids, not logits
    assert generated.settings["max_new_tokens"] == 4


@pytest.mark.slow
def test_probe_searches_the_space_and_validates(tmp_path, capsys):
    out, png = tmp_path / "r.yaml", tmp_path / "r.png"
    argv = ["probe", "--model-config", "tiny-llama", "--device", "sim", "--gpu-memory", "12MiB", "--max-length", "64",
            "--global-batch-size", "10", "--attn", "flash_attention_2,sdpa", "--validate-steps", "4", "--eval-steps", "2",
            "--out", str(out), "--plot", str(png)]
    assert main(argv) == 0
    recipe = load_recipe(out)
    rows = {(c["attn_implementation"], c["gradient_checkpointing"]): c for c in recipe.search.candidates}
    for gc in (False, True):
        assert rows[("flash_attention_2", gc)]["status"] == "skipped" and "CUDA" in rows[("flash_attention_2", gc)]["reason"]
    plain, ckpt = rows[("sdpa", False)], rows[("sdpa", True)]
    assert ckpt["frontier"] > plain["frontier"] >= 1  # checkpointing raises the train frontier
    assert sum(c["chosen"] for c in recipe.search.candidates) == 1
    s, v = recipe.settings, recipe.validation
    assert s.per_device_train_batch_size * s.gradient_accumulation_steps == 10
    assert s.per_device_eval_batch_size == recipe.search.frontier["eval"] >= 1
    assert (s.eval_accumulation_steps, s.prediction_loss_only) == (2, False)
    assert v.method == "validation-run" and v.passed and v.steps == 4 and v.eval_steps == 4
    assert v.peak_bytes <= recipe.search.budget_bytes and v.headroom_bytes == recipe.search.budget_bytes - v.peak_bytes
    for t in recipe.search.trials:  # every trial can be re-run from the recipe alone
        assert {"attn_implementation", "gradient_checkpointing"} <= set(t.settings)
    assert set(recipe.search.phases) == {"train", "throughput", "eval", "validate"}
    assert sum(p["trials"] for p in recipe.search.phases.values()) == len(recipe.search.trials)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "candidates" in printed and "skipped" in printed and "validation-run" in printed

    assert main(["report", str(out)]) == 0
    report = capsys.readouterr().out
    assert "flash_attention_2" in report or "fa2" in report  # abbreviated where the terminal is 80 wide
    assert main(["report", str(out), "--plot", str(png)]) == 2  # exists: refused without --force
    assert main(["report", str(out), "--plot", str(png), "--force"]) == 0


def test_flash_attention_alone_cannot_run_here(tmp_path, capsys):
    out = tmp_path / "r.yaml"
    argv = ["probe", "--model-config", "tiny-llama", "--device", "sim", "--gpu-memory", "12MiB", "--max-length", "64",
            "--attn", "flash_attention_2", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--attn" in err and "CUDA" in err and not out.exists()


def test_failed_validation_falls_back_to_the_next_configuration(make_workload):
    workload = make_workload("tiny-llama", 12 * MiB, max_length=64)
    space = _space(workload, int(12 * MiB * 0.9), eval=False, validate_steps=3)
    peaks = {b: run_trial(workload, "train", {"per_device_train_batch_size": b}, 3, 10**12).peak_bytes for b in (2, 4)}
    ranked = [Measured("sdpa", False, 4, 1, 200.0, peaks[4]), Measured("sdpa", False, 2, 2, 100.0, peaks[2])]
    workload.device.shrink(int((peaks[2] + peaks[4]) / 2 / 0.9))  # batch 4 no longer fits; batch 2 does
    done = validate(space, ranked)
    assert done.config.per_device_train_batch_size == 2 and done.validation.passed
    first, second = done.validation.attempts
    assert not first["passed"] and first["message"] and second["passed"]


class _ShrinkBeforeValidation(ProgressSink):
    def __init__(self, device, capacity):
        self.device, self.capacity = device, capacity

    def stage(self, text):
        if text.startswith("validating"):
            self.device.shrink(self.capacity)


def test_probe_exits_3_when_no_configuration_validates():
    device = SimDevice(7 * MiB)
    spec = ProbeSpec(max_length=32, model_config="tiny-llama", device="sim", gpu_memory=7 * MiB, global_batch_size=2,
                     attn_candidates=("sdpa",), gradient_checkpointing_candidates=(False,), eval=False, validate_steps=3)
    with pytest.raises(DoesNotFitError, match="validation"):
        probe(spec, _ShrinkBeforeValidation(device, 3 * MiB), device=device)


def test_rank_prefers_lower_peak_on_a_tie():
    a = Measured("sdpa", False, 4, 1, 1000.0, 900)
    b = Measured("eager", False, 4, 1, 995.0, 500)
    c = Measured("sdpa", True, 8, 1, 1200.0, 800)
    assert rank([a, b, c]) == [c, b, a]


def test_a_train_trial_over_the_budget_ends_after_its_first_step_with_the_optimizer_state(make_workload):
    """From step 2 the optimizer state is resident and the train peak can only grow, so a trial
    over the budget then is a non-fit whatever its other steps do: it stops, and on the sim device
    the peak it reports is the one the whole trial reaches (steps 2 on are alike)."""
    workload = make_workload("tiny-llama", 64 * MiB, max_length=32)
    settings = {"attn_implementation": "sdpa", "gradient_checkpointing": False, "per_device_train_batch_size": 8,
                "gradient_accumulation_steps": 1}
    whole = run_trial(workload, "train", settings, 5, 64 * MiB)
    assert whole.outcome == "fit" and whole.steps == 5
    stopped = run_trial(workload, "train", settings, 5, whole.peak_bytes - 1)
    assert (stopped.outcome, stopped.steps, stopped.peak_bytes) == ("over_budget", 2, whole.peak_bytes)
    just_fits = run_trial(workload, "train", settings, 5, whole.peak_bytes)
    assert (just_fits.outcome, just_fits.steps) == ("fit", 5)
