"""InternVL (transformers' own `internvl`: InternVL3 / InternVL2.5 "-hf" checkpoints): an
InternViT tower at 448x448, pixel shuffle (downsample_ratio 0.5: 1024 patches -> 256 tokens) and
an MLP projector into a Qwen2 / Llama language model.

The processor tiles each image (GotOcr2ImageProcessor with `crop_to_patches`): it picks the
grid of 448x448 tiles (columns x rows, at most `max_patches`) whose aspect ratio is closest to
the image's, and adds one thumbnail tile when there is more than one. The language model sees
`image_seq_length` tokens per tile between <img> and </img>. Worst case: a grid of exactly
`max_patches` tiles (12 in the published processor config and ms-swift's MAX_NUM default) plus
the thumbnail, 13 x 256 = 3328 tokens per image. `--max-pixels` is refused: the processor has
no pixel limit (ms-swift's MAX_NUM bounds the tiles instead).

Inputs, as transformers 5.x's InternVLModel reads them (models/internvl/modeling_internvl.py):
`pixel_values` (tiles over the batch, 3, 448, 448) and exactly that many `image_token_id`
placeholders; <img> / </img> are ordinary text tokens to the model.
"""

from __future__ import annotations

import torch

from ...errors import UsageError
from .base import Family, Media, VisionPlan, text_ids

MAX_PATCHES = 12  # the published preprocessor_config.json (OpenGVLab/InternVL3-*-hf), ms-swift's MAX_NUM


def _tile(config) -> tuple[int, int]:
    size = config.vision_config.image_size
    return tuple(size) if isinstance(size, (list, tuple)) else (size, size)


def worst_grid(max_patches: int = MAX_PATCHES) -> tuple[int, int]:
    """(columns, rows) of the most tiles the processor can choose: exactly max_patches (an image
    of that aspect ratio selects it), the squarest such grid."""
    return min(((c, max_patches // c) for c in range(1, max_patches + 1) if max_patches % c == 0),
               key=lambda cr: (abs(cr[0] - cr[1]), -cr[0]))


def plan(config, media: Media) -> VisionPlan:
    if media.max_pixels is not None:
        raise UsageError("--max-pixels", f"InternVL tiles every image into at most {MAX_PATCHES} 448x448 tiles; a pixel limit "
                                         "does not apply", "leave --max-pixels out (ms-swift's MAX_NUM sets the tiles)")
    if media.video_frames:
        raise UsageError("--video-frames", "InternVL video (one tile per frame, a Frame<i> prefix each) is not modelled yet",
                         "probe images only: leave --video-frames out")
    columns, rows = worst_grid()
    tiles = columns * rows + (1 if columns * rows > 1 else 0)  # the thumbnail
    height, width = _tile(config)
    return VisionPlan(image_tokens=tiles * config.image_seq_length, images=media.images, extra_tokens=2,  # <img> ... </img>
                      image_grid=(tiles, height, width), max_pixels=columns * rows * height * width)


def image_tokens_for_size(config, width: int, height: int, max_pixels: int | None = None) -> int:
    """Tokens of one image of this size, by the processor's own tiling rule."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas  # no torchvision

    columns, rows = get_optimal_tiled_canvas((height, width), _tile(config), 1, MAX_PATCHES)
    tiles = columns * rows + (1 if columns * rows > 1 else 0)
    return tiles * config.image_seq_length


def inputs(config, vplan: VisionPlan, batch_size: int, max_length: int, device) -> dict:
    """Every sample exactly max_length tokens: one text token, each image as <img>, its tiles'
    tokens, </img>, then text. Labels ignore the image tokens."""
    ids = text_ids(config, batch_size, max_length, device, (config.image_token_id,))
    pos, n = 1, vplan.image_tokens
    for _ in range(vplan.images):
        ids[:, pos + 1:pos + 1 + n] = config.image_token_id
        pos += n + 2
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": ids.masked_fill(ids == config.image_token_id, -100)}
    if vplan.images:
        tiles, height, width = vplan.image_grid
        channels = config.vision_config.num_channels
        batch["pixel_values"] = torch.randn(batch_size * vplan.images * tiles, channels, height, width, device=device)
    return batch


FAMILY = Family(
    name="internvl", model_types=("internvl",), model_class="InternVLForConditionalGeneration",
    vision_tower=("model.vision_tower",), aligner=("model.multi_modal_projector",),
    language_model=("model.language_model", "lm_head"), plan=plan, inputs=inputs,
    image_tokens_for_size=image_tokens_for_size,
)
