"""What a vision-language family tells the probe: how to build the model, which modules are the
vision tower / aligner / language model (ms-swift's `model_arch` split), how many tokens an
image or video becomes, and the worst-case batch. One small module per family registers one
`Family`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Media:
    """The worst-case media of one sample, as the user limits it."""

    images: int = 1  # images per sample
    max_pixels: int | None = None  # None: the family's processor default
    video_frames: int = 0  # frames per video (0: no video)
    video_max_pixels: int | None = None  # per frame; None: the family's default
    video_min_pixels: int | None = None  # per frame (ms-swift's VIDEO_MIN_PIXELS); None: the family's default
    audio_clips: int = 0  # audio clips per sample (families with an audio tower)
    audio_in_video: bool = False  # each video's sound track too (Qwen2.5-Omni's use_audio_in_video)
    image_resize: str = "processor"  # the rule that sizes a Qwen-VL image (spec.IMAGE_RULES)


@dataclass(frozen=True)
class VisionPlan:
    """What the media becomes inside one sample: tokens the language model sees, and the grids
    or image sizes the vision tower gets. `extra_tokens` are per-item wrappers (vision start/end)."""

    image_tokens: int = 0  # per image
    video_tokens: int = 0  # per video
    images: int = 0
    videos: int = 0
    extra_tokens: int = 0  # per item
    image_grid: tuple = ()  # family-specific: (t, h, w) in patches, or (height, width) in pixels
    image_source: tuple = ()  # (height, width) in pixels of the image the resize makes the worst one of; (): the grid's own
    video_grid: tuple = ()
    max_pixels: int | None = None
    video_max_pixels: int | None = None
    video_min_pixels: int | None = None  # as the user set it (None: the rule's default)
    audio_tokens: int = 0  # per clip
    audios: int = 0
    audio_frames: int = 0  # mel frames per clip, as the feature extractor pads them
    # Per video, the tokens around its placeholders when they are not `extra_tokens` (InternVL
    # writes a label and <img> ... </img> around every frame); None: extra_tokens.
    video_extra_tokens: int | None = None
    video_step: int = 1  # frames per temporal patch: --video-frames moves in these steps
    video_audio_tokens: int = 0  # per video, its sound track's tokens (0: none), interleaved with the frames'

    @property
    def video_wrap(self) -> int:
        return self.extra_tokens if self.video_extra_tokens is None else self.video_extra_tokens

    @property
    def image_part(self) -> int:
        return self.images * (self.image_tokens + self.extra_tokens)

    @property
    def video_part(self) -> int:
        return self.videos * (self.video_tokens + self.video_audio_tokens + self.video_wrap)

    @property
    def audio_part(self) -> int:
        return self.audios * (self.audio_tokens + self.extra_tokens)

    @property
    def tokens(self) -> int:
        return self.image_part + self.video_part + self.audio_part


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    model_class: str  # transformers class name
    vision_tower: tuple[str, ...]  # module-name prefixes, as in ms-swift's model_arch
    aligner: tuple[str, ...]
    language_model: tuple[str, ...]
    plan: object  # (config, Media) -> VisionPlan; raises UsageError when a limit does not apply
    inputs: object  # (config, VisionPlan, batch_size, max_length, device) -> dict of model inputs
    default_max_pixels: int | None = None
    default_video_max_pixels: int | None = None
    supports_video: bool = False
    video_frames_env: str | None = None  # ms-swift's environment variable for the frames per video
    supports_audio: bool = False
    image_tokens_for_size: object = None  # (config, width, height, max_pixels) -> tokens (for --dataset)
    pixels_per_token: object = None  # config -> pixels one token covers, where --max-pixels applies
    min_pixels: int | None = None  # the processor's smallest image (where --max-pixels applies)
    processor: object = None  # (config, VisionPlan) -> model/processor.Processing for TRL's image path; None: not yet
    swift_env: object = None  # VisionPlan -> {variable: value}: more of ms-swift's environment the worst case holds
    notes: dict = field(default_factory=dict)

    def model_cls(self):
        import transformers

        return getattr(transformers, self.model_class)


def text_ids(config, batch_size: int, length: int, device, avoid: tuple[int, ...]) -> torch.Tensor:
    """Random text tokens that never collide with the placeholder ids (a collision would make the
    model count one placeholder too many)."""
    text_config = config.get_text_config()
    ids = torch.randint(0, text_config.vocab_size, (batch_size, length), device=device)
    for token in avoid:
        ids = torch.where(ids == token, torch.zeros_like(ids), ids)
    return ids
