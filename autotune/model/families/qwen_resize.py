"""How the Qwen-VL families' images and video frames are sized, and the largest each rule makes.

Two rules decide a Qwen-VL image's size (both `smart_resize`: sides rounded to multiples of the
factor, patch x merge pixels, one language-model token each square, the area kept between a
minimum and a maximum):
- **transformers' processors** (`Qwen2VLImageProcessor`, `Qwen2VLVideoProcessor`: what a script
  of the user's own or TRL's image path calls): a side that rounds to nothing after the image is
  scaled *down* is kept at one factor (`max(factor, ...)`), so a thin strip under a small maximum
  comes out longer than the maximum allows — at most `sqrt(MAX_ASPECT x max_pixels)` pixels long
  and one factor high. Below about 200 tokens per image this strip has more tokens than the
  largest grid under the maximum: 113 where 64 were asked for at 50176 pixels. A small image
  scaled *up* to the minimum rounds both sides up, which overshoots too.
- **qwen-vl-utils** (`fetch_image` / `fetch_video`, what ms-swift's templates call before they
  hand the media to the processor with `do_resize=False`): no clamp when scaling down (a side
  can round to nothing, and the sample then fails), the same rounding up when scaling up; and a
  video's frames share a budget over the whole video (`MODEL_SEQ_LEN` x 0.9 tokens), floored at
  1.05 x the frame minimum (VIDEO_MIN_TOKEN_NUM, 128 tokens), whatever the per-frame maximum.

`processor_worst` finds the largest image transformers' rule makes by running the rule itself
on the images that can reach it (the largest grid under the maximum, the thinnest strips, the
small images the upscaling rounds up the most): each candidate is a real image, its size the
rule's own answer. `worst_video` is qwen-vl-utils' video rule. Both are checked against brute
force over image sizes (tests/test_qwen_resize.py, tests/test_qwen3_vl_video.py).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from ...spec import QWEN_VL_UTILS

MAX_ASPECT = 200  # smart_resize refuses more extreme aspect ratios

# qwen-vl-utils 0.0.14 (vision_process.py), as ms-swift leaves it unless the variables are exported.
VIDEO_MIN_TOKENS = 128  # VIDEO_MIN_TOKEN_NUM
MODEL_SEQ_LEN = 128000  # its budget over a whole video: MODEL_SEQ_LEN x 0.9 tokens
FRAME_FACTOR = 2  # frames come in multiples of 2


def worst_grid(max_pixels: int, factor: int = 1) -> tuple[int, int]:
    """(height, width) in units of `factor` of the largest grid under `max_pixels` whose sides
    keep the aspect limit: floor(max_pixels / factor^2) tokens where some h x w reaches it (with
    a factor of 1, `max_pixels` counts tokens). Of the grids with the most tokens, the squarest.
    A fixed point of smart_resize: an image of that size comes out as it went in."""
    budget = max_pixels // (factor * factor)
    best = (0, 1, 1)
    for h in range(1, math.isqrt(budget) + 1):
        w = budget // h
        if w / h <= MAX_ASPECT and (h * w, h) > best[:2]:
            best = (h * w, h, w)
    return best[1], best[2]


@dataclass(frozen=True)
class Resized:
    """An image of `source` (height, width) pixels that transformers' rule resizes to `size`."""

    source: tuple[int, int]
    size: tuple[int, int]

    def grid(self, factor: int) -> tuple[int, int]:
        return self.size[0] // factor, self.size[1] // factor

    def tokens(self, factor: int) -> int:
        h, w = self.grid(factor)
        return h * w


def _smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    # The PIL image processor's copy: it imports without torchvision, the same rule as the others.
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    return smart_resize(height, width, factor, min_pixels, max_pixels)


@functools.lru_cache(maxsize=4096)
def processor_worst(factor: int, min_pixels: int, max_pixels: int) -> Resized:
    """The image transformers' smart_resize turns into the most tokens under these limits (ties:
    the squarest). Only below `_overshoot_bound` can a clamped or rounded-up side beat the largest
    grid under the maximum, so above it that grid is the answer without trying the others."""
    h, w = worst_grid(max_pixels, factor)
    square = Resized((h * factor, w * factor), _smart_resize(h * factor, w * factor, factor, min_pixels, max_pixels))
    if square.tokens(factor) >= _overshoot_bound(factor, min_pixels, max_pixels):
        return square
    strips = [(h, w) for h in range(1, 2 * factor + 1) for w in (MAX_ASPECT * h, MAX_ASPECT * h - 1) if w >= h]
    found = [square, *(Resized(s, _smart_resize(*s, factor, min_pixels, max_pixels))
                       for s in strips + _upscaling(factor, min_pixels))]
    return max(found, key=lambda r: (r.tokens(factor), min(r.size) / max(r.size)))


def _overshoot_bound(factor: int, min_pixels: int, max_pixels: int) -> int:
    """At least the tokens of any image the rule makes past the maximum: a strip scaled down with
    its short side clamped to one factor (its long side <= sqrt(MAX_ASPECT x max_pixels)), or an
    image scaled up to the minimum (`upscaled_worst`'s bound, one more row for float ties)."""
    strip = math.isqrt(MAX_ASPECT * max_pixels) // factor
    m = -(-min_pixels // (factor * factor))
    steep = math.isqrt(MAX_ASPECT * m) + 2  # the long side at the steepest aspect, rounded up (and a float tie)
    upscaled = max(p * min(steep, m // (p - 1) + 1 if p > 1 else steep) for p in range(1, math.isqrt(m) + 3))
    return max(strip, upscaled)


def _upscaling(factor: int, min_pixels: int) -> list[tuple[int, int]]:
    """Images (height, width) under the minimum whose size the rule's rounding up pushes the
    furthest. Scaled up to the minimum, an image of aspect r has sides A = sqrt(m / r) and
    B = sqrt(m * r) factors (m = min_pixels / factor^2), each rounded up: the most is where A lies
    just above a whole number p - 1 (B just below m / (p - 1)), or at the steepest aspect. At an
    exact ratio the float arithmetic can put both just above their whole numbers (19 x 2432 at
    factor 28 and 128 tokens: 2 x 129), so those ratios are tried too, at many heights."""
    min_units = min_pixels / (factor * factor)
    sizes = [(h, MAX_ASPECT * h) for h in range(1, 2 * factor + 1) if MAX_ASPECT * h * h < min_pixels]
    for p in range(2, math.isqrt(int(min_units)) + 3):
        ratio = min(MAX_ASPECT, min_units / (p - 1) ** 2)
        for h in range(1, 8 * factor + 1):
            exact = h * ratio
            for w in {math.ceil(exact) - 1, round(exact)} if abs(exact - round(exact)) < 1e-9 else {math.ceil(exact) - 1}:
                if w >= h and h * w < min_pixels:
                    sizes.append((h, w))
    return sizes


@functools.lru_cache(maxsize=64)
def upscaled_worst(factor: int, min_pixels: int) -> tuple[int, int]:
    """(height, width) in factor units of the most tokens qwen-vl-utils' smart_resize makes of a
    frame under the minimum. Its upscaling is transformers' (the same float expression, so the
    same answer), but it clamps each rounded side to one factor before it chooses the branch: a
    frame whose clamped area reaches the minimum is not scaled up there."""
    best = (0, 0)
    for h, w in _upscaling(factor, min_pixels):
        if max(factor, round(h / factor) * factor) * max(factor, round(w / factor) * factor) >= min_pixels:
            continue
        hb, wb = _smart_resize(h, w, factor, min_pixels, 2 ** 62)
        if (hb // factor) * (wb // factor) > best[0] * best[1]:
            best = (hb // factor, wb // factor)
    return best


def worst_image(rule: str, factor: int, min_pixels: int, max_pixels: int) -> Resized:
    """The image a launch's rule (spec.IMAGE_RULES) turns into the most tokens: transformers'
    processor's (`processor_worst`, a thin strip past the maximum below about 200 tokens), or
    qwen-vl-utils' (ms-swift's), whose largest is the largest grid (a fixed point of its rule)."""
    if rule == QWEN_VL_UTILS:
        h, w = worst_grid(max_pixels, factor)
        return Resized((h * factor, w * factor), (h * factor, w * factor))
    return processor_worst(factor, min_pixels, max_pixels)


def frame_budget(frames: int, max_tokens: int, min_tokens: int = VIDEO_MIN_TOKENS) -> float:
    """qwen-vl-utils' `fetch_video`: the most tokens one frame of a `frames`-frame video may
    have (its max_pixels / factor^2), at least 1.05 x the frame minimum whatever the maximum."""
    total = MODEL_SEQ_LEN * 0.9
    return max(min(max_tokens, total / frames * FRAME_FACTOR), int(min_tokens * 1.05))


def frame_grid(frames: int, max_tokens: int, factor: int, min_tokens: int = VIDEO_MIN_TOKENS) -> tuple[int, int]:
    """(height, width) in merged patches of the frame with the most tokens qwen-vl-utils'
    smart_resize can make in a `frames`-frame video: the largest grid under the budget (a fixed
    point of the resize), or an upscaled small frame when that overshoots it."""
    grid = worst_grid(int(frame_budget(frames, max_tokens, min_tokens)))
    upscaled = upscaled_worst(factor, min_tokens * factor * factor)
    return upscaled if upscaled[0] * upscaled[1] > grid[0] * grid[1] else grid


def worst_video(frames: int, max_tokens: int, factor: int, per_patch: int = 0,
                min_tokens: int = VIDEO_MIN_TOKENS) -> tuple[int, tuple[int, int]]:
    """(frames, frame grid) of the video of at most `frames` frames (a whole number of temporal
    patches) with the most tokens under qwen-vl-utils' rule: its placeholders, and `per_patch`
    more tokens per temporal patch of 2 frames (Qwen3-VL's timestamps and vision start/end)."""
    most = FRAME_FACTOR * math.ceil(frames / FRAME_FACTOR)  # a list of images is padded up to the factor

    def tokens(n: int) -> int:
        h, w = frame_grid(n, max_tokens, factor, min_tokens)
        return (n // FRAME_FACTOR) * (h * w + per_patch)

    best = max(range(FRAME_FACTOR, most + 1, FRAME_FACTOR), key=lambda n: (tokens(n), n))
    return best, frame_grid(best, max_tokens, factor, min_tokens)


# transformers' Qwen3VLVideoProcessor as the published video_preprocessor_config.json of Qwen3-VL
# sets it: size {"shortest_edge": 4096, "longest_edge": 25165824}, pixels over *all* of a video's
# frames (its smart_resize compares frames x height x width with them), cap_pixels_per_frame unset
# (False, with a warning, in transformers 5.24): no per-frame cap of its own.
PROCESSOR_VIDEO_MAX_PIXELS = 25165824
PROCESSOR_VIDEO_MIN_PIXELS = 4096


def _video_resize(frames: int, height: int, width: int, factor: int, max_pixels: int) -> tuple[int, int] | None:
    # The processor's own rule; None where it refuses the frame (past the aspect limit).
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

    try:
        return smart_resize(frames, height, width, temporal_factor=FRAME_FACTOR, factor=factor,
                            min_pixels=PROCESSOR_VIDEO_MIN_PIXELS, max_pixels=max_pixels)
    except ValueError:
        return None


def _rounding_to(units: int, factor: int, largest: bool) -> int:
    """The smallest (or largest) side in pixels that `round(side / factor)` turns into `units`
    (Python's round: halves go to the even side)."""
    side = (2 * units + (1 if largest else -1)) * factor // 2
    while round(side / factor) != units:
        side += -1 if largest else 1
    return side


def _video_frame_sources(frames: int, factor: int, frame_pixels: int, max_pixels: int) -> set[tuple[int, int]]:
    """Frames (height <= width) of at most `frame_pixels` pixels among which the processor's rule
    makes the most tokens of a `frames`-frame video:
    - unscaled (the video within the budget): for every row count, the widest frame, and the
      widest whose rounded columns keep the video within the budget; sides are rounded, up where
      a side lies past a half factor, so a frame can come out larger than it went in;
    - scaled down (the video past the budget, each side divided by the root of the excess and
      floor-rounded): the result depends on the frame's aspect only, so for every row count the
      widest aspect that keeps it, at the largest frame of that aspect (the finest ratio);
    - strips thinner than one factor, which the rule first scales up to one."""
    square = factor * factor
    rounded = round(frames / FRAME_FACTOR) * FRAME_FACTOR  # the frame count the rule checks the budget with
    sources = {(h, w) for h in range(1, factor) for w in (MAX_ASPECT * h, MAX_ASPECT * h - 1) if h * w <= frame_pixels}
    rows = 1
    while (h := _rounding_to(rows, factor, largest=False)) * h <= frame_pixels:
        widest = min(frame_pixels // h, MAX_ASPECT * h)
        sources.add((h, widest))
        fitting = max_pixels // (rounded * rows * square)  # columns the video keeps unscaled at these rows
        if fitting >= rows:
            sources.add((h, min(widest, _rounding_to(fitting, factor, largest=True))))
        rows += 1
    for rows in range(1, math.isqrt(max_pixels // frames) // factor + 2):
        aspect = max_pixels / (frames * rows * rows * square)  # width / height that scales to `rows` rows exactly
        if aspect < 1:
            break
        tallest = math.isqrt(int(frame_pixels / min(aspect, MAX_ASPECT)))
        for h in (tallest, tallest - 1, tallest - 2):
            w = min(max_pixels * h // (frames * rows * rows * square), MAX_ASPECT * h, frame_pixels // max(h, 1))
            if h >= 1 and w >= h:
                sources.add((h, w))
    return sources


@functools.lru_cache(maxsize=4096)
def processor_video_frame(frames: int, factor: int, frame_pixels: int, max_pixels: int = PROCESSOR_VIDEO_MAX_PIXELS) -> tuple[int, int]:
    """(height, width) in factor units of the frame with the most tokens transformers'
    Qwen3VLVideoProcessor makes in a `frames`-frame video whose frames have at most
    `frame_pixels` pixels: the budget is `max_pixels` over all frames, so a few frames keep their
    size (rounded, up past a half factor) and many are scaled down to their share."""
    best = (0, 0)
    for h, w in _video_frame_sources(frames, factor, frame_pixels, max_pixels):
        made = _video_resize(frames, h, w, factor, max_pixels)
        if made and (made[0] // factor) * (made[1] // factor) > best[0] * best[1]:
            best = (made[0] // factor, made[1] // factor)
    return best


def processor_worst_video(frames: int, factor: int, frame_pixels: int, per_patch: int = 0) -> tuple[int, tuple[int, int]]:
    """(temporal patches, frame grid) of the video of 2 to `frames` frames with the most tokens
    under transformers' video processor (per temporal patch its placeholders and `per_patch`
    more); the frames are padded to whole patches. (0, (0, 0)) for a single frame, which the
    processor refuses."""
    def tokens(n: int) -> int:
        h, w = processor_video_frame(n, factor, frame_pixels)
        return math.ceil(n / FRAME_FACTOR) * (h * w + per_patch)

    if frames < FRAME_FACTOR:
        return 0, (0, 0)
    best = max(range(FRAME_FACTOR, frames + 1), key=lambda n: (tokens(n), n))
    return math.ceil(best / FRAME_FACTOR), processor_video_frame(best, factor, frame_pixels)


def swift_env(vplan) -> dict:
    """qwen-vl-utils reads MODEL_SEQ_LEN for its budget over a video's frames: held at the value
    the worst case assumed (emit/common.py HELD_ENV)."""
    return {"MODEL_SEQ_LEN": str(MODEL_SEQ_LEN)} if vplan.videos else {}
