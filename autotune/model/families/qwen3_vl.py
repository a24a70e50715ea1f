"""Qwen3-VL: Qwen2-VL's image rules (the same `Qwen2VLImageProcessor` and smart_resize, the same
`pixel_values` patch rows, `image_grid_thw` and `mm_token_type_ids`) with 16-pixel patches, so
one language-model token covers 32x32 pixels, and DeepStack: mergers that feed features of
intermediate ViT layers into the first LM layers. They project vision features to the LM as the
merger does, so they freeze and train with the aligner.

Image limits: the published preprocessor_config.json of Qwen3-VL (size {"shortest_edge": 65536,
"longest_edge": 16777216}): at least 256x256 pixels (64 tokens), at most 16384 tokens per image.

Video (`--video-frames N`), as ms-swift 4.6 builds it (the launch target): its Qwen3-VL loader
requires qwen-vl-utils >= 0.0.14 and maps VIDEO_MAX_PIXELS to qwen-vl-utils' VIDEO_MAX_TOKEN_NUM
(// 32^2, `compat_qwen_vl_utils`); its template reads each video with qwen-vl-utils' `fetch_video`
and hands the frames to the processor with `do_resize=False, do_sample_frames=False`, so
qwen-vl-utils alone decides the frames and their size:
- frames: `smart_nframes` samples at 2 fps, at most FPS_MAX_FRAMES, rounded down to a multiple
  of 2 (a list of images: its length rounded up to 2); the processor pairs them into temporal
  patches of 2.
- size: every frame alike, by qwen-vl-utils' 2-D `smart_resize` between VIDEO_MIN_TOKEN_NUM
  (128) tokens and a per-frame budget of max(min(VIDEO_MAX_TOKEN_NUM tokens, MODEL_SEQ_LEN x 0.9
  tokens / frames x 2), 1.05 x 128 tokens) (MODEL_SEQ_LEN: 128000 unless exported). So past
  300 frames at 768 tokens per frame the budget shrinks with the frame count, and the worst
  video is the one of N frames or fewer whose frames x tokens per frame is the most.
  A frame smaller than the minimum is scaled up with both sides rounded up, which can overshoot
  the budget: a frame thinner than about 1:126 becomes 2 x 128 merged patches, 256 tokens
  (`_upscaled_worst`); square ones 144.
- text: transformers' `Qwen3VLProcessor.replace_video_token` writes each temporal patch as
  `<{t:.1f} seconds>` (the mean time of its two frames, from the video's fps and frame indices)
  + <|vision_start|> + the patch's tokens + <|vision_end|>; it replaces the template's
  <|video_pad|> only, so the template's own <|vision_start|> ... <|vision_end|> stay around the
  whole video (ms-swift splices the processor's output for the video in whole). The timestamps'
  length depends on the video's length, not on the frames (a long video still gives N frames):
  counted here as the widest a video of up to a day has, "<86400.0 seconds>", one token per
  character (a byte-level BPE tokenizer such as Qwen's never makes more tokens than bytes).
- mm_token_type_ids: 2 on the video's placeholders only; `get_rope_index` splits the grid into
  frames, each between text tokens, so positions follow that layout.

An HF-processor user (no qwen-vl-utils: `Qwen3VLVideoProcessor` samples and resizes) gets a
different rule: one budget (`size["longest_edge"]`, 25165824 pixels in the published
video_preprocessor_config.json) over all frames of a video, per frame too unless
`cap_pixels_per_frame`. It allows more tokens per frame than ms-swift's for a few frames and far
fewer for many; the worst case here is ms-swift's.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch

from ...errors import UsageError
from .base import Media, VisionPlan
from .qwen2_vl import MAX_ASPECT, Limits, _factor, _patches, family, plan, worst_grid
from .qwen2_vl import inputs as qwen2_vl_inputs

LIMITS = Limits(min_pixels=65536, default_max_pixels=16777216, default_video_max_pixels=768 * 32 * 32)

# qwen-vl-utils 0.0.14 (vision_process.py), as ms-swift leaves it unless the variables are exported.
VIDEO_MIN_TOKENS = 128  # VIDEO_MIN_TOKEN_NUM
MODEL_SEQ_LEN = 128000  # its budget over a whole video: MODEL_SEQ_LEN x 0.9 tokens
FRAME_FACTOR = 2  # frames come in multiples of 2
LONGEST_VIDEO_SECONDS = 86400.0  # the timestamps are counted as wide as a day-long video's


def plan_media(config, media: Media, limits: Limits = LIMITS) -> VisionPlan:
    vplan = plan(config, dataclasses.replace(media, video_frames=0), limits)
    if not media.video_frames:
        return vplan
    vision = config.vision_config
    factor, merge = _factor(vision), vision.spatial_merge_size
    per_frame_cap = media.video_max_pixels or limits.default_video_max_pixels
    smallest = VIDEO_MIN_TOKENS * factor * factor
    if per_frame_cap < smallest:
        raise UsageError("--video-max-pixels", f"{per_frame_cap} is below qwen-vl-utils' per-frame minimum of {smallest} pixels "
                                               f"({VIDEO_MIN_TOKENS} tokens of {factor}x{factor}): every frame gets at least that",
                         f"use --video-max-pixels {smallest} or more")
    frames, (h, w) = worst_video(media.video_frames, per_frame_cap // (factor * factor))
    patches = frames // vision.temporal_patch_size
    return dataclasses.replace(
        vplan, videos=1, video_tokens=patches * h * w, video_grid=(patches, h * merge, w * merge),
        video_extra_tokens=2 + patches * (2 + timestamp_tokens()),  # the video's start/end; per patch its time and start/end
        video_max_pixels=per_frame_cap, video_step=vision.temporal_patch_size)


def frame_budget(frames: int, max_tokens: int) -> float:
    """qwen-vl-utils' `fetch_video`: the most tokens one frame of a `frames`-frame video may
    have (its max_pixels / factor^2)."""
    total = MODEL_SEQ_LEN * 0.9
    return max(min(max_tokens, total / frames * FRAME_FACTOR), int(VIDEO_MIN_TOKENS * 1.05))


def frame_grid(frames: int, max_tokens: int) -> tuple[int, int]:
    """(height, width) in merged patches of the frame with the most tokens qwen-vl-utils'
    smart_resize can make in a `frames`-frame video: the largest grid under the budget (a fixed
    point of the resize), or an upscaled small frame when that overshoots it."""
    grid = worst_grid(int(frame_budget(frames, max_tokens)), 1)  # in tokens: a factor of 1
    upscaled = _upscaled_worst(VIDEO_MIN_TOKENS)
    return upscaled if upscaled[0] * upscaled[1] > grid[0] * grid[1] else grid


@functools.lru_cache(maxsize=8)
def _upscaled_worst(min_tokens: int) -> tuple[int, int]:
    """The most merged patches smart_resize's upscaling branch makes (a frame below the minimum:
    beta = sqrt(min / (h * w)), both sides times beta, rounded *up* to the factor). In patch units
    the sides become ceil(A) x ceil(B) with A * B = min_tokens and B / A = the aspect ratio
    (<= MAX_ASPECT), so the most is where A lies just above a whole number p - 1 (or at the
    steepest aspect): p x ceil(min_tokens / (p - 1)). Checked against qwen-vl-utils' own
    smart_resize over thin and small frames (tests/test_qwen3_vl_video.py)."""
    low, high = math.sqrt(min_tokens / MAX_ASPECT), math.sqrt(min_tokens)
    best = (0, 0)
    for p in range(max(1, math.ceil(low)), math.ceil(high) + 1):
        if p - 1 >= low:  # A just above p - 1: B just below min_tokens / (p - 1)
            q = math.ceil(min_tokens / (p - 1))
        else:  # A at its smallest, the steepest aspect
            q = math.ceil(min_tokens / low)
        if p * q > best[0] * best[1]:
            best = (p, q)
    return best


def worst_video(frames: int, max_tokens: int) -> tuple[int, tuple[int, int]]:
    """(frames, frame grid) of the video of at most `frames` frames (a whole number of temporal
    patches) with the most placeholder and timestamp tokens."""
    most = FRAME_FACTOR * math.ceil(frames / FRAME_FACTOR)  # a list of images is padded up to the factor

    def tokens(n: int) -> int:
        h, w = frame_grid(n, max_tokens)
        return (n // FRAME_FACTOR) * (h * w + 2 + timestamp_tokens())

    best = max(range(FRAME_FACTOR, most + 1, FRAME_FACTOR), key=lambda n: (tokens(n), n))
    return best, frame_grid(best, max_tokens)


@functools.lru_cache(maxsize=1)
def timestamp_tokens() -> int:
    """Characters of the widest timestamp the processor writes for a video up to a day long (one
    temporal patch at LONGEST_VIDEO_SECONDS), by `Qwen3VLProcessor.replace_video_token` itself."""
    from types import SimpleNamespace

    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.video_utils import VideoMetadata

    specials = ("<|vision_start|>", "<|video_pad|>", "<|vision_end|>")
    processor = SimpleNamespace(video_processor=SimpleNamespace(merge_size=1, temporal_patch_size=2),
                                vision_start_token=specials[0], video_token=specials[1], vision_end_token=specials[2])
    processor._calculate_timestamps = Qwen3VLProcessor._calculate_timestamps.__get__(processor)
    seconds = int(LONGEST_VIDEO_SECONDS)
    metadata = VideoMetadata(total_num_frames=seconds + 1, fps=1.0, frames_indices=[seconds, seconds])
    text = Qwen3VLProcessor.replace_video_token(processor, {"video_grid_thw": torch.tensor([[1, 1, 1]]), "video_metadata": [metadata]}, 0)
    for special in specials:
        text = text.replace(special, "")
    return len(text.encode())


def inputs(config, vplan: VisionPlan, batch_size: int, max_length: int, device) -> dict:
    """Qwen2-VL's worst-case batch for the images; the video after them as the processor writes
    it: <|vision_start|>, per temporal patch its timestamp (text), <|vision_start|>, the patch's
    placeholders, <|vision_end|>, then <|vision_end|>. ms-swift masks all of it in the labels."""
    batch = qwen2_vl_inputs(config, dataclasses.replace(vplan, videos=0), batch_size, max_length, device)
    if not vplan.videos:
        return batch
    ids, kinds, labels = batch["input_ids"], batch["mm_token_type_ids"], batch["labels"]
    patches = vplan.video_grid[0]
    per_patch = vplan.video_tokens // patches
    pos = 1 + vplan.image_part
    for _ in range(vplan.videos):
        labels[:, pos:pos + vplan.video_tokens + vplan.video_wrap] = -100
        ids[:, pos] = config.vision_start_token_id
        pos += 1
        for _ in range(patches):
            pos += timestamp_tokens()  # the timestamp: text tokens the placeholders must not be
            ids[:, pos] = config.vision_start_token_id
            ids[:, pos + 1:pos + 1 + per_patch] = config.video_token_id
            kinds[:, pos + 1:pos + 1 + per_patch] = 2
            ids[:, pos + 1 + per_patch] = config.vision_end_token_id
            pos += per_patch + 2
        ids[:, pos] = config.vision_end_token_id
        pos += 1
    n = batch_size * vplan.videos
    batch["pixel_values_videos"] = _patches(config.vision_config, vplan.video_grid, n, device)
    batch["video_grid_thw"] = torch.tensor([vplan.video_grid] * n, device=device)
    return batch


def swift_env(vplan: VisionPlan) -> dict:
    """qwen-vl-utils reads MODEL_SEQ_LEN for its budget over a video's frames: held at the value
    the worst case assumed."""
    return {"MODEL_SEQ_LEN": str(MODEL_SEQ_LEN)} if vplan.videos else {}


FAMILY = family("qwen3-vl", "qwen3_vl", "Qwen3VLForConditionalGeneration", limits=LIMITS, plan_rule=plan_media,
                inputs_rule=inputs, swift_env=swift_env, aligner=("model.visual.merger", "model.visual.deepstack_merger_list"))
