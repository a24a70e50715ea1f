"""Qwen2.5-Omni's thinker (`qwen2_5_omni_thinker`, the part ms-swift fine-tunes and a benchmark
runs): Qwen2.5-VL's vision input rules (the same smart_resize, 14-pixel patches merged 2x2,
frames paired by a temporal patch of 2, the same processor counts: grid / merge^2 tokens
between <|vision_bos|> and <|vision_eos|>), a Whisper-style audio tower, and a Qwen2 language
model with M-RoPE positions found from the vision-start tokens.

Video positions advance by `video_second_per_grid` x position_id_per_seconds per temporal
patch; the processor sets temporal_patch_size / fps = 2 / 2.0 = 1 second (its hard-coded
default fps). Audio is not modelled yet: a video's sound track (use_audio_in_video) and audio
clips add audio-tower work and their own tokens; the worst case here is images and video only.

Module split (ms-swift's model_arch for qwen2_5_omni, without the `thinker.` prefix): towers
`model.visual`, `model.audio_tower`; aligners `model.visual.merger`, `model.audio_tower.proj`;
language model `model.language_model`, `lm_head`.
"""

from __future__ import annotations

from functools import partial

import torch

from .base import Family
from .qwen2_vl import QWEN2_VL, _factor, image_tokens_for_size, plan
from .qwen2_vl import inputs as qwen2_vl_inputs

SECONDS_PER_GRID = 1.0  # temporal_patch_size 2 / the processor's default fps 2.0


def inputs(config, vplan, batch_size: int, max_length: int, device) -> dict:
    """Qwen2-VL's worst-case batch; the thinker finds positions from the vision-start tokens
    (no mm_token_type_ids) and needs each video's seconds per temporal patch."""
    # Text that happened to hold an audio-start id would make the model look for an audio clip.
    audio = tuple(getattr(config, name) for name in ("audio_token_id", "audio_start_token_id", "audio_end_token_id")
                  if getattr(config, name, None) is not None)
    batch = qwen2_vl_inputs(config, vplan, batch_size, max_length, device, avoid=audio)
    batch.pop("mm_token_type_ids")
    if vplan.videos:
        batch["video_second_per_grid"] = torch.full((batch_size * vplan.videos,), SECONDS_PER_GRID, device=device)
    return batch


FAMILY = Family(
    name="qwen2.5-omni", model_types=("qwen2_5_omni_thinker",), model_class="Qwen2_5OmniThinkerForConditionalGeneration",
    vision_tower=("model.visual", "model.audio_tower"), aligner=("model.visual.merger", "model.audio_tower.proj"),
    language_model=("model.language_model", "lm_head"),
    plan=partial(plan, limits=QWEN2_VL), inputs=inputs, default_max_pixels=QWEN2_VL.default_max_pixels,
    default_video_max_pixels=QWEN2_VL.default_video_max_pixels, supports_video=True,
    image_tokens_for_size=partial(image_tokens_for_size, limits=QWEN2_VL),
    pixels_per_token=lambda config: _factor(config.vision_config) ** 2, min_pixels=QWEN2_VL.min_pixels,
)
