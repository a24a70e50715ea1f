"""The memory levers (issue #15): partial checkpointing, activation offloading, packing, Liger and
sequence parallelism. The search's logic against brute force on synthetic peak/speed tables (exact,
no timing noise); the levers themselves through the real Trainer on the sim device; their flags;
each launch file's spelling; and `check` re-running them."""

import dataclasses
import itertools
import json
import random
import types
from pathlib import Path

import pytest
import yaml

from autotune.recipe import levers
from autotune.cli import main
from autotune.devices import SimDevice
from autotune.emit import accelerate, hf, llamafactory, swift, swift_read
from autotune.errors import UsageError
from autotune.search.levers import cheapest_fitting
from autotune.probe import ProgressSink, find_frontier
from autotune.recipe.schema import TrialResult
from autotune.search.space import SearchSpace
from autotune.search.throughput import TIE, Measured, rank
from autotune.spec import ProbeSpec

MiB = 2**20
DEEP = str(Path(__file__).parent / "data" / "deep-llama.json")  # 6 layers, so every-N has something to choose


# ------------------------------------------------------------------ pure logic


def test_cheapest_fitting_matches_brute_force_on_random_monotone_tables():
    rng = random.Random(0)
    for _ in range(300):
        ladder = list(range(rng.randint(1, 9)))
        batches = sorted(rng.sample(range(1, 40), rng.randint(1, 6)))
        # need[b]: the first ladder index that fits b, non-decreasing in b (len(ladder): none fits)
        need = dict(zip(batches, sorted(rng.randint(0, len(ladder)) for _ in batches)))
        asked = []

        def fits(b, i):
            asked.append((b, i))
            return i >= need[b]

        found = cheapest_fitting(batches, ladder, fits)
        assert found == {b: (ladder[need[b]] if need[b] < len(ladder) else None) for b in batches}
        assert len(set(asked)) == len(asked)  # never the same trial twice
        assert len(asked) <= len(batches) * (len(ladder).bit_length() + 1)


def test_every_n_ladder_has_one_n_per_checkpointed_layer_count():
    assert levers.every_n_ladder(6) == [6, 3, 2]
    assert levers.every_n_ladder(32) == [32, 16, 11, 8, 7, 6, 5, 4, 3, 2]
    for layers in range(2, 40):
        counts = [-(-layers // n) for n in levers.every_n_ladder(layers)]
        assert counts == sorted(set(counts)) and counts[0] == 1 and counts[-1] == -(-layers // 2)


class _Table:
    """A runner answering from a synthetic model of the step (the space's logic, not the Trainer):
    peak = weights + batch x (logits + kept layers x A + checkpointed layers x C (0 offloaded)),
    speed = batch / (batch + 2) x (1 - r x checkpointed fraction - offload cost)."""

    def __init__(self, layers, budget, recompute, act=10, ckpt=1):
        self.layers, self.budget, self.recompute, self.act, self.ckpt = layers, budget, recompute, act, ckpt
        self.calls = 0

    def checkpointed(self, s):
        if not s.get("gradient_checkpointing"):
            return 0
        return -(-self.layers // int(s.get("checkpoint_every_n_layers") or 1))

    def peak(self, s):
        c = self.checkpointed(s)
        stored = 0 if s.get("activation_offloading") else c * self.ckpt
        return 100 + s["per_device_train_batch_size"] * (20 + (self.layers - c) * self.act + stored)

    def speed(self, s):
        b, c = s["per_device_train_batch_size"], self.checkpointed(s)
        return 1000 * b / (b + 2) * (1 - self.recompute * c / self.layers - (0.05 if s.get("activation_offloading") else 0))

    def run(self, phase, settings, steps=None):
        self.calls += 1
        peak = self.peak(settings)
        fits = peak <= self.budget
        return TrialResult(phase, dict(settings), "fit" if fits else "over_budget", peak_bytes=peak,
                           tokens_per_s=self.speed(settings) if fits else None)


def _table_space(runner, **spec_kwargs):
    spec = ProbeSpec(max_length=64, model_config="tiny-llama", device="sim", gpu_memory=10**6, attn_candidates=("sdpa",),
                     global_batch_size=32, max_batch_size=32, **spec_kwargs)
    space = SearchSpace(spec, runner, SimDevice(10**6), runner.budget, ProgressSink(), find_frontier)
    space.lever_facts = {"vision_language": False, "checkpointed_layers": runner.layers}
    return space


def _grid(runner, space, modes):
    """Brute force: every mode at every per-device batch the global batch admits."""
    points = []
    for mode, batch in itertools.product(modes, space.reachable()):
        s = {**mode, "per_device_train_batch_size": batch}
        if runner.peak(s) <= runner.budget:
            points.append((runner.speed(s), -runner.peak(s), s))
    return max(points, key=lambda p: p[:2]) if points else None, len(modes) * len(space.reachable())


@pytest.mark.parametrize("seed", range(12))
def test_partial_checkpointing_and_offloading_choose_what_brute_force_chooses(seed):
    rng = random.Random(seed)
    layers = rng.choice([4, 6, 8, 12, 32])
    runner = _Table(layers, budget=rng.randint(700, 6000), recompute=rng.choice([0.05, 0.2, 0.35]))
    space = _table_space(runner, every_n_layers=levers.PARTIAL, activation_offloading=(False, True))
    space.search_train()
    modes = [{"gradient_checkpointing": False}, {"gradient_checkpointing": True},
             {"gradient_checkpointing": True, "activation_offloading": True}]
    modes += [{"gradient_checkpointing": True, "checkpoint_every_n_layers": n} for n in range(2, layers + 1)]
    best, grid = _grid(runner, space, modes)
    ranked = space.ranked()
    if best is None:
        assert not ranked
        return
    chosen = ranked[0]
    assert chosen.tokens_per_s >= best[0] * (1 - TIE) - 1e-9  # the fastest, or within the tie band at a lower peak
    if chosen.tokens_per_s < best[0] - 1e-9:  # then rank preferred it: no lever before a lever, then the lower peak
        assert (bool(chosen.levers), chosen.peak_bytes) <= (bool(levers.of(best[2])), -best[1])
    assert runner.calls < grid  # the search runs fewer trials than the grid it replaces


def test_a_lever_never_wins_a_tie_against_a_configuration_without_it():
    plain = Measured("sdpa", False, 4, 1, 1000.0, 900)
    partial = Measured("sdpa", True, 8, 1, 1005.0, 800, levers={"checkpoint_every_n_layers": 4})
    assert rank([partial, plain])[0] is plain  # within 1%: no lever
    faster = Measured("sdpa", True, 8, 1, 1100.0, 800, levers={"checkpoint_every_n_layers": 4})
    assert rank([faster, plain])[0] is faster
    spec = ProbeSpec(max_length=8, model_config="tiny-llama", every_n_layers=levers.PARTIAL)
    cands = [types.SimpleNamespace(measured=[plain, faster], levers={}, status="searched", reason=None)]
    record = levers.outcome(spec, SimDevice(MiB), faster, cands)
    assert record["speedup_pct"] == 10.0 and record["chosen"] == "every-4"
    assert record["best_without_levers"]["tokens_per_s"] == 1000.0


def test_default_search_has_no_lever_in_any_trial():
    runner = _Table(6, budget=1500, recompute=0.3)
    space = _table_space(runner)
    space.search_train()
    assert space.trials and all(not levers.of(t.settings) for t in space.trials)
    assert [(c.gradient_checkpointing, c.levers) for c in space.candidates] == [(False, {}), (True, {})]


# ------------------------------------------------------------------ the real Trainer on the sim device


def test_levers_through_the_trainer_lower_the_peak_as_measured(make_workload):
    """One batch, each lever as the Trainer runs it. every-N: the peak falls with each layer
    checkpointed; offloading: by exactly the checkpointed layers' saved inputs (layers x batch x
    length x hidden x 2 bytes), which the sim device holds in host memory; packing: runs on sdpa
    (transformers masks the packed rows from position ids)."""
    from autotune.trials.trial import run_trial

    batch, length = 2, 32
    workload = make_workload(DEEP, 512 * MiB, max_length=length)
    layers = levers.checkpointed_layer_count(workload.model)
    peak = {}
    for name, s in {"off": {}, "every-3": {"gradient_checkpointing": True, "checkpoint_every_n_layers": 3},
                    "on": {"gradient_checkpointing": True},
                    "on+offload": {"gradient_checkpointing": True, "activation_offloading": True},
                    "packing": {"packing": True}}.items():
        result = run_trial(workload, "train", {"per_device_train_batch_size": batch, **s}, 3, 10**12)
        assert result.fits, (name, result.message)
        peak[name] = result.peak_bytes
    assert layers == 6
    assert peak["off"] > peak["every-3"] > peak["on"] > peak["on+offload"]
    # every-3 checkpoints 2 of 6 layers: a third of full checkpointing's saving
    assert peak["off"] - peak["every-3"] == pytest.approx((peak["off"] - peak["on"]) / 3, rel=0.05)
    hidden = workload.model.config.hidden_size
    assert peak["on"] - peak["on+offload"] == layers * batch * length * hidden * 2
    assert peak["packing"] >= peak["off"]  # the block-diagonal mask is extra; nothing is saved in the worst case
    from transformers.masking_utils import find_packed_sequence_indices

    packed = workload.make_batch(batch, layout="packing")
    assert "attention_mask" not in packed and find_packed_sequence_indices(packed["position_ids"]) is not None


def test_probe_with_partial_checkpointing_picks_the_cheapest_n_that_fits(make_workload, tmp_path):
    """The capacity sits between every-6's and every-3's peak at batch 4: off fits 2, every-3
    is the fewest checkpointed layers that fit 4 (brute force over the ladder), and the recipe,
    its launch files and `check` carry it."""
    from autotune.probe import probe
    from autotune.recipe.schema import save_recipe
    from autotune.trials.trial import run_trial

    length = 32
    workload = make_workload(DEEP, 512 * MiB, max_length=length)
    peaks = {n: run_trial(workload, "train", {"per_device_train_batch_size": 4, "gradient_checkpointing": True,
                                              "checkpoint_every_n_layers": n, "gradient_accumulation_steps": 1}, 3, 10**12).peak_bytes
             for n in (6, 3)}
    capacity = int((peaks[6] + peaks[3]) / 2 / 0.9)
    spec = ProbeSpec(max_length=length, model_config=DEEP, device="sim", gpu_memory=capacity, global_batch_size=4,
                     max_batch_size=4, attn_candidates=("sdpa",), every_n_layers=levers.PARTIAL, eval=False, validate_steps=3)
    recipe = probe(spec, device=SimDevice(capacity))
    s = recipe.settings
    by_batch = {t.settings["per_device_train_batch_size"]: t for t in recipe.search.trials
                if t.settings.get("checkpoint_every_n_layers") == 3 and t.fits}
    assert 4 in by_batch  # every-3 fits batch 4 ...
    assert not any(t.fits for t in recipe.search.trials if t.settings.get("checkpoint_every_n_layers") == 6
                   and t.settings["per_device_train_batch_size"] == 4)  # ... and every-6 does not
    if s.checkpoint_every_n_layers:  # the fastest may still be batch 2 without checkpointing: measured, not assumed
        assert s.checkpoint_every_n_layers == 3 and s.per_device_train_batch_size == 4
        assert recipe.search.levers["speedup_pct"] > 0
    assert recipe.search.levers["asked"]["partial_checkpointing"]["status"] == "searched"
    forced = dataclasses.replace(recipe, settings=dataclasses.replace(s, gradient_checkpointing=True, checkpoint_every_n_layers=3,
                                                                      per_device_train_batch_size=4, gradient_accumulation_steps=1))
    path = tmp_path / "r.yaml"
    save_recipe(forced, path)
    assert main(["check", str(path), "--format", "json"]) == 0  # check re-runs every-3 at batch 4 ...
    save_recipe(dataclasses.replace(forced, settings=dataclasses.replace(forced.settings, checkpoint_every_n_layers=6)), path)
    assert main(["check", str(path)]) == 3  # ... and every-6 there does not fit: the lever is what check runs


# ------------------------------------------------------------------ flags


@pytest.mark.parametrize("flags, flag", [
    (["--gradient-checkpointing", "every-0"], "--gradient-checkpointing"),
    (["--gradient-checkpointing", "sometimes"], "--gradient-checkpointing"),
    (["--gradient-checkpointing", "off", "--activation-offloading", "on"], "--activation-offloading"),
    (["--packing", "on", "--padding-free", "on"], "--padding-free"),
    (["--sequence-parallel-size", "3"], "--sequence-parallel-size"),
    (["--activation-offloading", "search", "--emit", "swift"], "--activation-offloading"),
    (["--padding-free", "on", "--attn", "sdpa"], "--padding-free"),  # needs flash attention: nothing to measure
])
def test_bad_lever_flags_exit_2_naming_the_flag(flags, flag, tmp_path, capsys):
    out = tmp_path / "r.yaml"
    argv = ["probe", "--model-config", "tiny-llama", "--device", "sim", "--gpu-memory", "12MiB", "--max-length", "32",
            "--out", str(out), *flags]
    assert main(argv) == 2
    assert flag in capsys.readouterr().err and not out.exists()


def test_checkpointing_values_parse():
    assert levers.parse_checkpointing("search") == ((False, True), None)
    assert levers.parse_checkpointing("every-4") == ((True,), 4)
    assert levers.parse_checkpointing("every-1") == ((True,), None)
    assert levers.parse_checkpointing("partial") == ((False, True), levers.PARTIAL)
    with pytest.raises(UsageError):
        levers.parse_checkpointing("every-x")


def test_probe_and_plan_take_each_others_word_for_both_checkpointing_candidates():
    """plan said `both`, probe `search`: a plan command line reused for the probe was refused."""
    from autotune.cli import build_parser

    assert levers.parse_checkpointing("both") == levers.parse_checkpointing("search")
    parse = build_parser().parse_args
    for word in ("both", "search"):
        assert parse(["plan", "--model-config", "tiny-llama", "--max-length", "8", "--gradient-checkpointing", word]).gradient_checkpointing == word


def test_liger_and_padding_free_are_skipped_here_with_their_reasons():
    runner = _Table(6, budget=1500, recompute=0.3)
    space = _table_space(runner, padding_free=(False, True), liger=(False, True))
    space.search_train()
    skipped = [c for c in space.candidates if c.levers.get("padding_free")]
    assert skipped and all(c.status == "skipped" and "flash attention" in c.reason for c in skipped)
    assert not any(c.levers.get("use_liger_kernel") for c in space.candidates)  # no Liger on the sim device
    spec = space.spec
    record = levers.outcome(spec, space.device, space.ranked()[0], space.candidates)
    assert record["asked"]["liger"]["status"] == "skipped" and "CUDA" in record["asked"]["liger"]["reason"]
    assert "flash attention" in record["asked"]["padding_free"]["reason"]


# ------------------------------------------------------------------ launch files


def _with_levers(**changes):
    from launch_recipes import variant

    r = variant("base")
    return dataclasses.replace(r, settings=dataclasses.replace(r.settings, gradient_checkpointing=True, **changes))


def test_every_target_spells_partial_checkpointing_and_liger():
    from transformers import HfArgumentParser, TrainingArguments

    r = _with_levers(checkpoint_every_n_layers=4, use_liger_kernel=True, packing=True, sequence_parallel_size=2,
                     attn_implementation="flash_attention_2")  # ms-swift packs with flash attention only
    args = json.loads(hf.render(r))
    assert args["activation_checkpointing_kwargs"] == {"use_reentrant": False, "every_n_layers": 4}
    assert args["use_liger_kernel"] is True
    (parsed,) = HfArgumentParser(TrainingArguments).parse_dict({**args, "use_cpu": True}, allow_extra_keys=False)
    assert parsed.activation_checkpointing_kwargs["every_n_layers"] == 4
    assert json.loads(hf.render_model(r))["data"]["packing"]["row_length"] == r.settings.max_length
    applied = r.apply(TrainingArguments(output_dir="out", use_cpu=True))
    assert applied.activation_checkpointing_kwargs == {"use_reentrant": False, "every_n_layers": 4}

    text = swift.render_yaml(r, "4.6")
    body = yaml.safe_load(text)
    assert json.loads(body["gradient_checkpointing_kwargs"]) == {"use_reentrant": False, "every_n_layers": 4}
    assert body["use_liger_kernel"] is True and body["packing"] is True and body["sequence_parallel_size"] == 2
    assert set(body) - {"ENV"} <= set(swift.field_list("4.6"))
    assert "every_n_layers=4" in text and "sequence_parallel_size=2" in text
    settings, _ = swift_read.settings_from_args(body)
    assert settings["checkpoint_every_n_layers"] == 4 and settings["use_liger_kernel"] is True

    lf = llamafactory.render(r)
    flat = llamafactory.flat(r)
    assert flat["enable_liger_kernel"] is True and flat["neat_packing"] is True
    assert flat["disable_gradient_checkpointing"] is False and "every 4th layer" in lf
    assert "memory levers" in accelerate.render(r)


@pytest.mark.parametrize("lever", ["packing", "padding_free"])
def test_ms_swift_refuses_packing_without_flash_attention_and_so_does_emit(lever, tmp_path, capsys):
    """ms-swift's SftArguments raise for packing / padding_free unless attn_impl is flash: a file
    written with sdpa failed at launch. Refused at emit, and before a probe that could only end so."""
    from autotune.cli import main

    with pytest.raises(UsageError, match="flash attention only"):
        swift.render_yaml(_with_levers(**{lever: True, "attn_implementation": "sdpa"}), "4.6")
    flag = "--" + lever.replace("_", "-")
    assert main(["probe", "--model-config", "tiny-llama", "--device", "sim", "--gpu-memory", "64MiB", "--max-length", "32",
                 flag, "on", "--attn", "sdpa", "--emit", "swift", "--out", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err and "flash" in err and not (tmp_path / "r.yaml").exists()


def test_targets_without_activation_offloading_refuse_it():
    r = _with_levers(activation_offloading=True)
    assert json.loads(hf.render(r))["activation_checkpointing_kwargs"]["offload"] is True
    for render in (lambda: swift.render_yaml(r, "4.6"), lambda: llamafactory.render(r)):
        with pytest.raises(UsageError, match="offload"):
            render()


# ------------------------------------------------------------------ supervised workers


@pytest.mark.slow
def test_levers_run_in_a_supervised_worker_as_in_process(tmp_path, capfd):
    """`--isolate` runs each trial in a worker process through the same Trainer, so every-N and
    packing run there too (they were refused as "cannot run here" before): the worker's trials
    and the recipe are the in-process ones, peak for peak."""
    argv = ["probe", "--model-config", DEEP, "--device", "sim", "--gpu-memory", "64MiB", "--max-length", "32",
            "--max-batch-size", "4", "--steps", "3", "--attn", "sdpa", "--gradient-checkpointing", "every-2",
            "--packing", "on", "--no-eval", "--validate-steps", "3", "--no-journal", "--format", "json"]
    ref, isolated = tmp_path / "ref.yaml", tmp_path / "isolated.yaml"
    assert main([*argv, "--out", str(ref)]) == 0
    assert main([*argv, "--isolate", "--trial-timeout", "240", "--out", str(isolated)]) == 0
    capfd.readouterr()

    def essence(path):
        recipe = yaml.safe_load(path.read_text())
        trials = [(t["phase"], t["settings"].get("per_device_train_batch_size"), t["outcome"], t["peak_bytes"],
                   levers.of(t["settings"])) for t in recipe["search"]["trials"]]
        return recipe["search"]["levers"]["asked"], trials

    asked, trials = essence(isolated)
    assert asked["partial_checkpointing"]["status"] == asked["packing"]["status"] == "searched"
    assert trials and all(lever == {"checkpoint_every_n_layers": 2, "packing": True} for *_, lever in trials)
    assert (asked, trials) == essence(ref)


def test_levers_run_wherever_a_trial_runs_the_trainer():
    text, vision = {"vision_language": False, "checkpointed_layers": 6}, {"vision_language": True, "checkpointed_layers": 6}
    assert levers.runs_here(text, True, {"packing": True, "checkpoint_every_n_layers": 2}) is None
    assert levers.runs_here(vision, True, {"checkpoint_every_n_layers": 2, "activation_offloading": True}) is None
    assert "FSDP or DeepSpeed" in levers.runs_here(text, False, {"checkpoint_every_n_layers": 2})
    assert levers.runs_here(vision, True, {"packing": True}) is None
    assert "vision-language" in levers.runs_here(vision, True, {"padding_free": True})


def test_vision_language_packed_rows_hold_the_most_media_and_mask_each_sample(make_workload):
    """A packed vision-language row holds as many samples at the media limits as fit (the worst
    case: short captions beside full-size images), so its vision tower sees k times one sample's
    media; the real model keeps each sample to itself (a token changed in the first sample leaves
    the others' logits as they were: the packed mask, which a cache would silently switch off).
    The probe's packed frontier is brute force's, and packing costs more than one sample a row."""
    import torch
    from transformers.masking_utils import find_packed_sequence_indices

    from autotune.model import packing
    from autotune.probe import probe
    from autotune.trials.trial import run_trial

    length = 128
    workload = make_workload("tiny-qwen2-vl", 512 * MiB, max_length=length, max_pixels=12544, image_resize="qwen-vl-utils")  # 16 tokens
    vplan, config = workload.setup.vision, workload.source.config
    k = packing.samples_per_row(vplan, length)
    assert k == length // (vplan.tokens + packing.TEXT_PER_SAMPLE) == 3
    batch = workload.make_batch(2, device=torch.device("cpu"), layout="packing")
    assert ((batch["input_ids"] == config.image_token_id).sum(dim=1) == k * vplan.image_tokens).all()
    assert batch["image_grid_thw"].shape[0] == 2 * k and batch["position_ids"].shape == (4, 2, length)
    assert int(find_packed_sequence_indices(batch["position_ids"][0]).max()) == k - 1
    workload.model.eval()
    first = packing.segment_lengths(vplan, length)[0]
    changed = dict(batch, input_ids=batch["input_ids"].clone())
    changed["input_ids"][:, first - 2] = (changed["input_ids"][:, first - 2] + 1) % 50
    with torch.no_grad():
        a, b = (workload.model(**{key: v.to(workload.device.torch_device) if torch.is_tensor(v) else v for key, v in x.items()}).logits
                for x in (batch, changed))
    assert not torch.equal(a[:, first - 2], b[:, first - 2]) and torch.equal(a[:, first:], b[:, first:])
    workload.model.train()

    peaks = {n: run_trial(workload, "train", {"per_device_train_batch_size": n, "packing": True}, 3, 10**12).peak_bytes for n in range(1, 7)}
    unpacked = run_trial(workload, "train", {"per_device_train_batch_size": 2, "packing": False}, 3, 10**12).peak_bytes
    assert peaks[2] > unpacked  # three images a row, not one
    capacity = int((peaks[3] + peaks[4]) / 2 / 0.9)
    spec = ProbeSpec(max_length=length, model_config="tiny-qwen2-vl", max_pixels=12544, image_resize="qwen-vl-utils", device="sim",
                     gpu_memory=capacity,
                     max_batch_size=8, attn_candidates=("sdpa",), gradient_checkpointing_candidates=(False,), packing=(True,),
                     eval=False, validate_steps=3)  # no global batch: every trial at accumulation 1, as brute force ran
    recipe = probe(spec, device=SimDevice(capacity))
    truth = max(n for n, peak in peaks.items() if peak <= recipe.search.budget_bytes)  # brute force at the probe's budget
    assert truth == 3
    assert recipe.settings.packing is True and recipe.search.frontier["train"] == truth
    assert recipe.validation.passed


def test_modes_after_a_fit_at_the_largest_batch_are_pruned_saying_which_fit():
    runner = _Table(6, budget=10**9, recompute=0.3)  # everything fits: off already reaches the global batch
    space = _table_space(runner, activation_offloading=(False, True))
    space.search_train()
    pruned = {levers.describe(c.base): c.reason for c in space.candidates if c.status == "pruned"}
    assert pruned == {name: "cannot win: batch 32 already fits without checkpointing and is the largest the global batch allows"
                      for name in ("on", "on+offload")}
