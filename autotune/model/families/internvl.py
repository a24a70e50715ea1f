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

Video (`--video-frames N`), as InternVLProcessor expands a `<video>` (processing_internvl.py
`replace_video_token`): every frame is one tile at the tower's size (the video processor resizes
it; no tiling, no thumbnail) and becomes `Frame{i}: <img>` + image_seq_length placeholders +
`</img>`, the frames joined by newlines; the processor merges the frames' tiles into
`pixel_values` after the sample's images. So a frame costs what one tile of an image costs, and
`--video-max-pixels` does not apply. The frame labels are text whose length in tokens depends on
the tokenizer: counted here as their UTF-8 bytes, which a byte-level BPE tokenizer (Qwen2's, in
the InternVL3-hf checkpoints) never exceeds, so the length check never admits a video the real
tokenizer makes longer. ms-swift's InternVL templates read the frames per video from
VIDEO_SEGMENTS (default 8) and the tiles per frame from VIDEO_MAX_NUM (default 1, as here); its
`internvl_hf` template hands the decoded frames to the video processor as they are, so there the
frames are what the data (or the video processor's own sampling) gives.

Inputs, as transformers 5.x's InternVLModel reads them (models/internvl/modeling_internvl.py):
`pixel_values` (tiles and frames over the batch, 3, 448, 448) and exactly that many
`image_token_id` placeholders x image_seq_length; <img> / </img> and the frame labels are
ordinary text tokens to the model.
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
    if media.video_frames and media.video_max_pixels is not None:
        raise UsageError("--video-max-pixels", "InternVL resizes every video frame to one tile of the vision tower's size; "
                                               "a pixel limit does not apply", "leave --video-max-pixels out")
    columns, rows = worst_grid()
    tiles = columns * rows + (1 if columns * rows > 1 else 0)  # the thumbnail
    height, width = _tile(config)
    frames = media.video_frames
    return VisionPlan(image_tokens=tiles * config.image_seq_length, images=media.images, extra_tokens=2,  # <img> ... </img>
                      image_grid=(tiles, height, width), max_pixels=columns * rows * height * width,
                      videos=1 if frames else 0, video_tokens=frames * config.image_seq_length,
                      video_extra_tokens=sum(frame_text_tokens(i) for i in range(frames)) if frames else None,
                      video_grid=(frames, height, width) if frames else ())


def frame_label(index: int) -> str:
    """The text InternVLProcessor writes before frame `index` (from 0), and the newline that
    joins it to the previous frame."""
    return ("\n" if index else "") + f"Frame{index + 1}: "


def frame_text_tokens(index: int) -> int:
    """Non-placeholder tokens of frame `index`: its label (at most one token per byte), <img>, </img>."""
    return len(frame_label(index).encode()) + 2


def image_tokens_for_size(config, width: int, height: int, max_pixels: int | None = None) -> int:
    """Tokens of one image of this size, by the processor's own tiling rule."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas  # no torchvision

    columns, rows = get_optimal_tiled_canvas((height, width), _tile(config), 1, MAX_PATCHES)
    tiles = columns * rows + (1 if columns * rows > 1 else 0)
    return tiles * config.image_seq_length


def inputs(config, vplan: VisionPlan, batch_size: int, max_length: int, device) -> dict:
    """Every sample exactly max_length tokens: one text token, each image as <img>, its tiles'
    tokens, </img>, then the video's frames (label, <img>, the frame's tokens, </img>), then
    text. Labels ignore the image tokens."""
    ids = text_ids(config, batch_size, max_length, device, (config.image_token_id,))
    pos, n = 1, vplan.image_tokens
    for _ in range(vplan.images):
        ids[:, pos + 1:pos + 1 + n] = config.image_token_id
        pos += n + 2
    frames = vplan.video_grid[0] if vplan.videos else 0
    for index in range(frames):
        pos += frame_text_tokens(index) - 1  # the label's tokens and <img>: text to the model
        ids[:, pos:pos + config.image_seq_length] = config.image_token_id
        pos += config.image_seq_length + 1  # </img>
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": ids.masked_fill(ids == config.image_token_id, -100)}
    tiles = vplan.images * (vplan.image_grid[0] if vplan.images else 0) + frames  # the processor's order: images, then frames
    if tiles:
        height, width = _tile(config)
        channels = config.vision_config.num_channels
        batch["pixel_values"] = torch.randn(batch_size * tiles, channels, height, width, device=device)
    return batch


FAMILY = Family(
    name="internvl", model_types=("internvl",), model_class="InternVLForConditionalGeneration",
    vision_tower=("model.vision_tower",), aligner=("model.multi_modal_projector",),
    language_model=("model.language_model", "lm_head"), plan=plan, inputs=inputs,
    image_tokens_for_size=image_tokens_for_size, supports_video=True, video_frames_env="VIDEO_SEGMENTS",
)
