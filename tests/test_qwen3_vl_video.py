"""Qwen3-VL video (issue #14): the worst case is what ms-swift's path makes of a video, by the
family's own code — qwen-vl-utils' `fetch_video` (frames and their size, under the variables
ms-swift sets) and transformers' `Qwen3VLProcessor` (its timestamps and vision start/end per
temporal patch, `_calculate_timestamps`; the video processor's `patchify` for the grid) — token
for token, with the layout and positions `get_rope_index` computes; the recipe's env pins the
limits and `check --swift-args` reads them back.

Not called: the video decoders (torchvision, decord: not loadable or not installed here; a
stand-in decoder hands qwen-vl-utils frames of a given size and count, and a stand-in resize
gives the size qwen-vl-utils asks for) and the torchvision-backed video processor's resize and
normalisation (ms-swift turns them off or they do not change shapes). qwen-vl-utils itself is
not a dependency: these tests skip without it (`pip install --no-deps qwen-vl-utils`)."""

import dataclasses
import math
import importlib.util
import re
import types

import pytest
import torch

from autotune.errors import UsageError
from autotune.model.families import Media, family_for
from autotune.model.families import qwen3_vl, qwen_resize
from autotune.model.source import resolve
from autotune.spec import QWEN_VL_UTILS
from qwen_vl_utils_stand_ins import VIDEOS

SWIFT = QWEN_VL_UTILS  # ms-swift's path: qwen-vl-utils sizes the frames
SPECIALS = ("<|vision_start|>", "<|video_pad|>", "<|vision_end|>")
def _as_ms_swift_sets(vp, monkeypatch, env: dict) -> str:
    """qwen-vl-utils' globals as ms-swift's Qwen3-VL loader sets them from `env`: its own
    `compat_qwen_vl_utils(16)` and `patch_qwen_vl_utils` where ms-swift is installed, else their
    effect on these variables (VIDEO_MAX_TOKEN_NUM = VIDEO_MAX_PIXELS // 32^2; FPS_MAX_FRAMES)."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("VIDEO_MAX_TOKEN_NUM", "FPS_MAX_FRAMES"):
        monkeypatch.setattr(vp, key, getattr(vp, key))  # restored afterwards
    if importlib.util.find_spec("swift") is not None:
        from swift.model.models.qwen import compat_qwen_vl_utils, patch_qwen_vl_utils

        monkeypatch.delenv("VIDEO_MAX_TOKEN_NUM", raising=False)
        compat_qwen_vl_utils(image_patch_size=16)
        if hasattr(vp, "_patch"):
            monkeypatch.delattr(vp, "_patch")
        patch_qwen_vl_utils(vp)
        return "ms-swift"
    vp.VIDEO_MAX_TOKEN_NUM = int(env["VIDEO_MAX_PIXELS"]) // 32**2
    vp.FPS_MAX_FRAMES = int(env["FPS_MAX_FRAMES"])
    return "mapping"


def _processor(config):
    """transformers' Qwen3VLProcessor (the model's own class, with the word-per-id tokenizer); its
    video processor stands in with the sizes replace_video_token reads (the real one needs torchvision)."""
    from transformers import Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from autotune.model.families.qwen2_vl import PLACEHOLDERS
    from autotune.model.processor import images_only
    from autotune.model.tokenizer import synthetic_tokenizer

    vision = config.vision_config
    tokenizer = synthetic_tokenizer(config.get_text_config().vocab_size, tuple((n, getattr(config, k)) for n, k in PLACEHOLDERS))
    made = images_only(Qwen3VLProcessor)(image_processor=Qwen2VLImageProcessorPil(patch_size=16, merge_size=2), tokenizer=tokenizer)
    made.video_processor = types.SimpleNamespace(merge_size=vision.spatial_merge_size, temporal_patch_size=vision.temporal_patch_size)
    return made


def _tokens(text: str, config) -> list[int]:
    """The text as ids: each special token one id, every other character one token (the bound
    the family counts the timestamps by; a byte-level BPE tokenizer makes no more)."""
    ids = {SPECIALS[0]: config.vision_start_token_id, SPECIALS[1]: config.video_token_id, SPECIALS[2]: config.vision_end_token_id}
    out = []
    for piece in re.split("(" + "|".join(map(re.escape, SPECIALS)) + ")", text):
        out += [ids[piece]] if piece in ids else [7] * len(piece.encode())
    return out


CASES = {  # case -> (--video-frames, --video-max-pixels, decoded frame (height, width), MODEL_SEQ_LEN)
    # 768 tokens per frame (qwen-vl-utils' default): the largest grid under it, a fixed point of smart_resize
    "default": (4, None, (768, 1024), None),
    # at the per-frame floor, a frame thinner than 1:126 is scaled up past the budget: 2 x 128 patches
    "upscaled": (4, 131072, (1, 127), None),
    # the budget over the frames binds: MODEL_SEQ_LEN x 0.9 / frames x 2 tokens per frame (a small
    # MODEL_SEQ_LEN on both sides, so the frames stay small)
    "total": (12, None, (480, 640), 2000),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_video_worst_case_is_what_qwen_vl_utils_and_the_processor_make(case, vision_process, monkeypatch, tmp_path):
    from transformers import Qwen3VLModel
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    frames, per_frame, (height, width), seq_len = CASES[case]
    config = resolve(None, "tiny-qwen3-vl").config
    if seq_len:
        monkeypatch.setattr(qwen_resize, "MODEL_SEQ_LEN", seq_len)
        monkeypatch.setattr(vision_process, "MODEL_SEQ_LEN", seq_len)
    vplan = family_for(config).plan(config, Media(images=0, video_frames=frames, video_max_pixels=per_frame, image_resize=SWIFT))
    assert vplan.video_grid[0] == frames // 2  # at these settings the worst video has all N frames
    env = {"VIDEO_MAX_PIXELS": str(vplan.video_max_pixels), "FPS_MAX_FRAMES": str(frames)}
    _as_ms_swift_sets(vision_process, monkeypatch, env)

    # A day-long video at 1 fps from 80000 s on: every timestamp is as wide as the family counts them.
    VIDEOS[case] = (86401, 1.0, height, width)
    path = tmp_path / "day.mp4"
    path.write_text(case)
    (video, metadata), _ = vision_process.fetch_video({"video": str(path), "video_start": 80000.0}, image_patch_size=16,
                                                      return_video_sample_fps=True, return_video_metadata=True)
    assert video.shape[0] == frames
    vision = config.vision_config
    pixels, t, h, w = Qwen3VLVideoProcessor.patchify(None, video[None], patch_size=vision.patch_size,
                                                     merge_size=vision.spatial_merge_size, temporal_patch_size=vision.temporal_patch_size)
    assert (t, h, w) == vplan.video_grid

    processor = _processor(config)
    grid = torch.tensor([[t, h, w]])
    written = processor.replace_video_token({"video_grid_thw": grid, "video_metadata": [VideoMetadata(**metadata)]}, 0)
    (text,), _ = processor.get_text_with_replacements(["<|vision_start|><|video_pad|><|vision_end|>"], [], [written])
    stamps = [piece for piece in re.split("|".join(map(re.escape, SPECIALS)), text) if piece]
    assert len(stamps) == t and all(len(s) == qwen3_vl.timestamp_tokens() == 17 for s in stamps), stamps[:2]
    ids = _tokens(text, config)
    assert text.count("<|video_pad|>") == vplan.video_tokens and len(ids) == vplan.video_part == vplan.tokens

    # The worst-case row holds the video as the processor writes it: the same layout, the same
    # mm_token_type_ids, the same positions, the same pixel rows.
    length = vplan.tokens + 8
    batch = family_for(config).inputs(config, vplan, 1, length, "cpu")
    row = torch.tensor([[7] + ids + [7] * (length - 1 - len(ids))])
    kinds = (row == config.video_token_id).int() * 2
    assert torch.equal(batch["mm_token_type_ids"], kinds)
    for token in (config.vision_start_token_id, config.video_token_id, config.vision_end_token_id):
        assert torch.equal(batch["input_ids"] == token, row == token)
    assert batch["pixel_values_videos"].shape == pixels[0].shape and torch.equal(batch["video_grid_thw"], grid)
    assert (batch["labels"][0, 1:1 + len(ids)] == -100).all()  # ms-swift masks the video's tokens, timestamps too
    model = Qwen3VLModel(config)
    ours = model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"], video_grid_thw=batch["video_grid_thw"])
    theirs = model.get_rope_index(row, kinds, video_grid_thw=grid)
    assert torch.equal(ours[0], theirs[0])


@pytest.mark.parametrize("factor, max_tokens", [(32, 128), (32, 300), (32, 768), (28, 128), (28, 768)])
def test_the_frame_grid_is_the_most_qwen_vl_utils_smart_resize_makes(factor, max_tokens, vision_process):
    """Over frames of every shape qwen-vl-utils accepts (every size under the minimum up to two
    factors high, where its rounding up overshoots, and a sweep of ordinary sizes), its
    smart_resize makes no frame with more tokens than the frame grid (Qwen3-VL's 32-pixel factor;
    Qwen2-VL's 28), and one with exactly as many. At factor 28 the most is a float tie: a 19 x 2432
    frame scaled up to 128 tokens has both sides a hair above a whole number, 2 x 129."""
    square, low = factor * factor, qwen_resize.VIDEO_MIN_TOKENS * factor * factor
    budget = qwen_resize.frame_budget(2, max_tokens)
    h, w = qwen_resize.frame_grid(2, max_tokens, factor)
    sizes = [(a, b) for a in range(1, 2 * factor + 1) for b in range(a, min(200 * a, low // a) + 1)]
    sizes += [(a, b) for a in range(factor, 50 * factor, 29) for b in range(a, 75 * factor, 31)]
    made = {}
    for a, b in sizes:
        ha, wa = vision_process.smart_resize(a, b, factor, low, budget * square)
        made.setdefault(ha * wa // square, (a, b))
    assert max(made) == h * w
    if h * w <= budget:  # the largest grid under the budget: a frame of that size comes out as it went in
        assert vision_process.smart_resize(factor * h, factor * w, factor, low, budget * square) == (factor * h, factor * w)
    else:  # the upscaled thin frame
        assert (h, w) == ((2, 128) if factor == 32 else (2, 129)) and budget < h * w


def test_more_frames_are_not_always_more_tokens():
    """Past 300 frames the budget over the frames shares 115200 tokens among them, rounded down
    per frame: the worst video of at most N frames can have fewer than N."""
    config = resolve(None, "tiny-qwen3-vl").config
    family = family_for(config)
    at = {n: family.plan(config, Media(images=0, video_frames=n, image_resize=SWIFT)) for n in (300, 302, 768)}
    assert at[300].video_grid == at[302].video_grid == (150, 48, 64)  # 151 x 762 tokens would be fewer than 150 x 768
    assert at[768].video_grid == (384, 30, 40) and at[768].video_tokens == 384 * 300
    tokens = [family.plan(config, Media(images=0, video_frames=n, image_resize=SWIFT)).tokens for n in range(2, 40, 2)]
    assert tokens == sorted(tokens)


def test_refusals_name_the_flag():
    config = resolve(None, "tiny-qwen3-vl").config
    family = family_for(config)
    with pytest.raises(UsageError, match=r"^--video-max-pixels: 100000 is below qwen-vl-utils' per-frame minimum of 131072"):
        family.plan(config, Media(video_frames=4, video_max_pixels=100000))
    from autotune.model.training_setup import plan_inputs
    from autotune.spec import ProbeSpec

    with pytest.raises(UsageError, match=r"^--video-frames: the vision input alone is 552 tokens \(a video of 2 frame pairs x 256 "
                                         r"tokens = 512 tokens at 131072 pixels per frame \+ 40 of timestamps and vision start/end\)"
                                         r".*use --video-frames 2 or fewer.*--max-length 553 or more$"):
        plan_inputs(resolve(None, "tiny-qwen3-vl"), ProbeSpec(model_config="tiny-qwen3-vl", max_length=400, images_per_sample=0,
                                                              video_frames=4, video_max_pixels=131072, image_resize=SWIFT))


def test_the_recipe_env_pins_the_limits_and_check_reads_them_back(tmp_path):
    """ms-swift's variables for the worst case: VIDEO_MAX_PIXELS (its Qwen3-VL loader turns it into
    VIDEO_MAX_TOKEN_NUM), FPS_MAX_FRAMES, and MODEL_SEQ_LEN (qwen-vl-utils' budget over a video's
    frames), in the launch file; `check --swift-args` reads the limits back, and refuses a
    MODEL_SEQ_LEN other than the one the worst case held."""
    from autotune.check import spec_for
    from autotune.cli.check import with_swift_args
    from autotune.emit import swift
    from autotune.model.multimodal import swift_env
    from autotune.model.training_setup import plan_inputs
    from autotune.spec import ProbeSpec
    from launch_recipes import variant

    name = "tiny-qwen3-vl"
    spec = ProbeSpec(model_config=name, max_length=1200, images_per_sample=0, video_frames=4, video_max_pixels=262144,
                     image_resize=SWIFT)
    setup = plan_inputs(resolve(None, name), spec)
    env = swift_env(setup.family, setup.vision, spec)
    assert env == {"MAX_PIXELS": "16777216", "VIDEO_MAX_PIXELS": "262144", "FPS_MAX_FRAMES": "4", "MODEL_SEQ_LEN": "128000"}
    r = variant("base")
    settings = dataclasses.replace(r.settings, freeze_vit=True, freeze_aligner=True, freeze_llm=False, max_length=1200,
                                   video_max_pixels=262144, video_frames=4, max_pixels=None, env=env)
    recipe = dataclasses.replace(r, settings=settings, model=dataclasses.replace(r.model, path=name, max_length=1200),
                                 multimodal={"family": "qwen3-vl", "images_per_sample": 0})
    assert "MODEL_SEQ_LEN=128000 \\" in swift.render_script(recipe, "4.6")
    path = tmp_path / "s.yaml"
    path.write_text(swift.render_yaml(recipe, "4.6").replace("FPS_MAX_FRAMES: '4'", "FPS_MAX_FRAMES: '2'"))
    checked, note = with_swift_args(recipe, str(path), environ={"MODEL_SEQ_LEN": "128000"})
    with pytest.raises(UsageError, match=r"^--swift-args: MODEL_SEQ_LEN=256000"):  # the shell's export wins over the ENV block
        with_swift_args(recipe, str(path), environ={"MODEL_SEQ_LEN": "256000"})  # (ms-swift sets only what the shell has not)
    assert note == f"FPS_MAX_FRAMES=2 ({path} or this shell) replaces the recipe's 4"  # what is checked is the launch's
    assert checked.settings.video_frames == 2 and checked.settings.video_max_pixels == 262144
    assert plan_inputs(resolve(None, name), spec_for(checked, "sim", 2**30, 0.1)).vision.video_grid == (1, 32, 32)
    path.write_text(path.read_text().replace("MODEL_SEQ_LEN: '128000'", "MODEL_SEQ_LEN: '256000'"))
    with pytest.raises(UsageError, match=r"^--swift-args: MODEL_SEQ_LEN=256000 .*set MODEL_SEQ_LEN=128000 or leave it unset"):
        with_swift_args(recipe, str(path), environ={})
    # a 3.x file has no ENV block: the shell's exports count; MODEL_SEQ_LEN unset is qwen-vl-utils' default, the value held
    path.write_text(swift.render_yaml(recipe, "3.12"))
    assert "VIDEO_MAX_PIXELS=262144 FPS_MAX_FRAMES=4" in with_swift_args(recipe, str(path), environ={})[1]
    assert "MODEL_SEQ_LEN" not in with_swift_args(recipe, str(path), environ={})[1]
    with pytest.raises(UsageError, match=r"^--swift-args: MODEL_SEQ_LEN=64000"):
        with_swift_args(recipe, str(path), environ={"MODEL_SEQ_LEN": "64000"})
    # ms-swift's Qwen3-VL docs set qwen-vl-utils' token numbers: they win over the pixel names
    # (its loader fills them from VIDEO_MAX_PIXELS only where unset), and the limit counts as given.
    checked, note = with_swift_args(recipe, str(path), environ={"VIDEO_MAX_TOKEN_NUM": "512", "VIDEO_MAX_PIXELS": "262144",
                                                                "FPS_MAX_FRAMES": "4", "IMAGE_MAX_TOKEN_NUM": "1024"})
    assert checked.settings.video_max_pixels == 512 * 1024 and checked.settings.max_pixels == 1024 * 1024 and note is None


def _brute_processor_frame(frames: int, factor: int, frame_pixels: int, max_pixels: int) -> int:
    """The most tokens transformers' Qwen3-VL video smart_resize makes of any frame of at most
    `frame_pixels` pixels (height <= width; the rule is symmetric) in a `frames`-frame video."""
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

    best = 0
    for h in range(1, math.isqrt(frame_pixels) + 1):
        for w in range(h, min(200 * h, frame_pixels // h) + 1):
            try:
                hb, wb = smart_resize(frames, h, w, 2, factor, qwen_resize.PROCESSOR_VIDEO_MIN_PIXELS, max_pixels)
            except ValueError:  # past the aspect limit: the processor refuses it
                continue
            best = max(best, (hb // factor) * (wb // factor))
    return best


@pytest.mark.parametrize("factor, frame_tokens, video_tokens, frames", [
    (16, 400, 1000, (2, 3, 5, 7)),  # few frames keep their (rounded) size, more are scaled down
    (16, 300, 2400, (3, 7, 8)),
    (32, 250, 600, (2, 3, 4)),  # 3 frames: checked against the budget as 4, scaled as 3
    (32, 24, 40, (2, 5)),  # thin strips, scaled up to one factor high, win
])
def test_the_processor_frame_is_the_most_its_smart_resize_makes(factor, frame_tokens, video_tokens, frames):
    """transformers' Qwen3VLVideoProcessor (what TRL, LLaMA-Factory and a script of the user's own
    resize with) spends one budget over all frames and caps no frame: brute force over every frame
    it accepts under the per-frame bound, against the frame the family counts."""
    square = factor * factor
    for n in frames:
        h, w = qwen_resize.processor_video_frame(n, factor, frame_tokens * square, video_tokens * square)
        assert h * w == _brute_processor_frame(n, factor, frame_tokens * square, video_tokens * square), n


def test_under_the_processor_rule_the_video_is_the_larger_of_the_two():
    """At the published limits (786432 pixels a frame, 25165824 over the video), a few frames keep
    their size, rounded up past it (a 81 x 9709 frame becomes 96 x 9696: 909 tokens, more than
    ms-swift's 768), so the processor's rule is the worst case; at 64 frames its budget gives each
    384 tokens and ms-swift's 768 is. Under ms-swift's rule alone, ms-swift's."""
    config = resolve(None, "tiny-qwen3-vl").config
    family = family_for(config)
    few = family.plan(config, Media(images=0, video_frames=4))
    assert few.video_grid == (2, 3 * 2, 303 * 2) and few.video_tokens == 2 * 909  # in patches: 2 x 2 merged
    assert family.plan(config, Media(images=0, video_frames=4, image_resize=SWIFT)).video_tokens == 2 * 768
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

    assert smart_resize(4, 81, 9709, 2, 32, 4096, qwen_resize.PROCESSOR_VIDEO_MAX_PIXELS) == (96, 9696) and 81 * 9709 <= 786432
    many = family.plan(config, Media(images=0, video_frames=64))
    assert many.video_tokens == family.plan(config, Media(images=0, video_frames=64, image_resize=SWIFT)).video_tokens == 32 * 768
    assert qwen_resize.processor_video_frame(64, 32, 786432) == (4, 96)  # 384 tokens each under the processor's budget
    # an odd count: the processor pads the frames to whole temporal patches
    assert family.plan(config, Media(images=0, video_frames=3)).video_grid[0] == 2


def test_the_rule_is_recorded_and_each_launch_file_says_what_it_assumed():
    """A video-only Qwen3-VL recipe records the rule its video was counted by; `check` rebuilds it
    (an older recipe: ms-swift's, what it counted); the HF Trainer's and TRL's files say the frames
    they hand the processor must be at most video_max_pixels (it caps no frame itself), and a
    recipe counted as ms-swift counts says a processor launch should re-probe."""
    from autotune.check import spec_for
    from autotune.emit import hf, llamafactory, trl
    from autotune.model.multimodal import recipe_settings
    from autotune.model.training_setup import plan_inputs
    from autotune.spec import ProbeSpec
    from launch_recipes import variant

    name = "tiny-qwen3-vl"
    spec = ProbeSpec(model_config=name, max_length=2400, images_per_sample=0, video_frames=4, video_max_pixels=262144)
    setup = plan_inputs(resolve(None, name), spec)
    recorded = recipe_settings(setup, spec, False)
    assert recorded["image_resize"] == "processor" and recorded["video_max_pixels"] == 262144
    r = variant("base")
    settings = dataclasses.replace(r.settings, freeze_vit=True, freeze_aligner=True, freeze_llm=False, max_length=2400,
                                   video_max_pixels=262144, video_frames=4, max_pixels=None, image_resize="processor")
    recipe = dataclasses.replace(r, settings=settings, model=dataclasses.replace(r.model, path=name, max_length=2400),
                                 multimodal={"family": "qwen3-vl", "images_per_sample": 0})
    assert spec_for(recipe, "sim", 2**30, 0.1).image_resize == "processor"
    assert "at most 262144 pixels" in hf.model_settings(recipe)["video_max_pixels"]["how"]
    assert any("at most 262144 pixels" in n for n in trl.notes(recipe)) and "Qwen3VLVideoProcessor" not in llamafactory.render(recipe)
    as_swift = dataclasses.replace(recipe, settings=dataclasses.replace(settings, image_resize=SWIFT))
    assert "Qwen3VLVideoProcessor" in hf.model_settings(as_swift)["image_resize"]["how"]
    assert "images were counted" not in hf.model_settings(as_swift)["image_resize"]["how"]  # no images here
    assert hf.model_settings(as_swift)["video_max_pixels"] == 262144
    older = dataclasses.replace(recipe, settings=dataclasses.replace(settings, image_resize=None))
    assert spec_for(older, "sim", 2**30, 0.1).image_resize == SWIFT
