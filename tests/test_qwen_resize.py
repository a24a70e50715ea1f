"""The Qwen-VL resize rules (autotune/model/families/qwen_resize.py) against the libraries' own
code by brute force: transformers' smart_resize (the image and video processors) over every
image size where its clamp or rounding can overshoot and a sweep of ordinary ones, and the
Qwen2-VL video worst case against qwen-vl-utils' `fetch_video` (what ms-swift reads a video with)
and transformers' Qwen2-VL video processor rule."""

import pytest

from autotune.model.families import Media, family_for, qwen_resize
from autotune.model.source import resolve


def _brute_force(factor: int, min_pixels: int, max_pixels: int) -> int:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    sizes = [(a, b) for a in range(1, 2 * factor + 1) for b in range(a, 200 * a + 1)]  # thin: clamps and rounding up
    sizes += [(a, b) for a in range(2 * factor, 40 * factor, 7) for b in range(a, min(200 * a, 60 * factor), 5)]
    most = 0
    for a, b in sizes:
        h, w = smart_resize(a, b, factor, min_pixels, max_pixels)
        most = max(most, (h // factor) * (w // factor))
    return most


@pytest.mark.parametrize("factor, min_pixels, max_tokens", [
    (28, 3136, 16), (28, 3136, 64), (28, 3136, 128), (28, 3136, 256),  # Qwen2-VL's image processor
    (32, 65536, 64), (32, 65536, 160),  # Qwen3-VL's (its minimum is 64 tokens)
    (28, 100352, 64), (28, 100352, 768),  # Qwen2-VL's video processor (128 tokens at least)
])
def test_processor_worst_is_the_most_transformers_smart_resize_makes(factor, min_pixels, max_tokens):
    """The worst image is a real one (the rule makes its size of its source) and no image of any
    size gets more tokens. Below about 200 tokens it is a thin strip, not the largest grid under
    the maximum: 113 tokens where 64 were asked for."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    worst = qwen_resize.processor_worst(factor, min_pixels, max_tokens * factor * factor)
    assert smart_resize(*worst.source, factor, min_pixels, max_tokens * factor * factor) == worst.size
    assert worst.tokens(factor) == _brute_force(factor, min_pixels, max_tokens * factor * factor)
    if (factor, min_pixels, max_tokens) == (28, 3136, 64):
        assert worst.tokens(factor) == 113 and worst.grid(factor) == (1, 113)
    if max_tokens >= 256:
        assert worst.tokens(factor) == max_tokens and worst.source == worst.size  # the largest grid, a fixed point


def test_a_qwen2_vl_video_is_counted_as_the_launch_that_makes_it_largest(vision_process, tmp_path, monkeypatch):
    """ms-swift's example VIDEO_MAX_PIXELS=50176 (64 tokens per frame): qwen-vl-utils raises every
    frame's budget to 1.05 x its minimum of 128 tokens, so a 480 x 640 frame gets 130 tokens, and a
    thin one it scales up to the minimum 258; the plan counts 258, which qwen-vl-utils' own
    fetch_video makes of a 19 x 2432 video. With --video-min-pixels 12544 (ms-swift's
    VIDEO_MIN_PIXELS) the floor drops, and transformers' video processor's thin frame (113 tokens,
    its short side clamped) is then the larger."""
    from qwen_vl_utils_stand_ins import VIDEOS

    config = resolve(None, "tiny-qwen2-vl").config
    family = family_for(config)
    vplan = family.plan(config, Media(images=0, video_frames=4, video_max_pixels=50176))
    t, h, w = vplan.video_grid
    assert (t, h // 2, w // 2) == (2, 2, 129) and vplan.video_tokens == 2 * 258

    def fetched(height: int, width: int, video_min_pixels: int | None = None) -> int:
        """What ms-swift's Qwen2-VL path makes of a 4-frame video of that size: VIDEO_MAX_PIXELS (and
        VIDEO_MIN_PIXELS) become qwen-vl-utils' token numbers (its `compat_qwen_vl_utils(14)`)."""
        VIDEOS[f"{height}x{width}"] = (4, 2.0, height, width)
        path = tmp_path / f"{height}x{width}.mp4"
        path.write_text(f"{height}x{width}")
        monkeypatch.setattr(vision_process, "VIDEO_MAX_TOKEN_NUM", 50176 // 784)
        if video_min_pixels:
            monkeypatch.setattr(vision_process, "VIDEO_MIN_TOKEN_NUM", video_min_pixels // 784)
        video, _ = vision_process.fetch_video({"video": str(path)}, return_video_sample_fps=True)
        return (video.shape[2] // 28) * (video.shape[3] // 28)

    assert fetched(480, 640) == 130 < fetched(19, 2432) == 258  # 10 x 13, and the thin one: not the 64 that 50176 pixels suggest
    smaller = family.plan(config, Media(images=0, video_frames=4, video_max_pixels=50176, video_min_pixels=12544))
    assert fetched(480, 640, video_min_pixels=12544) == 54 and smaller.video_tokens // 2 == 113  # the processor's thin frame
    assert smaller.video_tokens // 2 == max(qwen_resize.processor_worst(28, 12544, 50176).tokens(28),
                                            qwen_resize.upscaled_worst(28, 12544)[0] * qwen_resize.upscaled_worst(28, 12544)[1])


def test_video_min_pixels_reaches_the_launch_files_and_the_check_reads_it_back():
    from autotune.cli import build_parser
    from autotune.cli.probe import spec_from_args
    from autotune.emit import swift_read
    from autotune.model.multimodal import recipe_settings, swift_env
    from autotune.model.training_setup import plan_inputs

    argv = ["probe", "--model-config", "tiny-qwen2-vl", "--max-length", "600", "--images-per-sample", "0", "--video-frames", "4",
            "--video-max-pixels", "50176", "--video-min-pixels", "12544"]
    spec = spec_from_args(build_parser().parse_args(argv))
    setup = plan_inputs(resolve(None, "tiny-qwen2-vl"), spec)
    assert setup.vision.video_tokens == 2 * 113
    assert swift_env(setup.family, setup.vision, spec)["VIDEO_MIN_PIXELS"] == "12544"
    assert recipe_settings(setup, spec, False)["video_min_pixels"] == 12544
    back, _ = swift_read.settings_from_args({"ENV": {"VIDEO_MIN_PIXELS": "25088"}}, {})
    assert back["video_min_pixels"] == 25088
    unset = spec_from_args(build_parser().parse_args(argv[:-2]))
    assert "VIDEO_MIN_PIXELS" not in swift_env(setup.family, plan_inputs(resolve(None, "tiny-qwen2-vl"), unset).vision, unset)
