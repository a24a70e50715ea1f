"""Qwen3-VL: Qwen2-VL's input rules (the same `Qwen2VLImageProcessor` and smart_resize, the same
`pixel_values` patch rows, `image_grid_thw` and `mm_token_type_ids`) with 16-pixel patches, so
one language-model token covers 32x32 pixels, and DeepStack: mergers that feed features of
intermediate ViT layers into the first LM layers. They project vision features to the LM as the
merger does, so they freeze and train with the aligner.

Limits: the published preprocessor_config.json of Qwen3-VL (size {"shortest_edge": 65536,
"longest_edge": 16777216}): at least 256x256 pixels (64 tokens), at most 16384 tokens per image.

Video is refused for now: Qwen3-VL's video processor spends one pixel budget over all frames and
its processor puts a timestamp and a vision start/end around every temporal patch, which the
shared Qwen2-VL video rule does not model.
"""

from __future__ import annotations

from ...errors import UsageError
from .base import Media, VisionPlan
from .qwen2_vl import Limits, family, plan

LIMITS = Limits(min_pixels=65536, default_max_pixels=16777216, default_video_max_pixels=768 * 32 * 32)


def plan_images(config, media: Media, limits: Limits = LIMITS) -> VisionPlan:
    if media.video_frames:
        raise UsageError("--video-frames", "Qwen3-VL video (a timestamp and vision start/end per temporal patch, one pixel "
                                           "budget over all frames) is not modelled yet", "probe images only: leave --video-frames out")
    return plan(config, media, limits)


FAMILY = family("qwen3-vl", "qwen3_vl", "Qwen3VLForConditionalGeneration", limits=LIMITS, plan_rule=plan_images,
                aligner=("model.visual.merger", "model.visual.deepstack_merger_list"))
