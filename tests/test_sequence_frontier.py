"""The sequence and media frontier (issue #14): `--max-length auto`, `--max-pixels auto` and
`--video-frames auto` find the largest value that fits at a fixed batch, equal to brute force
over every value with real Trainer trials on the sim device.

The brute force measures every value once; the search then runs through the same (memoised)
trials: the sim device is deterministic, so a trial's answer does not depend on when it ran,
and the test pays for each value once."""

import dataclasses
import random

import pytest

from autotune.cli import main
from autotune.devices import SimDevice
from autotune.model.families import Media, family_for
from autotune.model.source import resolve
from autotune.probe import ProgressSink, find_frontier
from autotune.recipe.schema import load_recipe
from autotune.search.frontier import FrontierSearch, run_search
from autotune.search.limits import frontier_values, search_limit
from autotune.search.space import SearchSpace
from autotune.spec import ProbeSpec
from autotune.trials.trial import run_trial
from autotune.model.workload import load_workload

MiB = 2**20


class Memo:
    """A runner that runs each distinct trial once (what brute force measured, the search reuses)."""

    def __init__(self, workload, budget):
        self.workload, self.budget, self.seen, self.asked = workload, budget, {}, []

    def run(self, phase, settings, steps=None):
        key = (phase, steps or 3, tuple(sorted((k, str(v)) for k, v in settings.items())))
        self.asked.append(key)
        if key not in self.seen:
            self.seen[key] = run_trial(self.workload, phase, settings, steps or 3, self.budget)
        return self.seen[key]


def _setup(name, capacity, attn, **spec_kwargs):
    spec = ProbeSpec(model_config=name, device="sim", gpu_memory=capacity, attn_candidates=(attn,),
                     gradient_checkpointing_candidates=(False,), eval=False, **spec_kwargs)
    source = resolve(None, name)
    values = frontier_values(spec, source)
    spec = values.loading_spec(spec).replace(attn_implementation=attn)
    device = SimDevice(capacity)
    workload = load_workload(source, spec, device)
    budget = int(capacity * spec.usable_fraction)
    return spec, values, workload, Memo(workload, budget), budget


def _brute_force(memo, values, settings, phase="train", steps=3):
    """The largest value that fits, measuring every value."""
    fits = [v for v in values.values if memo.run(phase, {**settings, values.dimension: v}, steps).fits]
    return max(fits, default=0), len(values.values)


def _searched(spec, memo, workload, budget, values):
    space = SearchSpace(spec, memo, workload.device, budget, ProgressSink(), find_frontier)
    before = len(memo.asked)
    result = search_limit(space, values)
    return result, len(memo.asked) - before


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_max_length_auto_equals_brute_force(attn):
    # tiny-llama at batch 1, 29 MiB: sdpa's peak is affine in length (768 fits, 896 runs past the
    # budget), eager's quadratic (384 fits, 512 runs out of memory).
    spec, values, workload, memo, budget = _setup("tiny-llama", 29 * MiB, attn, max_length=None, frontier="max_length",
                                                  length_granularity=128)
    assert values.values == list(range(128, 1025, 128)) and "position limit of 1024" in values.cap_reason
    settings = {"attn_implementation": attn, "gradient_checkpointing": False, "per_device_train_batch_size": 1,
                "gradient_accumulation_steps": 1}
    truth, brute = _brute_force(memo, values, settings)
    assert 0 < truth < 1024  # the frontier is inside the range, not at an end
    result, asked = _searched(spec, memo, workload, budget, values)
    assert result.value == truth and result.proof == {"fit": truth, "non_fit": truth + 128}
    assert result.candidates == {f"{attn}/gc-off": truth}
    assert asked < brute  # cheaper than brute force
    record = result.record()
    assert record["dimension"] == "max_length" and record["step"] == "128 tokens" and record["largest"] == 1024


def test_search_over_quadratic_peaks_is_exact_and_cheap():
    """Pure logic: eager-like peaks a + b*L + c*L^2 over lengths in steps of 64 up to 32768; the
    search over positions equals brute force on every curve, in a few trials."""
    rng = random.Random(14)
    counts = []
    for _ in range(300):
        a, b, c = rng.uniform(1, 50), rng.uniform(0.001, 0.05), rng.choice([0.0, rng.uniform(1e-7, 1e-5)])
        lengths = list(range(64, 32769, 64))
        peak = [a + b * n + c * n * n for n in lengths]
        budget = rng.uniform(peak[0] * 0.9, peak[-1] * 1.1)
        truth = max((i + 1 for i, p in enumerate(peak) if p <= budget), default=0)
        capacity = budget * 1.05  # past it, an OOM carries no peak

        def measure(k):
            p = peak[k - 1]
            return ("fit", p) if p <= budget else ("over_budget", p) if p <= capacity else ("oom", None)

        search = run_search(FrontierSearch(budget=budget, max_batch=len(lengths)), measure)
        assert search.frontier == truth
        counts.append(len(search.points))
    assert sum(counts) / len(counts) < 8 and max(counts) <= 16


def test_probe_max_length_auto_writes_the_frontier_into_the_recipe_and_launch_files(tmp_path, capsys):
    out = tmp_path / "r.yaml"
    argv = ["probe", "--model-config", "tiny-llama", "--device", "sim", "--gpu-memory", "29MiB", "--max-length", "auto",
            "--length-granularity", "256", "--attn", "sdpa", "--gradient-checkpointing", "off", "--no-eval",
            "--validate-steps", "3", "--quiet", "--out", str(out), "--emit", "swift", "--emit", "hf", "--emit", "llamafactory"]
    assert main(argv) == 0
    recipe = load_recipe(out)
    assert recipe.search.frontier == {"max_length": 768}
    assert recipe.settings.max_length == recipe.model.max_length == 768
    assert recipe.search.sequence["fit"] == 768 and recipe.search.sequence["non_fit"] == 1024
    assert all(t.settings.get("max_length") for t in recipe.search.trials)
    assert recipe.validation.passed and all(t.settings["max_length"] == 768 for t in recipe.search.trials if t.purpose == "validate")
    text = " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal's width
    assert "max_length 768 at train batch 1" in text and "1024 does not" in text
    assert "max_length: 768" in (tmp_path / "r.swift.yaml").read_text()
    assert "--max_length 768" in (tmp_path / "r.swift.sh").read_text()
    assert "cutoff_len: 768" in (tmp_path / "r.llamafactory.yaml").read_text()
    assert '"max_length": 768' in (tmp_path / "r.hf.model.json").read_text()
    # check --swift-args catches the unset length (the Ovis2 case): ms-swift would train at the
    # model's full 1024 tokens, which runs out of memory; the note names both lengths
    unset = tmp_path / "unset.swift.yaml"
    unset.write_text("".join(line for line in (tmp_path / "r.swift.yaml").read_text().splitlines(keepends=True)
                             if not line.startswith("max_length:")))
    assert main(["check", str(out), "--swift-args", str(unset)]) == 3
    text = " ".join(capsys.readouterr().out.split())
    assert "sets no max_length: ms-swift then trains at the model's full length, 1024 tokens" in text
    assert "the recipe fits at 768 (its max_length frontier): add `max_length: 768`" in text and "does not fit" in text


@pytest.mark.parametrize("argv, flag", [
    (["--max-length", "auto", "--max-pixels", "auto"], "--max-pixels"),
    (["--max-length", "64", "--per-device-train-batch-size", "2"], "--per-device-train-batch-size"),
    (["--max-length", "auto", "--length-granularity", "0"], "--length-granularity"),
    (["--max-length", "64", "--max-pixels", "auto"], "--max-pixels"),  # a text-only model has no pixels to search
])
def test_bad_auto_flags_are_one_line_exit_2(argv, flag, capsys, tmp_path):
    out = tmp_path / "r.yaml"
    code = main(["probe", "--model-config", "tiny-llama", "--device", "sim", "--gpu-memory", "64MiB", "--out", str(out), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and flag in err[-1] and not out.exists()


# ---------------------------------------------------------------- media (tiny Qwen2-VL)

class Rejudged:
    """The memoised trials judged against another budget: a trial's peak does not depend on the
    budget it is judged by (the capacity is generous: nothing runs out of memory), so this is the
    trial run again at that budget."""

    def __init__(self, memo, budget):
        self.memo, self.budget = memo, budget

    def run(self, phase, settings, steps=None):
        result = self.memo.run(phase, settings, steps)
        if result.outcome in ("fit", "over_budget"):
            return dataclasses.replace(result, outcome="fit" if result.peak_bytes <= self.budget else "over_budget")
        return result


MEDIA = {  # case -> (model, dimension, spec)
    # qwen-vl-utils' rule (ms-swift): 8 pixel values (4..11 tokens per image, the largest grid)
    "max_pixels": ("tiny-qwen2-vl", "max_pixels", dict(max_length=14, image_resize="qwen-vl-utils")),
    # transformers' processor: a value's worst image is a thin strip (29..61 tokens at 4..19 tokens' pixels)
    "max_pixels_processor": ("tiny-qwen2-vl", "max_pixels", dict(max_length=64, image_resize="processor")),
    # 1..7 temporal patches of 29 tokens (the thin frame scaled up to 3136 pixels) and the video's start/end
    "video_frames": ("tiny-qwen2-vl", "video_frames", dict(max_length=206, images_per_sample=0, video_max_pixels=3136,
                                                           video_min_pixels=3136)),
    "internvl_video_frames": ("tiny-internvl", "video_frames", dict(max_length=112, images_per_sample=0)),  # 1..7 frames, a tile each
}


@pytest.fixture(scope="module", params=sorted(MEDIA))
def media_curve(request):
    """Brute force: every value's peak at batch 1 (sdpa, no checkpointing), on a generous card."""
    name, dimension, kwargs = MEDIA[request.param]
    spec, values, workload, memo, _ = _setup(name, 256 * MiB, "sdpa", frontier=dimension, **kwargs)
    settings = {"attn_implementation": "sdpa", "gradient_checkpointing": False, "per_device_train_batch_size": 1,
                "gradient_accumulation_steps": 1}
    peaks = {v: memo.run("train", {**settings, dimension: v}).peak_bytes for v in values.values}
    assert list(peaks.values()) == sorted(peaks.values())  # more pixels / frames, more memory
    return spec, values, workload, memo, peaks


def test_media_auto_equals_brute_force(media_curve):
    spec, values, workload, memo, peaks = media_curve
    ordered = list(peaks)
    for middle in (2, len(ordered) - 3):  # budgets between two neighbouring values' peaks
        budget = (peaks[ordered[middle]] + peaks[ordered[middle + 1]]) // 2
        truth = max(v for v, p in peaks.items() if p <= budget)
        assert truth == ordered[middle]
        space = SearchSpace(spec, Rejudged(memo, budget), workload.device, budget, ProgressSink(), find_frontier)
        result = search_limit(space, values)
        assert result.value == truth and result.proof["non_fit"] == ordered[middle + 1]
        assert len(space.trials) < len(values.values)


def test_media_values_follow_the_family_resize_rule():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    spec = ProbeSpec(model_config="tiny-qwen2-vl", max_length=14, frontier="max_pixels", image_resize="qwen-vl-utils")
    values = frontier_values(spec, resolve(None, "tiny-qwen2-vl"))
    assert values.values == [t * 784 for t in range(4, 12)]  # 28x28 pixels per token, 56x56 at least
    for tokens, pixels in zip(range(4, 12), values.values):
        # the largest image the processor makes under MAX_PIXELS=pixels has exactly `tokens` tokens
        best = max((h // 28) * (w // 28) for h in range(28, 400, 28) for w in range(28, 400, 28)
                   if smart_resize(h, w, 28, 3136, pixels) == (h, w))
        assert best == tokens
    # Through the processor each value's worst image is larger (a thin strip): the list stops at the
    # last whose image and its start/end leave one text token of 64.
    source = resolve(None, "tiny-qwen2-vl")
    family = family_for(source.config)
    strips = frontier_values(ProbeSpec(model_config="tiny-qwen2-vl", max_length=64, frontier="max_pixels"), source)
    tokens = [family.plan(source.config, Media(max_pixels=t * 784)).image_tokens for t in range(4, 21)]
    assert strips.values == [t * 784 for t in range(4, 20)] and tokens[19 - 4] <= 61 < tokens[20 - 4]
    assert tokens == sorted(tokens) and tokens[0] == 29 and all(n > t for n, t in zip(tokens, range(4, 21)))
    frames = frontier_values(ProbeSpec(model_config="tiny-qwen2-vl", frontier="video_frames", **MEDIA["video_frames"][2]),
                             resolve(None, "tiny-qwen2-vl"))
    assert frames.values == [2, 4, 6, 8, 10, 12, 14] and "7 temporal patches" in frames.cap_reason
    # InternVL: one frame at a time, up to the most whose tokens (labels included) leave one text token
    internvl = resolve(None, "tiny-internvl")
    frames = frontier_values(ProbeSpec(model_config="tiny-internvl", frontier="video_frames", **MEDIA["internvl_video_frames"][2]), internvl)
    family, config = family_for(internvl.config), internvl.config
    fits = [n for n in range(1, 20) if family.plan(config, Media(images=0, video_frames=n)).tokens + 1 <= 112]
    assert frames.values == fits == list(range(1, 8)) and "7 frames" in frames.cap_reason


@pytest.mark.parametrize("media_curve", ["max_pixels"], indirect=True)
def test_probe_max_pixels_auto_sets_ms_swift_env(media_curve, tmp_path):
    spec, values, workload, memo, peaks = media_curve
    ordered = list(peaks)
    capacity = (peaks[ordered[4]] + peaks[ordered[5]]) // 2  # margin 0: the budget is the capacity
    out = tmp_path / "r.yaml"
    argv = ["probe", "--model-config", "tiny-qwen2-vl", "--device", "sim", "--gpu-memory", str(capacity), "--margin", "0",
            "--max-length", "14", "--max-pixels", "auto", "--attn", "sdpa", "--gradient-checkpointing", "off", "--no-eval",
            "--validate-steps", "3", "--quiet", "--out", str(out), "--emit", "swift"]
    assert main(argv) == 0
    recipe = load_recipe(out)
    assert recipe.search.frontier == {"max_pixels": ordered[4]}
    assert recipe.settings.max_pixels == ordered[4] and recipe.settings.env["MAX_PIXELS"] == str(ordered[4])
    assert recipe.multimodal["image_tokens"] == ordered[4] // 784
    assert f"MAX_PIXELS={ordered[4]}" in (tmp_path / "r.swift.sh").read_text()


def test_qwen3_vl_video_frames_auto_equals_brute_force():
    """Qwen3-VL's video on the sim device: 1..3 temporal patches of 256 tokens (qwen-vl-utils'
    upscaled worst frame at the per-frame floor) and their timestamps; the searched frame count is
    the brute force's at budgets between each pair of neighbours (tests/test_qwen3_vl_video.py:
    the worst case against qwen-vl-utils and the processor)."""
    spec, values, workload, memo, _ = _setup("tiny-qwen3-vl", 256 * MiB, "sdpa", frontier="video_frames", max_length=828,
                                             images_per_sample=0, video_max_pixels=131072, image_resize="qwen-vl-utils")
    assert values.values == [2, 4, 6] and workload.make_batch(1)["video_grid_thw"].tolist() == [[3, 4, 256]]
    settings = {"attn_implementation": "sdpa", "gradient_checkpointing": False, "per_device_train_batch_size": 1,
                "gradient_accumulation_steps": 1}
    peaks = {v: memo.run("train", {**settings, "video_frames": v}).peak_bytes for v in values.values}
    assert list(peaks.values()) == sorted(peaks.values()) and len(set(peaks.values())) == 3
    for low, high in ((2, 4), (4, 6)):
        budget = (peaks[low] + peaks[high]) // 2
        space = SearchSpace(spec, Rejudged(memo, budget), workload.device, budget, ProgressSink(), find_frontier)
        result = search_limit(space, values)
        assert result.value == max(v for v, p in peaks.items() if p <= budget) == low and result.proof["non_fit"] == high


def test_ms_swift_default_length_is_the_smallest_config_length():
    from autotune.emit.swift_read import default_max_length

    assert default_max_length(resolve(None, "tiny-llama").config) == 1024
    assert default_max_length(resolve(None, "tiny-qwen2-vl").config) == 4096  # from the nested text_config


def test_the_length_steps_down_to_where_the_evaluation_fits_too():
    """--max-length auto searches the train step; when the run's evaluation (16 eval steps of logits
    kept, after a train step) does not fit at that length, the probe searches the longest length
    whose evaluation fits, exactly (a fit and the next length's non-fit), and validates there."""
    from autotune.probe import probe
    from autotune.spec import ProbeSpec

    spec = ProbeSpec(max_length=None, frontier="max_length", model_config="tiny-llama", device="sim", gpu_memory=24 * 2**20,
                     train_type="lora", attn_candidates=("sdpa",), gradient_checkpointing_candidates=(True,),
                     eval_outputs="logits", eval_steps=16, validate_steps=3)
    recipe = probe(spec)
    record = recipe.search.sequence
    assert record["stepped_down"]["train_fit"] > record["value"] == recipe.settings.max_length
    evals = {t.settings["max_length"]: t.fits for t in recipe.search.trials
             if t.phase == "eval" and t.settings.get("per_device_eval_batch_size") == 1}
    assert evals[record["fit"]] and not evals[record["non_fit"]]
    assert recipe.validation.passed and recipe.validation.eval_steps > 0


def test_the_full_length_of_a_nested_thinker_is_found_as_ms_swift_finds_it():
    """Qwen2.5-Omni keeps its length in thinker_config.text_config, which ms-swift's
    get_max_model_len reaches; the reader found none ('states no length')."""
    from autotune.emit.swift_read import default_max_length
    from autotune.model.source import resolve

    config = resolve(None, "tiny-qwen2.5-omni-thinker").config
    assert default_max_length(config) == config.get_text_config().max_position_embeddings
    # the whole Omni model's config: the thinker's language model counts, the talker's does not
    omni = {"model_type": "qwen2_5_omni", "thinker_config": {"text_config": {"max_position_embeddings": 32768},
                                                             "vision_config": {"max_position_embeddings": 64}},
            "talker_config": {"max_position_embeddings": 4096}}
    assert default_max_length(omni) == 32768
