"""Qwen2-VL: a ViT with 14-pixel patches whose 2x2 neighbours are merged into one language-model
token (so tokens = pixels / 28^2), video frames paired by a temporal patch of 2, and M-RoPE
positions computed from `mm_token_type_ids`.

Input shapes, as transformers 5.23's Qwen2VLModel reads them (models/qwen2_vl/modeling_qwen2_vl.py):
- `pixel_values`: (sum over images of t*h*w patches, channels * temporal_patch * patch * patch);
  an image is one temporal patch (the processor repeats the frame), so t = 1.
- `image_grid_thw` / `video_grid_thw`: (items, 3) rows [t, h, w] in patches;
  the language model sees t*h*w / merge^2 tokens per item.
- `input_ids` hold exactly that many `image_token_id` / `video_token_id` placeholders
  (get_placeholder_mask checks the count), and `mm_token_type_ids` marks them 1 / 2
  (compute_3d_position_ids refuses multimodal input without it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch

from ...errors import UsageError
from .base import Family, Media, VisionPlan, text_ids
from .qwen_resize import processor_worst, swift_env as video_env, worst_image, worst_video

MIN_PIXELS = 56 * 56  # the image processor's default shortest_edge
# Published preprocessor_config.json of Qwen2-VL-7B-Instruct and Qwen2.5-VL-7B-Instruct: what
# ms-swift uses when MAX_PIXELS is unset. 12845056 = 16384 tokens per image.
DEFAULT_MAX_PIXELS = 12845056
DEFAULT_VIDEO_MAX_PIXELS = 768 * 28 * 28  # qwen-vl-utils VIDEO_MAX_PIXELS
VIDEO_MIN_PIXELS = 128 * 28 * 28  # the video processor's default shortest_edge (per frame)


@dataclass(frozen=True)
class Limits:
    """A processor's pixel limits: its min_pixels (shortest_edge), the video processor's, and the
    published defaults."""

    min_pixels: int = MIN_PIXELS
    default_max_pixels: int = DEFAULT_MAX_PIXELS
    default_video_max_pixels: int = DEFAULT_VIDEO_MAX_PIXELS
    video_min_pixels: int = VIDEO_MIN_PIXELS


QWEN2_VL = Limits()


def _factor(vision) -> int:
    return vision.patch_size * vision.spatial_merge_size


def image_tokens_for_size(config, width: int, height: int, max_pixels: int, limits: Limits = QWEN2_VL) -> int:
    """Tokens one real image becomes, by the processor's own resize rule (the PIL image processor's
    copy of smart_resize: it imports without torchvision)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    factor = _factor(config.vision_config)
    h, w = smart_resize(height, width, factor, limits.min_pixels, max_pixels)
    return (h // factor) * (w // factor)


def plan(config, media: Media, limits: Limits = QWEN2_VL) -> VisionPlan:
    """The worst image is the one the launch's resize rule (`media.image_resize`) makes the most
    of: through transformers' processor (a script of the user's own, TRL, LLaMA-Factory) a thin
    strip below about 200 tokens (qwen_resize.processor_worst: it keeps the short side at one
    factor; 113 tokens at 50176 pixels, where the largest grid is 64), else the largest grid;
    through ms-swift's qwen-vl-utils the largest grid under --max-pixels (a fixed point of its
    resize; the most it makes of any image at 10 tokens or more). The worst video is the one
    either launch makes the most of (`worst_frames`)."""
    vision = config.vision_config
    merge, factor = vision.spatial_merge_size, _factor(vision)
    max_pixels, min_pixels = media.max_pixels or limits.default_max_pixels, limits.min_pixels
    if max_pixels < min_pixels:
        side = math.isqrt(min_pixels)
        raise UsageError("--max-pixels", f"{max_pixels} is below the processor's minimum of {min_pixels} pixels ({side}x{side})",
                         f"use --max-pixels {min_pixels} or more")
    image = worst_image(media.image_resize, factor, min_pixels, max_pixels)
    h, w = image.grid(factor)
    image_grid = (1, h * merge, w * merge)
    video_grid, video_tokens, video_pixels = (), 0, None
    if media.video_frames:
        video_pixels = media.video_max_pixels or limits.default_video_max_pixels
        if video_pixels < min_pixels:
            raise UsageError("--video-max-pixels", f"{video_pixels} is below the processor's minimum of {min_pixels} pixels",
                             f"use --video-max-pixels {min_pixels} or more")
        frame_min = media.video_min_pixels or limits.video_min_pixels
        t, (vh, vw) = worst_frames(media.video_frames, video_pixels, frame_min, factor, vision.temporal_patch_size)
        video_grid = (t, vh * merge, vw * merge)
        video_tokens = t * vh * vw
    return VisionPlan(image_tokens=h * w, video_tokens=video_tokens, images=media.images,
                      videos=1 if media.video_frames else 0, extra_tokens=2,  # <|vision_start|> ... <|vision_end|>
                      image_grid=image_grid, image_source=image.source, video_grid=video_grid, max_pixels=max_pixels, video_max_pixels=video_pixels,
                      video_step=vision.temporal_patch_size,
                      video_min_pixels=media.video_min_pixels if media.video_frames else None)


def worst_frames(frames: int, max_pixels: int, min_pixels: int, factor: int, temporal: int) -> tuple[int, tuple[int, int]]:
    """(temporal patches, frame grid in merged patches) of the video of up to `frames` frames with
    the most tokens under either launch. ms-swift reads it with qwen-vl-utils' `fetch_video`
    (qwen_resize.worst_video: the frames share a budget over the video, each gets at least 1.05 x
    the frame minimum whatever --video-max-pixels says, a thin frame scaled up to the minimum gets
    more) and hands it on with `do_resize=False`; transformers' video processor resizes each of
    the frames alone by its smart_resize, between its shortest_edge (the same minimum) and the cap
    (a clamped strip below about 200 tokens). The larger is the worst case for either."""
    square = factor * factor
    n, swift = worst_video(frames, max_pixels // square, factor, min_tokens=-(-min_pixels // square))
    processor = processor_worst(factor, min_pixels, max_pixels).grid(factor)
    # The processor pads the frames to a multiple of the temporal patch; qwen-vl-utils' come in 2s.
    made = [(n // temporal, swift), (math.ceil(frames / temporal), processor)]
    return max(made, key=lambda m: (m[0] * m[1][0] * m[1][1], m[0]))


def _patches(vision, grid: tuple, count: int, device) -> torch.Tensor:
    t, h, w = grid
    width = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
    # float32, as the image processor returns it; the model casts to the tower's dtype.
    return torch.randn(count * t * h * w, width, device=device)


def inputs(config, vplan: VisionPlan, batch_size: int, max_length: int, device, avoid: tuple[int, ...] = ()) -> dict:
    """Every sample exactly max_length tokens: 1 text token, each image / video wrapped in
    vision start/end, then text to the end. Labels ignore the placeholders, as the templates do.
    `avoid`: more special ids the text must not contain (a family's own placeholders)."""
    vision = config.vision_config
    placeholders = (config.image_token_id, config.video_token_id, config.vision_start_token_id, config.vision_end_token_id,
                    *avoid)
    ids = text_ids(config, batch_size, max_length, device, placeholders)
    kinds = torch.zeros(batch_size, max_length, dtype=torch.int32, device=device)
    pos = 1
    items = [(config.image_token_id, 1, vplan.image_tokens)] * vplan.images + [(config.video_token_id, 2, vplan.video_tokens)] * vplan.videos
    for token, kind, n in items:
        ids[:, pos] = config.vision_start_token_id
        ids[:, pos + 1:pos + 1 + n] = token
        kinds[:, pos + 1:pos + 1 + n] = kind
        ids[:, pos + 1 + n] = config.vision_end_token_id
        pos += n + 2
    labels = ids.masked_fill(kinds != 0, -100)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "mm_token_type_ids": kinds}
    if vplan.images:
        n = batch_size * vplan.images
        batch["pixel_values"] = _patches(vision, vplan.image_grid, n, device)
        batch["image_grid_thw"] = torch.tensor([vplan.image_grid] * n, device=device)
    if vplan.videos:
        n = batch_size * vplan.videos
        batch["pixel_values_videos"] = _patches(vision, vplan.video_grid, n, device)
        batch["video_grid_thw"] = torch.tensor([vplan.video_grid] * n, device=device)
    return batch


PLACEHOLDERS = (("<|image_pad|>", "image_token_id"), ("<|video_pad|>", "video_token_id"),
                ("<|vision_start|>", "vision_start_token_id"), ("<|vision_end|>", "vision_end_token_id"))


def processor(config, vplan: VisionPlan, processor_class: str, limits: Limits = QWEN2_VL):
    """The model's processor class for TRL's image path (model/processor.py): the PIL image
    processor at the config's patch, merge and temporal sizes and the worst case's pixel limits
    (`size`: shortest_edge = min_pixels, longest_edge = max_pixels, as the published
    preprocessor configs write them), the placeholder tokens at the config's ids."""
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from ..processor import Processing, chat_template, images_only
    from ..tokenizer import synthetic_tokenizer

    vision = config.vision_config
    specials = tuple((name, getattr(config, key)) for name, key in PLACEHOLDERS)
    tokenizer = synthetic_tokenizer(config.get_text_config().vocab_size, specials)
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": limits.min_pixels, "longest_edge": vplan.max_pixels}, patch_size=vision.patch_size,
        merge_size=vision.spatial_merge_size, temporal_patch_size=vision.temporal_patch_size)
    cls = images_only(getattr(transformers, processor_class))
    made = cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template("<|vision_start|><|image_pad|><|vision_end|>"))
    # The image the processor's resize turns into the planned grid (a strip it clamps, or a fixed point).
    _, h, w = vplan.image_grid
    height, width = vplan.image_source or (h * vision.patch_size, w * vision.patch_size)
    return Processing(made, (width, height), frozenset(i for _, i in specials))


def family(name: str, model_type: str, model_class: str, limits: Limits = QWEN2_VL, plan_rule=plan, inputs_rule=inputs,
           aligner: tuple[str, ...] = ("model.visual.merger",), processor_class: str | None = None, swift_env=video_env) -> Family:
    """Qwen2-VL and its descendants share the image rules and the module layout. `processor_class`:
    the transformers processor TRL's image path gets (None: not built for this member yet)."""
    return Family(
        name=name, model_types=(model_type,), model_class=model_class,
        vision_tower=("model.visual",), aligner=aligner,
        language_model=("model.language_model", "lm_head"),
        plan=partial(plan_rule, limits=limits), inputs=inputs_rule, default_max_pixels=limits.default_max_pixels,
        default_video_max_pixels=limits.default_video_max_pixels, supports_video=True, video_frames_env="FPS_MAX_FRAMES",
        image_tokens_for_size=partial(image_tokens_for_size, limits=limits),
        pixels_per_token=lambda config: _factor(config.vision_config) ** 2, min_pixels=limits.min_pixels,
        processor=partial(processor, processor_class=processor_class, limits=limits) if processor_class else None,
        swift_env=swift_env,
    )


FAMILY = family("qwen2-vl", "qwen2_vl", "Qwen2VLForConditionalGeneration", processor_class="Qwen2VLProcessor")
