"""The worst-case vision-language input for a spec, and the length checks that refuse it with
an explanation (instead of an OOM, or a silent truncation of the vision tokens) when the media
alone does not fit the sequence."""

from __future__ import annotations

from ..errors import UsageError
from .families import Family, Media, VisionPlan
from .source import position_limit

DEFAULT_IMAGES_PER_SAMPLE = 1


def media_from_spec(spec) -> Media:
    images = DEFAULT_IMAGES_PER_SAMPLE if spec.images_per_sample is None else spec.images_per_sample
    return Media(images=images, max_pixels=spec.max_pixels, video_frames=spec.video_frames or 0,
                 video_max_pixels=spec.video_max_pixels)


def check_text_only(spec) -> None:
    """Vision flags given for a text-only model are a mistake worth saying."""
    for flag, value in (("--max-pixels", spec.max_pixels), ("--images-per-sample", spec.images_per_sample),
                        ("--video-frames", spec.video_frames), ("--video-max-pixels", spec.video_max_pixels),
                        ("--freeze-vit", spec.freeze_vit), ("--freeze-aligner", spec.freeze_aligner),
                        ("--freeze-llm", spec.freeze_llm)):
        if value:
            raise UsageError(flag, "this model is text-only: it has no vision tower", f"leave {flag} out, or probe a vision-language model")


def plan_for(family: Family, config, spec) -> VisionPlan:
    media = media_from_spec(spec)
    if media.video_frames and not family.supports_video:
        raise UsageError("--video-frames", f"{family.name} takes no video", "leave --video-frames out")
    vplan = family.plan(config, media)
    check_sequence(vplan, spec.max_length, position_limit(config), family, config)
    return vplan


def check_sequence(vplan: VisionPlan, max_length: int, limit: int | None, family: Family, config) -> None:
    """Vision tokens plus at least one text token must fit in --max-length (and so in the model's
    position limit, checked with --max-length itself). The refusal names the largest contributor
    and says what to change: pixels, frames, or the max length."""
    need = vplan.tokens + 1
    if need <= max_length:
        return
    image_part = vplan.images * (vplan.image_tokens + vplan.extra_tokens)
    video_part = vplan.videos * (vplan.video_tokens + vplan.extra_tokens)
    parts, fixes = [], []
    if vplan.images:
        parts.append(f"{vplan.images} image(s) x {vplan.image_tokens} tokens at {vplan.max_pixels} pixels")
        room = (max_length - 1 - video_part) // vplan.images - vplan.extra_tokens  # tokens per image that would fit
        if family.pixels_per_token is not None and room >= 4:
            fixes.append(f"--max-pixels {room * family.pixels_per_token(config)} or less")
        fixes.append("fewer --images-per-sample")
    if vplan.videos:
        pair = vplan.video_tokens // vplan.video_grid[0]  # tokens per temporal patch (2 frames)
        parts.append(f"a video of {vplan.video_grid[0]} frame pairs x {pair} tokens = {vplan.video_tokens} tokens "
                     f"at {vplan.video_max_pixels} pixels per frame")
        pairs = (max_length - 1 - image_part - vplan.extra_tokens) // pair
        if pairs >= 1:
            fixes.append(f"--video-frames {2 * pairs} or fewer")
        fixes.append("a lower --video-max-pixels")
    if limit is None or need <= limit:
        fixes.append(f"--max-length {need} or more")
    else:
        fixes.append(f"not a longer --max-length: the model's position limit is {limit}")
    flag = "--video-frames" if video_part > image_part else "--max-pixels"
    raise UsageError(flag, f"the vision input alone is {vplan.tokens} tokens ({' + '.join(parts)}), "
                           f"more than --max-length {max_length} leaves room for",
                     "use " + ", or ".join(fixes))


def swift_env(family: Family, vplan: VisionPlan, spec) -> dict:
    """The environment ms-swift's Qwen2-VL template reads for the same limits."""
    if family.default_max_pixels is None:
        return {}
    env = {"MAX_PIXELS": str(vplan.max_pixels)}
    if vplan.videos:
        env["VIDEO_MAX_PIXELS"] = str(vplan.video_max_pixels)
        env["FPS_MAX_FRAMES"] = str(spec.video_frames)
    return env


def recipe_settings(setup, spec, gradient_checkpointing: bool) -> dict:
    """Settings fields (ms-swift names) for a vision-language setup; {} for text-only. Needs no
    model: the setup comes from the config and the spec (training_setup.plan_inputs)."""
    if setup is None or setup.family is None:
        return {}
    vplan, freezing = setup.vision, setup.freezing
    applies = setup.family.pixels_per_token is not None
    return {
        "freeze_vit": freezing.freeze_vit, "freeze_aligner": freezing.freeze_aligner, "freeze_llm": freezing.freeze_llm,
        # ms-swift's vit_gradient_checkpointing follows gradient_checkpointing unless set; the probe ran it so.
        "vit_gradient_checkpointing": gradient_checkpointing,
        "max_pixels": vplan.max_pixels if applies and vplan.images else None,
        "video_max_pixels": vplan.video_max_pixels if vplan.videos else None,
        "video_frames": spec.video_frames if vplan.videos else None,
        "env": swift_env(setup.family, vplan, spec) if vplan.images or vplan.videos else {},
    }


def recipe_record(setup, spec) -> dict | None:
    if setup is None or setup.family is None:
        return None
    v = setup.vision
    return {
        "family": setup.family.name, "images_per_sample": v.images, "image_tokens": v.image_tokens,
        "videos_per_sample": v.videos, "video_tokens": v.video_tokens, "vision_tokens_per_sample": v.tokens,
        "text_tokens_per_sample": spec.max_length - v.tokens,
        "image_grid": list(v.image_grid), "video_grid": list(v.video_grid),
    }
