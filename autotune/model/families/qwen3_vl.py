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
  (`qwen_resize.upscaled_worst`); square ones 144.
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

A launch that resizes with transformers' processor (`--image-resize processor`: a script of the
user's own, TRL, LLaMA-Factory, which hand the frames to `Qwen3VLVideoProcessor` with its resize
on) gets a different rule: one budget (`size["longest_edge"]`, 25165824 pixels in the published
video_preprocessor_config.json) over all frames of a video and no per-frame cap
(`cap_pixels_per_frame` unset), so a few frames keep their own size, rounded (up past a half
factor: 909 tokens from a frame of 786432 pixels, 81 x 9709), and many are scaled down to their
share (a thin strip clamped to one factor high past it). `--video-max-pixels` then bounds the
frames the processor is given (LLaMA-Factory's `video_max_pixels` resize, or the videos' own
size). Under that rule the worst case is the larger of the two, since the same recipe may also
be launched with ms-swift (`qwen_resize.processor_worst_video`).
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from ...errors import UsageError
from ...spec import PROCESSOR
from .base import Media, VisionPlan
from .qwen2_vl import Limits, _factor, _patches, family, plan
from .qwen2_vl import inputs as qwen2_vl_inputs
from .qwen_resize import VIDEO_MIN_TOKENS, processor_worst_video, worst_video

LIMITS = Limits(min_pixels=65536, default_max_pixels=16777216, default_video_max_pixels=768 * 32 * 32)

LONGEST_VIDEO_SECONDS = 86400.0  # the timestamps are counted as wide as a day-long video's


def plan_media(config, media: Media, limits: Limits = LIMITS) -> VisionPlan:
    vplan = plan(config, dataclasses.replace(media, video_frames=0), limits)
    if not media.video_frames:
        return vplan
    vision = config.vision_config
    factor, merge = _factor(vision), vision.spatial_merge_size
    per_frame_cap = media.video_max_pixels or limits.default_video_max_pixels
    smallest = media.video_min_pixels or VIDEO_MIN_TOKENS * factor * factor
    if per_frame_cap < smallest:
        raise UsageError("--video-max-pixels", f"{per_frame_cap} is below qwen-vl-utils' per-frame minimum of {smallest} pixels "
                                               f"({smallest // (factor * factor)} tokens of {factor}x{factor}): every frame gets at least that",
                         f"use --video-max-pixels {smallest} or more")
    per_patch = 2 + timestamp_tokens()
    frames, (h, w) = worst_video(media.video_frames, per_frame_cap // (factor * factor), factor, per_patch=per_patch,
                                 min_tokens=-(-smallest // (factor * factor)))
    patches = frames // vision.temporal_patch_size
    if media.image_resize == PROCESSOR:  # the processor's rule can make more: the larger is the worst case
        hf_patches, (hh, hw) = processor_worst_video(media.video_frames, factor, per_frame_cap, per_patch=per_patch)
        if hf_patches * (hh * hw + per_patch) > patches * (h * w + per_patch):
            patches, h, w = hf_patches, hh, hw
    return dataclasses.replace(
        vplan, videos=1, video_tokens=patches * h * w, video_grid=(patches, h * merge, w * merge),
        video_extra_tokens=2 + patches * (2 + timestamp_tokens()),  # the video's start/end; per patch its time and start/end
        video_max_pixels=per_frame_cap, video_step=vision.temporal_patch_size, video_min_pixels=media.video_min_pixels)


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


FAMILY = family("qwen3-vl", "qwen3_vl", "Qwen3VLForConditionalGeneration", limits=LIMITS, plan_rule=plan_media,
                inputs_rule=inputs, aligner=("model.visual.merger", "model.visual.deepstack_merger_list"))
