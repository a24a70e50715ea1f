"""Qwen2.5-Omni's thinker (`qwen2_5_omni_thinker`, the part ms-swift fine-tunes and a benchmark
runs): Qwen2.5-VL's vision input rules (the same smart_resize, 14-pixel patches merged 2x2,
frames paired by a temporal patch of 2, the same processor counts: grid / merge^2 tokens
between <|vision_bos|> and <|vision_eos|>), a Whisper-style audio tower, and a Qwen2 language
model with M-RoPE positions found from the vision-start tokens.

Video positions advance by `video_second_per_grid` x position_id_per_seconds per temporal
patch; the processor sets temporal_patch_size / fps = 2 / 2.0 = 1 second (its hard-coded
default fps).

Audio clips (`--audio-clips`): the processor's Whisper feature extractor pads or cuts every clip
to 30 s (`padding="max_length"`, truncation on): 3000 mel frames, which the audio tower's
convolution and pooling turn into 750 tokens (the processor's `_get_feat_extract_output_lengths`),
between <|audio_bos|> and <|audio_eos|>. So the worst clip is any clip of 30 s or more.

A video's own sound track (`--use-audio-in-video`, ms-swift's USE_AUDIO_IN_VIDEO: its template
loads the track and the processor runs with `use_audio_in_video`, now `load_audio_from_video`):
the track is one more clip, padded or cut to 30 s like the others (750 tokens), and the processor
writes the video as <|vision_bos|><|audio_bos|>, then chunks of 2 s alternating (the frames'
tokens whose time x position_id_per_seconds falls in the chunk, then the track's tokens in it:
`replace_video_with_audio_token` and its `get_chunked_index`), <|audio_eos|><|vision_eos|>. The
model finds the positions from that layout when `use_audio_in_video` reaches its forward, so the
batch carries it.

Module split (ms-swift's model_arch for qwen2_5_omni, without the `thinker.` prefix): towers
`model.visual`, `model.audio_tower`; aligners `model.visual.merger`, `model.audio_tower.proj`;
language model `model.language_model`, `lm_head`.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import torch

from .base import Family, Media, VisionPlan
from .qwen2_vl import QWEN2_VL, _factor, image_tokens_for_size
from .qwen2_vl import inputs as qwen2_vl_inputs
from .qwen2_vl import plan as qwen2_vl_plan

SECONDS_PER_GRID = 1.0  # temporal_patch_size 2 / the processor's default fps 2.0


def plan_media(config, media: Media) -> VisionPlan:
    """Qwen2.5-VL's image and video rule, the 30-second audio clips, and each video's sound track."""
    vplan = qwen2_vl_plan(config, media, limits=QWEN2_VL)
    track = media.audio_in_video and vplan.videos
    if not media.audio_clips and not track:
        return vplan
    frames, tokens = _clip(config)
    vplan = dataclasses.replace(vplan, audio_frames=frames)
    if media.audio_clips:
        vplan = dataclasses.replace(vplan, audios=media.audio_clips, audio_tokens=tokens)
    if track:  # <|vision_bos|><|audio_bos|> ... <|audio_eos|><|vision_eos|>
        vplan = dataclasses.replace(vplan, video_audio_tokens=tokens, video_extra_tokens=4)
    return vplan


def _clip(config) -> tuple[int, int]:
    """(mel frames, tokens) of the worst clip: 30 s, as the feature extractor pads or cuts it."""
    from transformers import WhisperFeatureExtractor
    from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import _get_feat_extract_output_lengths

    frames = WhisperFeatureExtractor(feature_size=config.audio_config.num_mel_bins).nb_max_frames  # 30 s of 10 ms hops
    return frames, int(_get_feat_extract_output_lengths(torch.tensor(frames)))


def interleaved(vplan: VisionPlan) -> list[tuple[str, int]]:
    """The video's tokens with its sound track's, in the processor's order: ("video" | "audio",
    count) per chunk, by the processor's own chunking (`get_chunked_index`) of the frames'
    times (temporal patch x seconds per patch x position_id_per_seconds) and the track's tokens."""
    import numpy as np
    from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import Qwen2_5OmniProcessor as P

    patches = vplan.video_grid[0]
    per_patch = vplan.video_tokens // patches
    per_chunk = int(P.position_id_per_seconds * P.seconds_per_chunk)
    times = np.repeat(np.arange(patches) * SECONDS_PER_GRID * P.position_id_per_seconds, per_patch)
    video = P.get_chunked_index(None, times, per_chunk)  # `self` is unused
    audio = P.get_chunked_index(None, np.arange(vplan.video_audio_tokens), per_chunk)
    order = []
    for j in range(max(len(video), len(audio))):
        order += [("video", e - s) for s, e in video[j:j + 1]] + [("audio", e - s) for s, e in audio[j:j + 1]]
    return [(kind, n) for kind, n in order if n]


def inputs(config, vplan, batch_size: int, max_length: int, device) -> dict:
    """Qwen2-VL's worst-case batch; the thinker finds positions from the vision-start tokens
    (no mm_token_type_ids) and needs each video's seconds per temporal patch. Audio clips come
    after the vision items, each wrapped in <|audio_bos|> ... <|audio_eos|>."""
    # Text that happened to hold an audio-start id would make the model look for an audio clip.
    audio = tuple(getattr(config, name) for name in ("audio_token_id", "audio_start_token_id", "audio_end_token_id")
                  if getattr(config, name, None) is not None)
    batch = qwen2_vl_inputs(config, vplan, batch_size, max_length, device, avoid=audio)
    batch.pop("mm_token_type_ids")
    if vplan.videos:
        batch["video_second_per_grid"] = torch.full((batch_size * vplan.videos,), SECONDS_PER_GRID, device=device)
    if vplan.video_audio_tokens:
        _add_sound_tracks(config, vplan, batch)
    if vplan.audios:
        _add_audio(config, vplan, batch)
    clips = batch_size * (vplan.audios + (vplan.videos if vplan.video_audio_tokens else 0))
    if clips:
        # float32 log-mel features, as the feature extractor returns them; every frame real (30 s or more).
        batch["input_features"] = torch.randn(clips, config.audio_config.num_mel_bins, vplan.audio_frames, device=device)
        batch["feature_attention_mask"] = torch.ones(clips, vplan.audio_frames, dtype=torch.long, device=device)
    return batch


def _add_sound_tracks(config, vplan, batch: dict) -> None:
    """Rewrite each video (Qwen2-VL's layout left one run of video tokens) as the processor
    writes a video with its sound track; the template masks all of it in the labels."""
    ids, labels = batch["input_ids"], batch["labels"]
    pos = 1 + vplan.image_part
    token = {"video": config.video_token_id, "audio": config.audio_token_id}
    for _ in range(vplan.videos):
        labels[:, pos:pos + vplan.video_tokens + vplan.video_audio_tokens + vplan.video_wrap] = -100
        ids[:, pos], ids[:, pos + 1] = config.vision_start_token_id, config.audio_start_token_id
        pos += 2
        for kind, n in interleaved(vplan):
            ids[:, pos:pos + n] = token[kind]
            pos += n
        ids[:, pos], ids[:, pos + 1] = config.audio_end_token_id, config.vision_end_token_id
        pos += 2
    batch["use_audio_in_video"] = True  # the model's positions follow this layout only when told


def _add_audio(config, vplan, batch: dict) -> None:
    ids, labels = batch["input_ids"], batch["labels"]
    pos = 1 + vplan.image_part + vplan.video_part
    for _ in range(vplan.audios):
        n = vplan.audio_tokens
        ids[:, pos] = config.audio_start_token_id
        ids[:, pos + 1:pos + 1 + n] = config.audio_token_id
        ids[:, pos + 1 + n] = config.audio_end_token_id
        labels[:, pos:pos + n + 2] = -100  # the template masks the media placeholders
        pos += n + 2


FAMILY = Family(
    name="qwen2.5-omni", model_types=("qwen2_5_omni_thinker",), model_class="Qwen2_5OmniThinkerForConditionalGeneration",
    vision_tower=("model.visual", "model.audio_tower"), aligner=("model.visual.merger", "model.audio_tower.proj"),
    language_model=("model.language_model", "lm_head"),
    plan=plan_media, inputs=inputs, default_max_pixels=QWEN2_VL.default_max_pixels,
    default_video_max_pixels=QWEN2_VL.default_video_max_pixels, supports_video=True, supports_audio=True,
    video_frames_env="FPS_MAX_FRAMES",
    image_tokens_for_size=partial(image_tokens_for_size, limits=QWEN2_VL),
    pixels_per_token=lambda config: _factor(config.vision_config) ** 2, min_pixels=QWEN2_VL.min_pixels,
)
