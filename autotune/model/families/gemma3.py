"""Gemma 3 (vision): a SigLIP tower at one fixed resolution (896x896 for the published models)
whose patch features are average-pooled to `mm_tokens_per_image` tokens (256), then an RMS norm
and a linear projection into the language model.

The processor (models/gemma3/processing_gemma3.py) resizes every image to the tower's size and
writes "\\n\\n<start_of_image>" + 256 image tokens + "<end_of_image>\\n\\n" for it, so an image is
`mm_tokens_per_image` tokens plus two wrappers. Pan-and-scan (extra crops of a long image) is off
by default in the processor and in ms-swift's template; it is not modelled. `--max-pixels` is
refused: there is no pixel limit, every image is the same size.

Inputs, as transformers 5.x's Gemma3Model reads them (models/gemma3/modeling_gemma3.py):
`pixel_values` (images, 3, image_size, image_size), exactly that many `image_token_id`
placeholders, and `token_type_ids` marking them 1 (the image tokens attend to each other
both ways, as in training).
"""

from __future__ import annotations

import torch

from ...errors import UsageError
from .base import Family, Media, VisionPlan, text_ids


def plan(config, media: Media) -> VisionPlan:
    size = config.vision_config.image_size
    if media.max_pixels is not None:
        raise UsageError("--max-pixels", f"Gemma 3 resizes every image to {size}x{size} ({config.mm_tokens_per_image} tokens); "
                                         "a pixel limit does not apply", "leave --max-pixels out, and set --images-per-sample")
    if media.video_frames:
        raise UsageError("--video-frames", "Gemma 3 takes no video", "leave --video-frames out")
    return VisionPlan(image_tokens=config.mm_tokens_per_image, images=media.images, extra_tokens=2,  # <start_of_image> ... <end_of_image>
                      image_grid=(size, size), max_pixels=size * size)


def image_tokens_for_size(config, width: int, height: int, max_pixels: int | None = None) -> int:
    return config.mm_tokens_per_image


def inputs(config, vplan: VisionPlan, batch_size: int, max_length: int, device) -> dict:
    """Every sample exactly max_length tokens: one text token, then each image wrapped in
    <start_of_image> / <end_of_image>, then text. Labels ignore the image tokens."""
    image, boi, eoi = config.image_token_id, config.boi_token_id, config.eoi_token_id
    ids = text_ids(config, batch_size, max_length, device, (image, boi, eoi))
    kinds = torch.zeros_like(ids)
    pos, n = 1, vplan.image_tokens
    for _ in range(vplan.images):
        ids[:, pos], ids[:, pos + 1 + n] = boi, eoi
        ids[:, pos + 1:pos + 1 + n] = image
        kinds[:, pos + 1:pos + 1 + n] = 1
        pos += n + 2
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.masked_fill(kinds == 1, -100),
             "token_type_ids": kinds}
    if vplan.images:
        vision, (height, width) = config.vision_config, vplan.image_grid
        batch["pixel_values"] = torch.randn(batch_size * vplan.images, vision.num_channels, height, width, device=device)
    return batch


FAMILY = Family(
    name="gemma3", model_types=("gemma3",), model_class="Gemma3ForConditionalGeneration",
    vision_tower=("model.vision_tower",), aligner=("model.multi_modal_projector",),
    language_model=("model.language_model", "lm_head"), plan=plan, inputs=inputs,
    image_tokens_for_size=image_tokens_for_size,
)
