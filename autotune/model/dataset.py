"""The user's own data: an ms-swift JSONL file (`{"messages": [{"role", "content"}...],
"images": [...], "videos": [...]}` per line) measured with the model's own tokenizer and
image rules, so the probe's worst case is the data's worst case (or a chosen percentile).

A sample's length is its chat-templated text (the `<image>` / `<video>` tags removed) plus, per
image, the tokens the family's processor rule makes of that image's real size (for the Qwen2-VL
family: smart_resize under max_pixels, then / 28^2, plus the vision start/end tokens). Videos
count at the worst case of --video-frames / --video-max-pixels: decoding video is out of scope.
Broken lines, missing and unreadable images, and what is not counted (tools, audio, a video
without a frame limit) are collected with their line numbers; the remaining samples are
measured. The run's own data (--swift-args's, `dataset_whole`) sets the worst case only where
every sample was measured."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from .dataset_samples import image_size, media_file, media_paths, records, sequences, uncounted_media

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class Sample:
    line: int
    tokens: int  # text + vision
    images: int
    image_pixels: list[int] = field(default_factory=list)  # as the processor resizes them
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) as the files hold them


@dataclass
class DatasetProfile:
    path: str
    lines: int
    samples: list[Sample]
    issues: list[tuple[str, int, str]]  # (file, line number, what is wrong)
    tokenizer: str

    def token_counts(self) -> list[int]:
        return sorted(s.tokens for s in self.samples)

    def pixel_counts(self) -> list[int]:
        return sorted(p for s in self.samples for p in s.image_pixels)


def percentile(sorted_values: list[int], p: float) -> int:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    if not sorted_values:
        return 0
    return sorted_values[max(math.ceil(p / 100 * len(sorted_values)) - 1, 0)]


def distribution(values: list[int]) -> dict:
    return {"p50": percentile(values, 50), "p95": percentile(values, 95), "max": values[-1] if values else 0, "count": len(values)}


def tokenizer_dir(candidates) -> str | None:
    """The first of `candidates` (--tokenizer, --model, --model-config) that is a directory holding tokenizer files."""
    for candidate in candidates:
        if candidate and Path(candidate).is_dir() and any((Path(candidate) / f).is_file() for f in TOKENIZER_FILES):
            return str(candidate)
    return None


def find_tokenizer(spec, source) -> str:
    found = tokenizer_dir([spec.tokenizer, spec.model, spec.model_config])
    if found:
        return found
    if spec.tokenizer:
        raise UsageError("--tokenizer", f"no tokenizer files in {spec.tokenizer}", f"the directory needs one of {', '.join(TOKENIZER_FILES)}")
    where = spec.model or spec.model_config
    raise UsageError("--dataset", f"counting a sample's tokens needs the model's tokenizer, and {where} has none",
                     "use --model DIR with the tokenizer files, or add --tokenizer DIR (a local copy of the model's tokenizer/processor files)")


def datasetmedia_paths(dataset) -> list[str]:
    """--dataset's files: one path, or several (ms-swift's `dataset` list)."""
    return [dataset] if isinstance(dataset, str) else list(dataset)


def measure(spec, source, family, vision_plan) -> DatasetProfile:
    """Measure every sample of every file. `vision_plan` supplies the per-item wrapper tokens and
    the video worst case; `family` the per-image rule."""
    from transformers import AutoTokenizer

    paths = [Path(name).expanduser() for name in datasetmedia_paths(spec.dataset)]
    for path in paths:
        if not path.is_file():
            raise UsageError("--dataset", f"no file at {path}", "give an ms-swift JSONL file")
    tokenizer_dir = find_tokenizer(spec, source)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError("--tokenizer", f"the tokenizer in {tokenizer_dir} has no chat template", "use the model's own tokenizer files")
    max_pixels = spec.max_pixels or (family.default_max_pixels if family else None)
    samples, issues, lines = [], [], 0
    for path in paths:
        file_samples, file_issues, file_lines = _measure_file(path, tokenizer, source, family, vision_plan, max_pixels, spec)
        samples += file_samples
        issues += file_issues
        lines += file_lines
    where = ", ".join(str(path) for path in paths)
    if not samples and not spec.dataset_whole:
        # Raised before any problem line is printed: the message itself names the first one.
        if issues:
            file, line, problem = issues[0]
            raise UsageError("--dataset", f"no usable sample in {where} ({len(issues)} problem line(s); first: {file}:{line}: {problem})",
                             "fix that line and the others like it")
        raise UsageError("--dataset", f"{where} holds no sample", "write one ms-swift sample per line: a JSON object with a 'messages' list")
    return DatasetProfile(where, lines, samples, issues, tokenizer_dir)


def _measure_file(path: Path, tokenizer, source, family, vision_plan, max_pixels, spec) -> tuple[list[Sample], list[tuple[str, int, str]], int]:
    """(samples, (file, line, problem) for each line that cannot be measured, lines read) of one file.
    `spec.system`: the prompt the run gives a sample without a system message (ms-swift: the
    sample's own wins); `spec.root_image_dir`: the run's ROOT_IMAGE_DIR; `spec.dataset_whole`: the
    run's own data, whose media must be where ms-swift looks (not beside the file); `spec.rlhf`:
    what a sample becomes (DPO's chosen and rejected, GRPO's prompt: dataset_samples.sequences)."""
    rlhf_type = spec.rlhf.rlhf_type if spec.rlhf is not None else None
    vision = _Vision(path, source, family, vision_plan, max_pixels, spec)
    samples, issues, lines = [], [], 0
    for number, record, problem in records(path):
        lines = number
        parts, problem = (None, problem) if problem else sequences(record, spec.system, rlhf_type)
        counted, by_record = [], {}  # DPO's rejected reply shares the chosen's record: its images count once
        for messages, media, generation_prompt in parts or ():
            if id(media) not in by_record:
                by_record[id(media)] = vision.count(media)
            images, problem = by_record[id(media)]
            if problem:
                break
            try:
                text = len(_ids(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)))
            except Exception as exc:  # noqa: BLE001 - a template can reject a conversation (roles out of order...)
                problem = f"the chat template rejects it ({str(exc).splitlines()[0][:120]})"
                break
            counted.append((text, images))
        if problem:
            issues.append((str(path), number, problem))
            continue
        longest_text, longest_images = max(counted, key=lambda c: c[0] + c[1].tokens)
        seen = [media for media, _ in by_record.values()]  # each record's media once
        samples.append(Sample(number, longest_text + longest_images.tokens, max(c[1].count for c in counted),
                              [px for media in seen for px in media.pixels], [size for media in seen for size in media.sizes]))
    return samples, issues, lines


@dataclass
class _Media:
    count: int = 0
    tokens: int = 0
    pixels: list[int] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)


class _Vision:
    """The vision tokens of one record's images and videos, as the family's processor makes them."""

    def __init__(self, path, source, family, vision_plan, max_pixels, spec):
        self.path, self.source, self.family, self.plan, self.max_pixels, self.spec = path, source, family, vision_plan, max_pixels, spec
        self.root, self.beside = spec.root_image_dir, not spec.dataset_whole

    def count(self, record) -> tuple[_Media | None, str | None]:
        images, videos = media_paths(record, "images"), media_paths(record, "videos")
        family, path = self.family, self.path
        if (images or videos) and family is None:
            return None, "has images or videos, but the model is text-only"
        uncounted = uncounted_media(record, videos, family, self.spec)
        if uncounted:
            return None, uncounted
        media = _Media(count=len(images))
        for name in images:
            file = media_file(name, path, self.root, self.beside)
            if not file.is_file():
                return None, f"image not found: {name}" + ("" if self.beside else " (ms-swift looks from the launch directory, then under ROOT_IMAGE_DIR)")
            try:
                width, height = image_size(file)
            except UsageError:
                raise
            except Exception as exc:  # noqa: BLE001 - PIL raises many kinds
                return None, f"cannot read image {name} ({type(exc).__name__})"
            tokens = family.image_tokens_for_size(self.source.config, width, height, self.max_pixels)
            media.sizes.append((width, height))
            media.tokens += tokens + self.plan.extra_tokens
            media.pixels.append(tokens * family.pixels_per_token(self.source.config) if family.pixels_per_token else width * height)
        for name in videos:
            if not media_file(name, path, self.root, self.beside).is_file():
                return None, f"video not found: {name}"
            media.tokens += self.plan.video_tokens + self.plan.video_wrap
        return media, None


def _ids(encoded) -> list:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True).
    return encoded["input_ids"] if hasattr(encoded, "keys") else encoded


@dataclass
class Limits:
    max_length: int
    max_pixels: int | None
    images_per_sample: int
    truncated_samples: int
    downscaled_images: int


def choose_limits(profile: DatasetProfile, spec, family, position_limit: int | None) -> Limits:
    """The max of the data, or its --length-percentile; --max-length / --max-pixels cap them (the
    pixels were measured under --max-pixels, so they are capped already).
    Records how many samples the chosen limits cut."""
    p = spec.length_percentile or 100.0
    tokens = profile.token_counts()
    length = percentile(tokens, p)
    for cap in (spec.max_length, position_limit):
        if cap is not None:
            length = min(length, cap)
    max_pixels = None
    pixels = profile.pixel_counts()
    if family is not None and family.pixels_per_token is not None and pixels:
        max_pixels = percentile(pixels, p)  # the data's images as the processor resizes them (under --max-pixels: a cap)
    images = max(s.images for s in profile.samples)
    return Limits(max_length=length, max_pixels=max_pixels, images_per_sample=images,
                  truncated_samples=sum(t > length for t in tokens),
                  downscaled_images=sum(px > max_pixels for px in pixels) if max_pixels else 0)


# What one sample's length is, by the run it feeds (dataset_samples.sequences).
COUNTED = {None: "conversation", "dpo": "the longer of chosen and rejected", "grpo": "the prompt (completions: max_completion_length)"}


def _measured(profile: DatasetProfile, spec) -> dict:
    """What was measured, as the recipe keeps it: the files, what a sample's length is, the
    distribution, the problem lines."""
    return {
        "path": profile.path, "counted": COUNTED[spec.rlhf.rlhf_type if spec.rlhf is not None else None], "lines": profile.lines, "samples": len(profile.samples), "tokenizer": profile.tokenizer,
        "issues": [{"file": file, "line": line, "problem": problem} for file, line, problem in profile.issues[:100]],
        "issue_count": len(profile.issues),
        "tokens": distribution(profile.token_counts()), "image_pixels": distribution(profile.pixel_counts()),
    }


def record(profile: DatasetProfile, limits: Limits, spec) -> dict:
    """What the recipe keeps about the data and the limits it set."""
    return {
        **_measured(profile, spec),
        "length_percentile": spec.length_percentile, "max_length": limits.max_length, "max_pixels": limits.max_pixels,
        "images_per_sample": limits.images_per_sample, "truncated_samples": limits.truncated_samples,
        "downscaled_images": limits.downscaled_images,
    }


def from_dataset(spec, source):
    """Measure --dataset and return (spec with the data's max_length / max_pixels /
    images_per_sample, the profile, the recipe's record of it)."""
    from .families import Media, VisionPlan, family_for
    from .source import position_limit

    family = family_for(source.config)
    vplan = VisionPlan()
    if family is not None:  # for the wrapper tokens and the video worst case; the length check comes later
        vplan = family.plan(source.config, Media(images=1, max_pixels=spec.max_pixels, video_frames=spec.video_frames or 0,
                                                 video_max_pixels=spec.video_max_pixels))
    profile = measure(spec, source, family, vplan)
    if spec.dataset_whole and (profile.issues or not profile.samples):
        return spec, profile, _not_used(profile, spec)
    limits = choose_limits(profile, spec, family, position_limit(source.config))
    changes = {"max_length": limits.max_length}
    if family is not None:
        images = limits.images_per_sample if spec.images_per_sample is None else spec.images_per_sample
        if limits.max_pixels is not None:
            changes["max_pixels"] = limits.max_pixels
            if spec.image_resize is None and not spec.video_frames:  # the rule sizes a Qwen3-VL video too, whose frames are not measured
                changes["image_resize"] = image_rule(profile, family, source.config, limits.max_pixels)
            images = _images_that_fit(family, source.config, spec.replace(**changes), images, limits)
        changes["images_per_sample"] = images
    data = record(profile, limits, spec)
    data["images_per_sample"] = changes.get("images_per_sample", 0)
    return spec.replace(**changes), profile, data


def _not_used(profile: DatasetProfile, spec) -> dict:
    """The record of data whose every sample had to count (--swift-args's: the run meets them all)
    and some could not be: the probe keeps max_length and the media limits it was given."""
    tokens = profile.token_counts()
    return {**_measured(profile, spec), "used": False, "max_length": spec.max_length, "max_pixels": spec.max_pixels,
            "longer_than_max_length": sum(t > spec.max_length for t in tokens) if spec.max_length else 0}


def image_rule(profile: DatasetProfile, family, config, max_pixels: int) -> str:
    """The rule the data's own images need at the chosen limit: the largest grid under it
    (qwen-vl-utils') unless the processor makes more of one of them (a thin image it clamps past
    the limit), then the processor's worst case, which is at least that image's."""
    from ..spec import PROCESSOR, QWEN_VL_UTILS
    from .families import Media

    grid = family.plan(config, Media(max_pixels=max_pixels, image_resize=QWEN_VL_UTILS)).image_tokens
    sizes = {size for sample in profile.samples for size in sample.image_sizes}
    thin = any(family.image_tokens_for_size(config, w, h, max_pixels) > grid for w, h in sizes)
    return PROCESSOR if thin else QWEN_VL_UTILS


def _images_that_fit(family, config, spec, images: int, limits: Limits) -> int:
    """The data's most images per sample, each at the chosen pixel limit, can be more vision
    than any one sample holds (and more than max_length): probe the most of them that fit."""
    from ..spec import PROCESSOR
    from .families import Media

    while images > 1:
        plan = family.plan(config, Media(images=images, max_pixels=limits.max_pixels, video_frames=spec.video_frames or 0,
                                         video_max_pixels=spec.video_max_pixels, image_resize=spec.image_resize or PROCESSOR))
        if plan.tokens + 1 <= limits.max_length:
            break
        images -= 1
    return images
