"""Gemma 3 (vision), InternVL (transformers' `internvl`) and Qwen2.5-Omni's thinker with video,
issue #14's model coverage: the worst case agrees with each processor's own rule, the batch is what the model reads, ms-swift's default
freezing leaves only the language model trainable, and the plan's peaks equal the sim device's."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from autotune.devices import SimDevice
from autotune.devices.fake import FakeDevice
from autotune.errors import UsageError
from autotune.model.families import Media, family_for
from autotune.model.source import resolve
from autotune.plan.measure import build_plan_workload, measure_candidate, plan_source
from autotune.spec import ProbeSpec
from autotune.trials.trial import run_eval_trial, run_train_trial
from autotune.model.workload import load_workload

GiB = 2**30


def _gemma3_processor_count(config) -> int:
    """Gemma3Processor's own count (its _get_num_multimodal_tokens) for an image of any size."""
    from transformers import Gemma3Processor

    proc = SimpleNamespace(image_seq_length=config.mm_tokens_per_image)
    return Gemma3Processor._get_num_multimodal_tokens(proc, image_sizes=[(480, 640)])["num_image_tokens"][0]


def _internvl_processor(config):
    """The published InternVL3-hf image processor settings (tiles of the tower's size, at most 12)."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    size = config.vision_config.image_size
    return GotOcr2ImageProcessorPil(crop_to_patches=True, min_patches=1, max_patches=12, size={"height": size[0], "width": size[1]})


def _plan_matches_sim(name, spec_kwargs):
    spec = ProbeSpec(model_config=name, **spec_kwargs)
    measure = measure_candidate(build_plan_workload(plan_source(spec), spec, FakeDevice()), "sdpa", False)
    assert measure.error is None
    real = load_workload(resolve(None, name), spec.replace(device="sim", gpu_memory=GiB), SimDevice(GiB))
    trainable = {n for n, p in real.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.language_model.", "lm_head.")) for n in trainable)  # ms-swift's defaults
    for b in (1, 2):
        train, evaluate = run_train_trial(real, b, 3, GiB).peak_bytes, run_eval_trial(real, b, 2, GiB).peak_bytes
        assert abs(measure.train_peaks[b] - train) <= 0.02 * train and abs(measure.eval_peaks[b] - evaluate) <= 0.02 * evaluate
    return real


def test_gemma3_worst_case_batch_and_plan():
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    config = resolve(None, "tiny-gemma3").config
    vplan = family_for(config).plan(config, Media(images=2))
    assert vplan.image_tokens == config.mm_tokens_per_image == _gemma3_processor_count(config)
    assert vplan.tokens == 2 * (4 + 2)  # <start_of_image> ... <end_of_image> around each
    size = config.vision_config.image_size
    processor = Gemma3ImageProcessorPil(size={"height": size, "width": size})
    pixels = processor(images=Image.fromarray(np.zeros((480, 640, 3), dtype=np.uint8)), return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape[-2:]) == vplan.image_grid
    real = _plan_matches_sim("tiny-gemma3", dict(max_length=48, images_per_sample=2))
    batch = real.make_batch(2)
    assert (batch["input_ids"] == config.image_token_id).sum() == 2 * 2 * 4 == (batch["token_type_ids"] == 1).sum()
    assert torch.isfinite(real.model(**batch).loss)  # get_placeholder_mask checks the feature count
    with pytest.raises(UsageError, match="^--max-pixels: Gemma 3 resizes every image"):
        family_for(config).plan(config, Media(max_pixels=1000))


def test_internvl_worst_case_is_the_processors_most_tiles_batch_and_plan():
    config = resolve(None, "tiny-internvl").config
    family = family_for(config)
    vplan = family.plan(config, Media(images=1))
    processor = _internvl_processor(config)
    side = config.vision_config.image_size[0]
    # the most tiles any image gets, by the processor's own count (12 tiles and the thumbnail)
    sizes = [(h, w) for h in (10, 56, 100, 150, 168, 300, 700) for w in (10, 56, 100, 224, 300, 700)]
    counts = {s: processor.get_number_of_image_patches(*s) for s in sizes}
    assert max(counts.values()) == 13 == vplan.image_grid[0]
    assert vplan.image_tokens == 13 * config.image_seq_length
    for (h, w), tiles in counts.items():
        assert family.image_tokens_for_size(config, w, h) == tiles * config.image_seq_length
    # an image of the worst grid's shape goes through the processor into exactly that many tiles
    columns, rows = 4, 3
    image = Image.fromarray(np.zeros((rows * side, columns * side, 3), dtype=np.uint8))
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    real = _plan_matches_sim("tiny-internvl", dict(max_length=64))
    batch = real.make_batch(1)
    assert batch["pixel_values"].shape == pixels.shape
    assert (batch["input_ids"] == config.image_token_id).sum() == vplan.image_tokens
    assert torch.isfinite(real.model(**batch).loss)


def _frames_as_given():
    """transformers' BaseVideoProcessor with its torchvision steps off (resize, normalize, RGB
    conversion: torchvision is not a dependency): frames given at the tower's size come out as
    `pixel_values_videos`, one row per frame, as InternVLVideoProcessor's resize would leave them."""
    from transformers.video_processing_utils import BaseVideoProcessor

    return type("FramesAsGiven", (BaseVideoProcessor,), {"do_resize": False, "do_normalize": False, "do_convert_rgb": False})()


def _byte_tokenizer():
    """A byte-level BPE tokenizer with no merges (every byte one token: the most a byte-level
    tokenizer makes of a text) and InternVL's special tokens, as the InternVL3-hf tokenizer
    config names them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, extra_special_tokens={
        "start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})


def test_internvl_video_is_what_the_processor_makes_of_it_and_plans_as_the_sim_probes():
    """--video-frames for InternVL: InternVLProcessor itself (its <video> expansion and its merge
    of image tiles and frames into pixel_values) makes of an image and an N-frame video exactly
    the worst case's tokens, placeholder positions and pixel rows; the model reads that batch; the
    plan's peaks equal the sim device's; ms-swift's VIDEO_SEGMENTS goes into the recipe's env."""
    from transformers import InternVLProcessor

    from autotune.model.multimodal import swift_env
    from autotune.model.processor import images_only

    config = resolve(None, "tiny-internvl").config
    family = family_for(config)
    side = config.vision_config.image_size[0]
    processor = images_only(InternVLProcessor)(image_processor=_internvl_processor(config), tokenizer=_byte_tokenizer(),
                                               image_seq_length=config.image_seq_length)
    processor.video_processor = _frames_as_given()
    image = Image.fromarray(np.zeros((3 * side, 4 * side, 3), dtype=np.uint8))  # the worst grid: 12 tiles and the thumbnail
    for frames in (1, 3, 12):  # 12: two-digit frame labels
        video = np.zeros((frames, side, side, 3), dtype=np.uint8)
        made = processor(text=["x<IMG_CONTEXT><video>"], images=[image], videos=[video], return_tensors="pt")
        vplan = family.plan(config, Media(images=1, video_frames=frames))
        ids = made["input_ids"][0]
        assert len(ids) == 1 + vplan.tokens and vplan.video_grid == (frames, side, side)
        assert (ids == processor.image_token_id).sum() == vplan.image_tokens + vplan.video_tokens == (13 + frames) * config.image_seq_length
        batch = family.inputs(config, vplan, 2, len(ids) + 5, "cpu")
        assert torch.equal(batch["input_ids"][0, :len(ids)] == config.image_token_id, ids == processor.image_token_id)
        assert batch["pixel_values"].shape == (2 * made["pixel_values"].shape[0], *made["pixel_values"].shape[1:])
    real = _plan_matches_sim("tiny-internvl", dict(max_length=96, images_per_sample=0, video_frames=4))
    batch = real.make_batch(2)
    assert batch["pixel_values"].shape[0] == 2 * 4 and (batch["input_ids"] == config.image_token_id).sum() == 2 * 4 * config.image_seq_length
    assert torch.isfinite(real.model(**batch).loss)  # the model checks the features against the placeholders
    assert swift_env(family, real.setup.vision, real.spec) == {"VIDEO_SEGMENTS": "4"}
    with pytest.raises(UsageError, match="^--video-max-pixels: InternVL resizes every video frame"):
        family.plan(config, Media(video_frames=4, video_max_pixels=3136))
    from autotune.model.training_setup import plan_inputs

    # 9 frames are 134 tokens: too long for 112, which holds 7 (the labels counted)
    with pytest.raises(UsageError, match=r"^--video-frames: the vision input alone is 134 tokens \(a video of 9 frames x 4 tokens "
                                         r"\+ 98 around them = 134 tokens\).*use --video-frames 7 or fewer, or --max-length 135 or more$"):
        plan_inputs(resolve(None, "tiny-internvl"), ProbeSpec(model_config="tiny-internvl", max_length=112, images_per_sample=0, video_frames=9))


def test_qwen25_omni_thinker_video_worst_case_and_eval_only_generation():
    """Qwen2.5-Omni's thinker with a video (the benchmark case): the Qwen2.5-VL rule's tokens as
    the model reads them, training, and evaluation alone with generate() on the sim device."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    from autotune.trials.trial import run_trial

    name = "tiny-qwen2.5-omni-thinker"
    config = resolve(None, name).config
    media = dict(max_pixels=3136, video_frames=7, video_max_pixels=6272, video_min_pixels=3136)
    vplan = family_for(config).plan(config, Media(images=1, **media))
    t, h, w = vplan.video_grid
    # 7 frames pad to 4 temporal patches; under 6272 pixels the processor's worst frame is a thin
    # one, 1 x 40 merged patches (its short side clamped), which it makes of a 15 x 3000 frame
    assert t == 4 and smart_resize(15, 3000, 28, 3136, 6272) == (h * 14, w * 14) == (28, 1120)
    assert vplan.video_tokens == t * h * w // 4 == 4 * 40
    real = _plan_matches_sim(name, dict(max_length=200, **media))  # the plan runs under fake tensors too
    spec = real.spec
    batch = real.make_batch(2)
    assert (batch["input_ids"] == config.video_token_id).sum() == 2 * vplan.video_tokens
    assert batch["video_second_per_grid"].tolist() == [1.0, 1.0] and "mm_token_type_ids" not in batch
    # No audio ids in the text: one would send the positions looking for an audio clip.
    audio = (config.audio_token_id, config.audio_start_token_id, config.audio_end_token_id)
    assert not torch.isin(real.make_batch(64)["input_ids"], torch.tensor(audio)).any()
    assert torch.isfinite(real.model(**batch).loss)
    real.spec = spec.replace(task="eval", predict_with_generate=True, max_new_tokens=4)
    evaluation = run_trial(real, "eval", {"per_device_eval_batch_size": 2, **real.spec.eval_keep_settings()}, 2, GiB)
    assert evaluation.fits and evaluation.steps == 2


def test_qwen25_omni_thinker_audio_clips_as_the_processor_makes_them():
    """--audio-clips: the processor's Whisper feature extractor pads or cuts every clip to 30 s,
    so a 45-second clip is the worst case: its frames and token count as the processor computes
    them, the placeholders the model reads, and the plan's peaks against the sim device's."""
    from transformers import WhisperFeatureExtractor
    from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import _get_feat_extract_output_lengths

    name = "tiny-qwen2.5-omni-thinker"
    config = resolve(None, name).config
    extractor = WhisperFeatureExtractor(feature_size=config.audio_config.num_mel_bins)
    features = extractor([np.zeros(16000 * 45, dtype=np.float32)], sampling_rate=16000, padding="max_length",
                         return_attention_mask=True, return_tensors="pt")
    frames = int(features["attention_mask"].sum())
    vplan = family_for(config).plan(config, Media(images=0, audio_clips=2))
    assert (vplan.audios, vplan.audio_frames, vplan.audio_tokens) == (2, frames, int(_get_feat_extract_output_lengths(torch.tensor(frames))))
    assert vplan.tokens == 2 * (750 + 2)
    real = _plan_matches_sim(name, dict(max_length=800, images_per_sample=0, audio_clips=1))
    batch = real.make_batch(2)
    assert (batch["input_ids"] == config.audio_token_id).sum() == 2 * vplan.audio_tokens
    assert tuple(batch["input_features"].shape) == (2, config.audio_config.num_mel_bins, frames)
    assert torch.isfinite(real.model(**batch).loss)
    from autotune.model.training_setup import plan_inputs

    with pytest.raises(UsageError, match="^--audio-clips: qwen2-vl has no audio tower"):
        plan_inputs(resolve(None, "tiny-qwen2-vl"), ProbeSpec(model_config="tiny-qwen2-vl", max_length=64, audio_clips=1))


def test_qwen25_omni_video_with_its_sound_track_as_the_processor_lays_it_out():
    """--use-audio-in-video: the video's sound track is one more 30-second clip (750 tokens, as the
    feature extractor makes of a 45-second track), interleaved with the frames' tokens in 2-second
    chunks exactly as the processor's own `replace_video_with_audio_token` writes them; the model
    reads that batch; the plan's peaks equal the sim device's; ms-swift's USE_AUDIO_IN_VIDEO goes
    into the recipe's env."""
    from transformers import Qwen2_5OmniProcessor, WhisperFeatureExtractor

    from autotune.model.multimodal import swift_env
    from autotune.model.training_setup import plan_inputs

    name = "tiny-qwen2.5-omni-thinker"
    config = resolve(None, name).config
    family = family_for(config)
    extractor = WhisperFeatureExtractor(feature_size=config.audio_config.num_mel_bins)
    track, _ = Qwen2_5OmniProcessor._process_audio(SimpleNamespace(feature_extractor=extractor, replace_audio_token=lambda *a, **k: ""),
                                                [np.zeros(16000 * 45, dtype=np.float32)], sampling_rate=16000, return_attention_mask=True,
                                                return_tensors="pt")
    marks = {config.video_token_id: "V", config.audio_token_id: "A", config.audio_start_token_id: "<",
             config.audio_end_token_id: ">", config.vision_start_token_id: "[", config.vision_end_token_id: "]"}
    for frames in (2, 8):  # one chunk of frames; two, then the rest of the track
        media = Media(images=0, video_frames=frames, video_max_pixels=6272, video_min_pixels=3136, audio_in_video=True)
        vplan = family.plan(config, media)
        grid = vplan.video_grid
        written = Qwen2_5OmniProcessor.replace_video_with_audio_token(
            SimpleNamespace(audio_bos_token="<", audio_eos_token=">", video_token="V", audio_token="A",
                            video_processor=SimpleNamespace(merge_size=config.vision_config.spatial_merge_size),
                            get_chunked_index=lambda *a: Qwen2_5OmniProcessor.get_chunked_index(None, *a)),
            {"video_grid_thw": np.array([grid]), "video_second_per_grid": [2 / 2.0]}, 0, {"num_audio_tokens": track["num_audio_tokens"].numpy()}, 0,
            position_id_per_seconds=Qwen2_5OmniProcessor.position_id_per_seconds, seconds_per_chunk=Qwen2_5OmniProcessor.seconds_per_chunk)
        assert vplan.video_audio_tokens == int(track["num_audio_tokens"][0]) == 750
        ids = family.inputs(config, vplan, 1, vplan.tokens + 3, "cpu")["input_ids"][0].tolist()
        assert "".join(marks.get(i, ".") for i in ids) == ".[" + written + "].."  # the chat template's vision start/end around it
    real = _plan_matches_sim(name, dict(max_length=900, images_per_sample=0, video_frames=4, video_max_pixels=6272, video_min_pixels=3136,
                                        use_audio_in_video=True))
    batch = real.make_batch(2)
    assert batch["use_audio_in_video"] is True and tuple(batch["input_features"].shape) == (2, config.audio_config.num_mel_bins, 3000)
    assert (batch["input_ids"] == config.audio_token_id).sum() == 2 * 750
    assert torch.isfinite(real.model(**batch).loss)
    assert swift_env(family, real.setup.vision, real.spec)["USE_AUDIO_IN_VIDEO"] == "true"
    from autotune.check import vision_fields
    from autotune.model.multimodal import recipe_record

    settings = SimpleNamespace(freeze_vit=True, freeze_aligner=True, freeze_llm=False, max_pixels=None, video_max_pixels=6272, video_frames=4,
                               video_min_pixels=3136, use_audio_in_video=None, image_resize=None)  # a recipe from before the setting: the record says it
    recipe = SimpleNamespace(settings=settings, multimodal=recipe_record(real.setup, real.spec))
    assert vision_fields(recipe)["use_audio_in_video"] is True  # `check` rebuilds the worst case with the track
    from autotune.cli import build_parser

    assert build_parser().parse_args(["probe", "--model-config", name, "--use-audio-in-video", "true"]).use_audio_in_video is True
    with pytest.raises(UsageError, match="^--use-audio-in-video: internvl has no audio tower"):
        plan_inputs(resolve(None, "tiny-internvl"), ProbeSpec(model_config="tiny-internvl", max_length=64, video_frames=2, use_audio_in_video=True))
    with pytest.raises(UsageError, match="^--use-audio-in-video: needs a video"):
        ProbeSpec(model_config=name, max_length=64, use_audio_in_video=True)
    with pytest.raises(UsageError, match=r"^--video-frames: .* \+ its sound track's 750 \(30 s\).*--use-audio-in-video false"):
        plan_inputs(resolve(None, name), ProbeSpec(model_config=name, max_length=700, images_per_sample=0, video_frames=4,
                                                   video_max_pixels=6272, use_audio_in_video=True))


@pytest.mark.parametrize("version", ["4.6", "3.12"])
def test_check_reads_use_audio_in_video_back_from_the_ms_swift_file(tmp_path, version):
    """`check --swift-args` checks the sound track the launch will load: ms-swift's Qwen2.5-Omni
    template loads it only with USE_AUDIO_IN_VIDEO (default false). A 4.x file's ENV block says so;
    a 3.x file has none (its header says to export the variables), so the shell's exports count,
    and with nothing exported the recipe's value is checked and a note says to export it.
    LLaMA-Factory has an argument of that name."""
    import dataclasses

    from autotune.check import spec_for
    from autotune.cli.check import with_swift_args
    from autotune.emit import swift
    from autotune.model.training_setup import plan_inputs
    from launch_recipes import variant

    name = "tiny-qwen2.5-omni-thinker"
    r = variant("base")
    # 2 frame pairs of 258 tokens at most (qwen-vl-utils' per-frame floor; a thin frame scaled up) + 750 of sound
    settings = dataclasses.replace(r.settings, freeze_vit=True, freeze_aligner=True, freeze_llm=False, max_length=1400, video_max_pixels=6272,
                                   video_frames=4, use_audio_in_video=True,
                                   env={"VIDEO_MAX_PIXELS": "6272", "FPS_MAX_FRAMES": "4", "USE_AUDIO_IN_VIDEO": "true"})
    recipe = dataclasses.replace(r, settings=settings, model=dataclasses.replace(r.model, path=name, max_length=1400),
                                 multimodal={"family": "qwen2_5_omni", "images_per_sample": 0, "video_audio_tokens": 750})
    text = swift.render_yaml(recipe, version)
    from autotune.emit import llamafactory

    assert "use_audio_in_video: true" in llamafactory.render(recipe)  # LLaMA-Factory's own argument
    tracks = {}
    for told in ("true", "false", None):
        edited = text if told == "true" else text.replace("USE_AUDIO_IN_VIDEO: 'true'", "" if told is None else "USE_AUDIO_IN_VIDEO: 'false'")
        assert (edited != text) == (told != "true" and version.startswith("4."))
        path = tmp_path / f"swift-{told}.yaml"
        path.write_text(edited)
        checked, note = with_swift_args(recipe, str(path), environ={})
        spec = spec_for(checked, "sim", 2**30, 0.1)
        tracks[told] = plan_inputs(resolve(None, name), spec).vision.video_audio_tokens
        # a 4.x file that sets the track off is checked so, and the note says it replaced the recipe's
        assert (note is None) == (version.startswith("4.") and told != "false")
        if version.startswith("4.") and told == "false":
            assert "USE_AUDIO_IN_VIDEO=false" in note and "replaces the recipe's true" in note
    if version.startswith("4."):
        assert tracks == {"true": 750, "false": 0, None: 0}
        return
    assert tracks == {"true": 750, "false": 750, None: 750}
    assert "export VIDEO_MAX_PIXELS=6272 FPS_MAX_FRAMES=4 before the launch" in note
    exported = {"VIDEO_MAX_PIXELS": "6272", "FPS_MAX_FRAMES": "4", "PATH": "/bin"}
    for told, track in (("true", 750), (None, 0)):
        checked, note = with_swift_args(recipe, str(path), environ=exported | ({"USE_AUDIO_IN_VIDEO": told} if told else {}))
        assert note is None and plan_inputs(resolve(None, name), spec_for(checked, "sim", 2**30, 0.1)).vision.video_audio_tokens == track
