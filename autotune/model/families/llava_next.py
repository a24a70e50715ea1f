"""LLaVA-NeXT (LLaVA-1.6): LLaVA's CLIP tower and MLP projector, with "anyres" tiling. The
processor picks one of `image_grid_pinpoints` (height, width) for each image, cuts the image
resized to it into tiles of the tower's `image_size`, and adds one base tile of the whole image.
The language model sees the base tile's features, then the tiles' features with the padding rows
or columns removed (`unpad_image`) and one `image_newline` token at the end of every row.

Worst case: an image whose size is the pinpoint with the most tokens (for LLaVA-1.6: 672x672, 5
tiles, 2928 tokens). An image exactly at a pinpoint selects that pinpoint and loses nothing to
unpadding; any other image selects a pinpoint of no more area and unpads some of it away.
`--max-pixels` is refused: the processor has no pixel limit (every image is resized to a pinpoint
of its own choosing); to lower the worst case, edit `image_grid_pinpoints` in the config.

Inputs, as transformers 5.23's LlavaNextModel reads them (models/llava_next/modeling_llava_next.py):
`pixel_values` (images, tiles, 3, image_size, image_size), `image_sizes` (images, 2) rows
[height, width] of the original images, and exactly that many `image_token_id` placeholders.
"""

from __future__ import annotations

import torch

from ...errors import UsageError
from .base import Family, Media, VisionPlan, text_ids


def image_tokens_for_size(config, width: int, height: int, max_pixels: int | None = None) -> int:
    """Tokens one image of this size becomes, by the model's own helpers (pack_image_features)."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

    vision = config.vision_config
    side = vision.image_size // vision.patch_size  # features per tile side
    rows, cols = get_anyres_image_grid_shape((height, width), config.image_grid_pinpoints, vision.image_size)
    # pack_image_features unpads the (rows*side) x (cols*side) feature map; only its shape matters.
    unpadded = unpad_image(torch.empty(0, rows * side, cols * side), (height, width))
    h, w = unpadded.shape[1:]
    base = side * side  # the base tile; "full" would keep CLS, which pack_image_features cannot tile
    return base + h * (w + 1)  # one image_newline per row


def _worst_pinpoint(config) -> tuple[int, int]:
    return max((tuple(p) for p in config.image_grid_pinpoints),
               key=lambda p: (image_tokens_for_size(config, p[1], p[0]), p[0] * p[1]))


def plan(config, media: Media) -> VisionPlan:
    if media.max_pixels is not None:
        raise UsageError("--max-pixels", "LLaVA-NeXT resizes every image to one of its image_grid_pinpoints; a pixel limit does not apply",
                         "leave --max-pixels out (the worst case is the largest pinpoint), or edit image_grid_pinpoints in config.json")
    if config.vision_feature_select_strategy != "default":
        raise UsageError("--model-config", "LLaVA-NeXT tiles only with vision_feature_select_strategy \"default\"",
                         "set vision_feature_select_strategy to \"default\" in config.json")
    height, width = _worst_pinpoint(config)
    return VisionPlan(image_tokens=image_tokens_for_size(config, width, height), images=media.images,
                      image_grid=(height, width), max_pixels=height * width)


def inputs(config, vplan: VisionPlan, batch_size: int, max_length: int, device) -> dict:
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    ids = text_ids(config, batch_size, max_length, device, (config.image_token_id,))
    ids[:, 1:1 + vplan.image_tokens * vplan.images] = config.image_token_id
    labels = ids.masked_fill(ids == config.image_token_id, -100)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    if vplan.images:
        vision, n = config.vision_config, batch_size * vplan.images
        tiles = image_size_to_num_patches(list(vplan.image_grid), config.image_grid_pinpoints, vision.image_size)
        batch["pixel_values"] = torch.randn(n, tiles, vision.num_channels, vision.image_size, vision.image_size, device=device)
        batch["image_sizes"] = torch.tensor([vplan.image_grid] * n, device=device)
    return batch


FAMILY = Family(
    name="llava-next", model_types=("llava_next",), model_class="LlavaNextForConditionalGeneration",
    # image_newline is a learned embedding the projector path appends; it trains and freezes with the aligner.
    vision_tower=("model.vision_tower",), aligner=("model.multi_modal_projector", "model.image_newline"),
    language_model=("model.language_model", "lm_head"), plan=plan, inputs=inputs,
    image_tokens_for_size=image_tokens_for_size,
)
