"""The worst-case vision-language input for a spec, and the length checks that refuse it with
an explanation (instead of an OOM, or a silent truncation of the vision tokens) when the media
alone does not fit the sequence."""

from __future__ import annotations

import dataclasses

from ..errors import UsageError
from ..spec import PROCESSOR
from .families import Family, Media, VisionPlan
from .source import position_limit

DEFAULT_IMAGES_PER_SAMPLE = 1


def media_from_spec(spec) -> Media:
    images = DEFAULT_IMAGES_PER_SAMPLE if spec.images_per_sample is None else spec.images_per_sample
    return Media(images=images, max_pixels=spec.max_pixels, video_frames=spec.video_frames or 0,
                 video_max_pixels=spec.video_max_pixels, video_min_pixels=spec.video_min_pixels, audio_clips=spec.audio_clips or 0,
                 audio_in_video=spec.use_audio_in_video, image_resize=spec.image_resize or PROCESSOR)


def check_text_only(spec) -> None:
    """Vision flags given for a text-only model are a mistake worth saying."""
    for flag, value in (("--max-pixels", spec.max_pixels), ("--images-per-sample", spec.images_per_sample),
                        ("--video-frames", spec.video_frames), ("--video-max-pixels", spec.video_max_pixels),
                        ("--video-min-pixels", spec.video_min_pixels),
                        ("--audio-clips", spec.audio_clips), ("--use-audio-in-video", spec.use_audio_in_video),
                        ("--freeze-vit", spec.freeze_vit), ("--freeze-aligner", spec.freeze_aligner),
                        ("--freeze-llm", spec.freeze_llm)):
        if value or (flag.startswith("--freeze") and value is not None):  # `--freeze-vit false` is given too
            raise UsageError(flag, "this model is text-only: it has no vision tower", f"leave {flag} out, or probe a vision-language model")


def plan_for(family: Family, config, spec) -> VisionPlan:
    media = media_from_spec(spec)
    if media.video_frames and not family.supports_video:
        raise UsageError("--video-frames", f"{family.name} takes no video", "leave --video-frames out")
    if media.audio_clips and not family.supports_audio:
        raise UsageError("--audio-clips", f"{family.name} has no audio tower", "leave --audio-clips out")
    if media.audio_in_video and not family.supports_audio:
        raise UsageError("--use-audio-in-video", f"{family.name} has no audio tower to hear the sound track with", "leave --use-audio-in-video out")
    vplan = family.plan(config, media)
    check_sequence(vplan, spec.max_length, position_limit(config), family, config, media)
    return vplan


def check_sequence(vplan: VisionPlan, max_length: int, limit: int | None, family: Family, config, media: Media | None = None) -> None:
    """Vision tokens plus at least one text token must fit in --max-length (and so in the model's
    position limit, checked with --max-length itself). The refusal names the largest contributor
    and says what to change: pixels, frames, or the max length. `media`: what the plan was made
    from (for the most frames that would fit)."""
    need = vplan.tokens + 1
    if need <= max_length:
        return
    image_part, video_part, audio_part = vplan.image_part, vplan.video_part, vplan.audio_part
    parts, fixes = [], []
    if vplan.images:
        parts.append(f"{vplan.images} image(s) x {vplan.image_tokens} tokens at {vplan.max_pixels} pixels")
        room = (max_length - 1 - video_part - audio_part) // vplan.images - vplan.extra_tokens  # tokens per image that would fit
        largest = largest_max_pixels(family, config, media, room) if family.pixels_per_token is not None and room >= 4 else None
        if largest is not None:
            fixes.append(f"--max-pixels {largest} or less")
        fixes.append("fewer --images-per-sample")
    if vplan.videos:
        patches = vplan.video_grid[0]
        per = vplan.video_tokens // patches
        if vplan.video_step == 2:
            timestamps = vplan.video_extra_tokens is not None and not vplan.video_audio_tokens  # Qwen3-VL's, and start/end
            parts.append(f"a video of {patches} frame pairs x {per} tokens = {vplan.video_tokens} tokens "
                         f"at {vplan.video_max_pixels} pixels per frame"
                         + (f" + its sound track's {vplan.video_audio_tokens} (30 s)" if vplan.video_audio_tokens else "")
                         + (f" + {vplan.video_wrap} of timestamps and vision start/end" if timestamps else ""))
        else:
            parts.append(f"a video of {patches} frames x {per} tokens + {vplan.video_wrap} around them = {video_part} tokens")
        most = most_frames(family, config, media, max_length) if media is not None else 0
        if most:
            fixes.append(f"--video-frames {most} or fewer")
        if vplan.video_max_pixels is not None:
            if family.pixels_per_token is not None and per > vplan.video_max_pixels // family.pixels_per_token(config):
                # past the cap: qwen-vl-utils' floor (1.05 x the frame minimum) or a thin frame's rounding
                fixes.append("a lower --video-min-pixels (each frame gets at least 1.05x it, whatever --video-max-pixels)")
            else:
                fixes.append("a lower --video-max-pixels")
        if vplan.video_audio_tokens:
            fixes.append("--use-audio-in-video false")
    if vplan.audios:
        parts.append(f"{vplan.audios} audio clip(s) x {vplan.audio_tokens} tokens (30 s each)")
        fixes.append("fewer --audio-clips")
    beyond = ""
    if limit is None or need <= limit:
        fixes.append(f"--max-length {need} or more")
    else:
        beyond = f" (a longer --max-length cannot hold it: the model's position limit is {limit})"
    flag = max((image_part, "--max-pixels"), (video_part, "--video-frames"), (audio_part, "--audio-clips"))[1]
    what = "media" if vplan.audios else "vision input"
    raise UsageError(flag, f"the {what} alone is {vplan.tokens} tokens ({' + '.join(parts)}), "
                           f"more than --max-length {max_length} leaves room for",
                     "use " + ", or ".join(fixes) + beyond)


def largest_max_pixels(family: Family, config, media: Media | None, room: int) -> int | None:
    """The largest --max-pixels, in whole tokens, whose worst image is at most `room` tokens by the
    family's own rule (through transformers' processor a thin strip has more tokens than the grid
    under the limit); None when not even the processor's smallest image is. The worst image's
    tokens grow with the limit, so a bisection finds it."""
    per = family.pixels_per_token(config)
    media = media or Media()

    def tokens(t: int) -> int:
        return family.plan(config, dataclasses.replace(media, max_pixels=t * per, video_frames=0, audio_clips=0)).image_tokens

    low = -(-family.min_pixels // per)
    if tokens(low) > room:
        return None
    high = max(room, low) + 1  # the grid alone has t tokens at t x per pixels: past room at room + 1
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if tokens(middle) <= room else (low, middle)
    return low * per


def most_frames(family: Family, config, media: Media, max_length: int) -> int:
    """The most frames per video (a whole number of temporal patches) whose worst case, beside
    the sample's other media and one text token, fits in max_length; 0 when not even one patch
    does. By the family's own plan, so labels and wrappers that grow with the frames count."""
    step = getattr(config.vision_config, "temporal_patch_size", 1) or 1  # frames per temporal patch

    def fits(patches: int) -> bool:
        return family.plan(config, dataclasses.replace(media, video_frames=step * patches)).tokens + 1 <= max_length

    if not fits(1):
        return 0
    low, high = 1, 2
    while fits(high):  # tokens grow with the frames: double, then bisect
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return step * low


def media_values(family: Family, config, spec, dimension: str) -> tuple[list[int], str, str]:
    """What `--max-pixels auto` / `--video-frames auto` chooses among, smallest first: each value
    at which the family's resize rule gives the worst case one more token per image (pixels) or
    one more temporal patch (frames), up to what --max-length leaves room for beside the other
    media and one text token. Returns (values, the step in words, why the list ends there)."""
    media = media_from_spec(spec)
    if dimension == "max_pixels":
        if family.pixels_per_token is None or family.min_pixels is None:
            raise UsageError("--max-pixels", f"{family.name} resizes every image to a size of its own; there is no pixel limit to search",
                             "leave --max-pixels out (or set --images-per-sample)")
        if not media.images:
            raise UsageError("--max-pixels", "auto needs an image in the sample", "add --images-per-sample 1 (or more)")
        per_token = family.pixels_per_token(config)
        smallest = family.plan(config, Media(images=media.images, max_pixels=family.min_pixels, video_frames=media.video_frames,
                                             video_max_pixels=media.video_max_pixels, video_min_pixels=media.video_min_pixels))
        video_part = smallest.video_part
        most = (spec.max_length - 1 - video_part) // media.images - smallest.extra_tokens
        first = -(-family.min_pixels // per_token)
        # By the launch's rule: through transformers' processor a small limit's worst image (a thin strip) has more tokens.
        largest = largest_max_pixels(family, config, media, most) if most >= 1 else None
        values = [t * per_token for t in range(first, largest // per_token + 1)] if largest else []
        if not values:
            raise UsageError("--max-length", f"{spec.max_length} leaves no room for even the smallest image ({smallest.image_tokens} tokens)",
                             "use a longer --max-length")
        return values, f"1 token ({per_token} pixels)", f"--max-length {spec.max_length} leaves room for {most} tokens per image"
    if not family.supports_video:
        raise UsageError("--video-frames", f"{family.name} takes no video", "leave --video-frames out")
    step = getattr(config.vision_config, "temporal_patch_size", 1) or 1  # frames per temporal patch
    media = dataclasses.replace(media, video_frames=step)
    one = family.plan(config, media)
    most = most_frames(family, config, media, spec.max_length)
    if not most:
        raise UsageError("--max-length", f"{spec.max_length} leaves no room for a video of {step} frames ({one.video_part} tokens) "
                                         f"beside {one.image_part} image tokens", "use a longer --max-length, or fewer --images-per-sample")
    what = f"one temporal patch, {one.video_tokens} tokens" if step > 1 else f"{one.video_tokens} tokens and its label"
    return ([step * k for k in range(1, most // step + 1)], f"{step} frame{'s' if step > 1 else ''} ({what})",
            f"--max-length {spec.max_length} leaves room for {most // step} {'temporal patches' if step > 1 else 'frames'}")


def swift_env(family: Family, vplan: VisionPlan, spec) -> dict:
    """The environment ms-swift's template for the family reads for the same limits: Qwen2-VL's
    MAX_PIXELS / VIDEO_MAX_PIXELS / FPS_MAX_FRAMES, InternVL's VIDEO_SEGMENTS, Qwen2.5-Omni's
    USE_AUDIO_IN_VIDEO, and what the family's own `swift_env` adds (Qwen3-VL's MODEL_SEQ_LEN)."""
    env = {}
    if family.default_max_pixels is not None:
        env["MAX_PIXELS"] = str(vplan.max_pixels)
    if vplan.videos:
        if vplan.video_max_pixels is not None:
            env["VIDEO_MAX_PIXELS"] = str(vplan.video_max_pixels)
        if vplan.video_min_pixels is not None:
            env["VIDEO_MIN_PIXELS"] = str(vplan.video_min_pixels)
        if family.video_frames_env is not None:
            env[family.video_frames_env] = str(spec.video_frames)
        if vplan.video_audio_tokens:
            env["USE_AUDIO_IN_VIDEO"] = "true"  # ms-swift's Qwen2.5-Omni template then loads each video's sound track
    if family.swift_env is not None:
        env.update(family.swift_env(vplan))
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
        # the rule sizes Qwen-VL images, and Qwen3-VL's video (its processor's rule differs from ms-swift's)
        "image_resize": (spec.image_resize or PROCESSOR) if applies and (vplan.images or vplan.videos) else None,
        "video_max_pixels": vplan.video_max_pixels if vplan.videos else None,
        "video_min_pixels": vplan.video_min_pixels if vplan.videos else None,
        "video_frames": spec.video_frames if vplan.videos else None,
        "use_audio_in_video": True if vplan.video_audio_tokens else None,
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
        **({"audio_clips_per_sample": v.audios, "audio_tokens": v.audio_tokens} if v.audios else {}),
        **({"video_audio_tokens": v.video_audio_tokens} if v.video_audio_tokens else {}),
    }
