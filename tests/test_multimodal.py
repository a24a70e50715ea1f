"""Vision-language probes on the sim device with the tiny Qwen2-VL / Qwen2.5-VL / LLaVA / LLaVA-NeXT configs."""

import pytest
import torch

from autotune.cli import main
from autotune.model.families import Media, family_for
from autotune.model.families.qwen_resize import worst_grid
from autotune.model.source import resolve
from autotune.progress import ProgressSink
from autotune.search.frontier import find_frontier
from autotune.trials.trial import InProcessRunner, run_train_trial

MiB = 2**20
SIM = ["--device", "sim", "--gpu-memory", "64MiB"]


def frontier(workload, budget, max_batch=12):
    trials = []
    search = find_frontier(InProcessRunner(workload, 3, budget), "train", {}, budget, max_batch, ProgressSink(), trials)
    return search.frontier, trials


@pytest.mark.parametrize("name,capacity,media", [
    ("tiny-qwen2-vl", 9 * MiB, {"max_pixels": 56 * 56}),
    ("tiny-qwen2.5-vl", 7 * MiB + MiB // 2, {"max_pixels": 112 * 112, "image_resize": "qwen-vl-utils"}),  # the largest grid
    ("tiny-llava", 8 * MiB, {}),
    ("tiny-llava-next", 12 * MiB, {}),
])
def test_frontier_matches_brute_force(make_workload, name, capacity, media):
    workload = make_workload(name, capacity, max_length=64, **media)
    budget = int(capacity * 0.9)
    found, trials = frontier(workload, budget)
    assert 2 <= found < 12
    # Brute force over every batch size up to found + 2; an outcome is a function of the batch
    # size, so sizes the search already measured are reused and the rest are run.
    seen = {t.batch_size: t.outcome for t in trials}
    outcomes = [seen.get(b) or run_train_trial(workload, b, 3, budget).outcome for b in range(1, found + 3)]
    truth = outcomes.index(next(o for o in outcomes if o != "fit")) if "fit" in outcomes else 0
    assert all(o != "fit" for o in outcomes[truth:]), outcomes
    assert found == truth
    assert len(trials) <= 5


@pytest.mark.parametrize("name,media,tower", [
    ("tiny-qwen2.5-vl", {"max_pixels": 112 * 112}, "model.visual."),
    ("tiny-llava-next", {}, "model.vision_tower."),
])
def test_freezing_the_vit_lowers_memory_and_leaves_it_without_grads_or_state(make_workload, name, media, tower):
    peaks = {}
    for freeze_vit in (False, True):
        workload = make_workload(name, 1 << 30, max_length=64, freeze_vit=freeze_vit, freeze_aligner=freeze_vit, **media)
        peaks[freeze_vit] = run_train_trial(workload, 1, 3, 1 << 30).peak_bytes
        visual = [p for n, p in workload.model.named_parameters() if n.startswith(tower)]
        assert all(p.requires_grad != freeze_vit for p in visual)
        optimizer = workload.make_optimizer()
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        assert any(id(p) in held for p in visual) != freeze_vit
    assert peaks[True] < peaks[False]


def test_lora_targets_only_the_unfrozen_parts(make_workload):
    workload = make_workload("tiny-qwen2-vl", 1 << 30, max_length=32, max_pixels=3136, train_type="lora", freeze_aligner=False)
    wrapped = {n for n, m in workload.model.named_modules() if hasattr(m, "lora_A")}
    assert any(".visual.merger." in n for n in wrapped) and any(".language_model." in n for n in wrapped)
    assert not any(".visual.blocks." in n for n in wrapped)  # the ViT stays frozen (ms-swift default)
    assert all("lora_" in n for n, p in workload.model.named_parameters() if p.requires_grad)


def test_more_pixels_or_frames_lower_the_frontier(make_workload):
    """The base frontier F is searched; with more pixels (or a video) batch F no longer fits
    while batch 1 does, so their frontier lies in [1, F)."""
    capacity = 11 * MiB
    budget = int(capacity * 0.9)
    base = {"max_pixels": 56 * 56, "images_per_sample": 1, "image_resize": "qwen-vl-utils"}  # images at the largest grid
    found, _ = frontier(make_workload("tiny-qwen2-vl", capacity, max_length=64, **base), budget, 6)
    assert found >= 2
    # the smallest video frame qwen-vl-utils and the processor allow is 29 tokens (a thin one, scaled up)
    for media in ({"max_pixels": 28 * 28 * 40}, {"video_frames": 2, "video_max_pixels": 3136, "video_min_pixels": 3136}):
        workload = make_workload("tiny-qwen2-vl", capacity, max_length=64, **{**base, **media})
        assert run_train_trial(workload, found, 3, budget).outcome in ("oom", "over_budget"), media
        assert run_train_trial(workload, 1, 3, budget).fits


def test_worst_case_image_is_a_fixed_point_of_the_processor_resize():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    for pixels in (3136, 12544, 1003520, 12845056, 50000):
        h, w = worst_grid(pixels, 28)
        assert h * w == pixels // 784 or w / h > 200
        assert smart_resize(h * 28, w * 28, 28, 3136, pixels) == (h * 28, w * 28)


def test_full_size_configs_resolve_with_their_published_token_counts():
    cases = {"qwen2.5-vl-7b": (128000, 1280), "qwen2-vl-7b": (32768, 1280), "llava-1.5-7b": (4096, 576),
             "llava-v1.6-mistral-7b": (32768, 2928)}  # 672x672: 576 base + 48 rows x (48 + 1 newline)
    for name, (limit, tokens) in cases.items():
        source = resolve(None, f"recipes/configs/{name}/config.json")
        family = family_for(source.config)
        media = Media(images=1, max_pixels=None if "llava" in name else 1003520)
        assert family.plan(source.config, media).image_tokens == tokens
        assert source.config.get_text_config().max_position_embeddings == limit


def test_an_over_long_video_is_refused_with_what_to_change(tmp_path, capsys):
    out = tmp_path / "r.yaml"
    argv = ["probe", "--model-config", "tiny-qwen2-vl", *SIM, "--max-length", "128", "--video-frames", "64",
            "--video-max-pixels", "12544", "--video-min-pixels", "3136", "--images-per-sample", "0", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("autotune: error: --video-frames:")
    # 64 frames = 32 frame pairs x 56 tokens = 1792: under 12544 pixels (16 tokens) the processor
    # makes a thin frame 1 x 56 merged patches (qwen_resize.processor_worst); 128 - 1 - 2 wrappers
    # leaves 2 pairs
    assert "1792 tokens" in err and "--video-frames 4 or fewer" in err and "--max-length 1795 or more" in err
    assert not out.exists()


@pytest.mark.parametrize("extra,needle", [
    (["--max-pixels", "1003520"], "--max-pixels"),  # a 1280-token image in 128 tokens
    (["--freeze-vit", "true", "--freeze-aligner", "true", "--freeze-llm", "true"], "--freeze-llm"),
])
def test_bad_multimodal_input_is_one_line(tmp_path, capsys, extra, needle):
    argv = ["probe", "--model-config", "tiny-qwen2-vl", *SIM, "--max-length", "128", "--out", str(tmp_path / "r.yaml")]
    assert main(argv + extra) == 2
    assert needle in capsys.readouterr().err


def test_a_freeze_flag_takes_true_or_false(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["probe", "--model-config", "tiny-qwen2-vl", "--max-length", "64", "--freeze-vit", "maybe"])
    assert exit_info.value.code == 2 and "--freeze-vit: expected true or false" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--max-pixels", "3136"], ["--freeze-vit", "false"], ["--freeze-llm", "true"]])
def test_vision_flags_on_a_text_model_are_refused(tmp_path, capsys, flag):
    """`--freeze-vit false` is as much a vision flag as `true` (it was accepted silently)."""
    argv = ["probe", "--model-config", "tiny-llama", *SIM, "--max-length", "64", *flag, "--out", str(tmp_path / "r.yaml")]
    assert main(argv) == 2
    assert f"{flag[0]}: this model is text-only" in capsys.readouterr().err and not (tmp_path / "r.yaml").exists()


def test_through_the_processor_the_worst_image_is_the_strip_it_clamps(make_workload):
    """A launch that resizes with transformers' processor (the default, and --emit hf / trl /
    llamafactory) meets a thin strip the processor keeps one factor high: at 112 x 112 pixels' limit
    (16 tokens) a 15 x 3000 image becomes 28 x 1568 pixels, 56 tokens; the batch carries that grid.
    qwen-vl-utils (ms-swift) makes at most the largest grid, 16."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    workload = make_workload("tiny-qwen2-vl", 1 << 30, max_length=128, max_pixels=112 * 112, images_per_sample=1)
    vision, config = workload.setup.vision, workload.source.config
    assert vision.image_source == (15, 3000) and smart_resize(15, 3000, 28, 56 * 56, 112 * 112) == (28, 1568)
    assert vision.image_tokens == 56 and vision.image_grid == (1, 2, 112)
    batch = workload.make_batch(2)
    assert (batch["input_ids"] == config.image_token_id).sum() == 2 * 56 and batch["image_grid_thw"].tolist() == [[1, 2, 112]] * 2
    swift = make_workload("tiny-qwen2-vl", 1 << 30, max_length=128, max_pixels=112 * 112, images_per_sample=1, image_resize="qwen-vl-utils")
    assert swift.setup.vision.image_tokens == 16


def test_worst_case_batch_matches_the_model_rules(make_workload):
    workload = make_workload("tiny-qwen2-vl", 1 << 30, max_length=128, max_pixels=112 * 112, images_per_sample=2,
                             video_frames=3, video_max_pixels=56 * 56, video_min_pixels=56 * 56, image_resize="qwen-vl-utils")
    batch = workload.make_batch(3)
    config = workload.source.config
    assert batch["input_ids"].shape == (3, 128)
    assert (batch["input_ids"] == config.image_token_id).sum() == 3 * 2 * 16  # 112^2 / 28^2
    # ceil(3 / 2) temporal patches x 29 tokens: the thin frame the processor scales up to 56^2 pixels
    assert (batch["input_ids"] == config.video_token_id).sum() == 3 * 2 * 29
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]] * 6 and batch["video_grid_thw"].tolist() == [[2, 2, 58]] * 3
    assert batch["pixel_values"].shape == (6 * 64, 3 * 2 * 14 * 14)
    assert torch.equal(batch["labels"] == -100, batch["mm_token_type_ids"] != 0)


def test_the_image_rule_follows_the_launch_and_check_rebuilds_it(tmp_path):
    """--emit swift alone: ms-swift's qwen-vl-utils (the largest grid); any other launch, or none:
    transformers' processor. The recipe records the rule, `check` and the reprobe command rebuild
    it, and `check --swift-args` checks what ms-swift makes."""
    import dataclasses

    from autotune.check import reprobe_command, spec_for
    from autotune.cli import build_parser
    from autotune.cli.check import with_swift_args
    from autotune.cli.probe import spec_from_args
    from autotune.emit import hf, llamafactory, swift
    from autotune.recipe.schema import load_recipe

    def rule(*flags):
        args = build_parser().parse_args(["probe", "--model-config", "tiny-qwen2-vl", "--max-length", "96", *flags])
        return spec_from_args(args).image_resize

    assert rule() == rule("--emit", "hf") == rule("--emit", "swift", "--emit", "hf") == "processor"
    assert rule("--emit", "swift") == "qwen-vl-utils" and rule("--emit", "swift", "--image-resize", "processor") == "processor"
    out = tmp_path / "vl.yaml"
    assert main(["probe", "--model-config", "tiny-qwen2-vl", *SIM, "--max-length", "96", "--max-pixels", "12544", "--attn", "sdpa",
                 "--gradient-checkpointing", "off", "--no-eval", "--validate-steps", "3", "--max-batch-size", "2",
                 "--out", str(out), "--no-journal", "--quiet"]) == 0
    recipe = load_recipe(out)
    assert recipe.settings.image_resize == "processor" and recipe.multimodal["image_tokens"] == 56  # the strip
    assert spec_for(recipe, "sim", 2**26, 0.1).image_resize == "processor" and "--image-resize processor" in reprobe_command(recipe)
    args = tmp_path / "swift.yaml"
    args.write_text(swift.render_yaml(recipe, "4.6"))
    checked, _ = with_swift_args(recipe, str(args), environ={})
    assert spec_for(checked, "sim", 2**26, 0.1).image_resize == "qwen-vl-utils"
    older = dataclasses.replace(recipe, settings=dataclasses.replace(recipe.settings, image_resize=None))
    assert spec_for(older, "sim", 2**26, 0.1).image_resize == "qwen-vl-utils"  # what a recipe before the setting counted
    # A launch through the processor of a recipe counted as ms-swift counts says so in its file.
    as_swift = dataclasses.replace(recipe, settings=dataclasses.replace(recipe.settings, image_resize="qwen-vl-utils"))
    assert "--image-resize processor" in hf.model_settings(as_swift)["image_resize"]["how"]
    assert "--image-resize processor" in llamafactory.render(as_swift) and hf.model_settings(recipe)["image_resize"] == "processor"
    assert "--image-resize" not in llamafactory.render(recipe)
