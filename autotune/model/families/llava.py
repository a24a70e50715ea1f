"""LLaVA-1.5: a CLIP tower at one fixed resolution (336x336 for LLaVA-1.5-7B) and a two-layer MLP
projector. Every image becomes (image_size / patch_size)^2 tokens (576), one more with
vision_feature_select_strategy "full" (the CLS token is kept).

Inputs, as transformers 5.23's LlavaModel reads them (models/llava/modeling_llava.py):
`pixel_values` (images, 3, image_size, image_size) and exactly that many `image_token_id`
placeholders in `input_ids`.
"""

from __future__ import annotations

import torch

from ...errors import UsageError
from .base import Family, Media, VisionPlan, text_ids


def _tokens(config) -> int:
    vision = config.vision_config
    tokens = (vision.image_size // vision.patch_size) ** 2
    return tokens + 1 if config.vision_feature_select_strategy == "full" else tokens


def plan(config, media: Media) -> VisionPlan:
    size = config.vision_config.image_size
    if media.max_pixels is not None:
        raise UsageError("--max-pixels", f"LLaVA resizes every image to {size}x{size} ({_tokens(config)} tokens); a pixel limit does not apply",
                         "leave --max-pixels out for LLaVA models, and set --images-per-sample")
    if media.video_frames:
        raise UsageError("--video-frames", "LLaVA-1.5 takes no video", "leave --video-frames out for LLaVA models")
    return VisionPlan(image_tokens=_tokens(config), images=media.images, image_grid=(size, size), max_pixels=size * size)


def image_tokens_for_size(config, width: int, height: int, max_pixels: int) -> int:
    return _tokens(config)


def inputs(config, vplan: VisionPlan, batch_size: int, max_length: int, device) -> dict:
    ids = text_ids(config, batch_size, max_length, device, (config.image_token_id,))
    n = vplan.image_tokens * vplan.images
    ids[:, 1:1 + n] = config.image_token_id
    labels = ids.masked_fill(ids == config.image_token_id, -100)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    if vplan.images:
        height, width = vplan.image_grid
        batch["pixel_values"] = torch.randn(batch_size * vplan.images, config.vision_config.num_channels, height, width, device=device)
    return batch


FAMILY = Family(
    name="llava", model_types=("llava",), model_class="LlavaForConditionalGeneration",
    vision_tower=("model.vision_tower",), aligner=("model.multi_modal_projector",),
    language_model=("model.language_model", "lm_head"), plan=plan, inputs=inputs,
    image_tokens_for_size=image_tokens_for_size,
)
