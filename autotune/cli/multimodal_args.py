"""`probe` flags for vision-language models, QLoRA's optimizer choice and --dataset (issue #5),
kept apart from the core flags; the names follow ms-swift."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from ..spec import IMAGE_RULES, OPTIMIZERS

EXAMPLES = """\
  # Qwen2.5-VL-7B weights-free: LoRA with the ViT frozen (ms-swift's default), 1003520-pixel images
  python -m autotune probe --model-config recipes/configs/qwen2.5-vl-7b/config.json --train-type lora \\
      --max-length 4096 --max-pixels 1003520 --out qwen25vl-lora.yaml

  # full fine-tune with nothing frozen, a 16-frame video per sample, on a simulated 80 GB card
  python -m autotune probe --model-config tiny-qwen2-vl --device sim --gpu-memory 80GB --max-length 2048 \\
      --freeze-vit false --freeze-aligner false --video-frames 16 --video-max-pixels 200704

  # your own data: max_length and max_pixels from the 95th percentile of its samples
  python -m autotune probe --model ./Qwen2.5-VL-7B-Instruct --dataset train.jsonl --length-percentile 95
"""


def boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def number_or_auto(convert, what: str):
    """An argparse type: a number (`convert` of the text), or "auto"."""

    def parse(text: str):
        if text.strip().lower() == "auto":
            return "auto"
        try:
            return convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} or auto, got {text!r}") from None

    return parse


# A whole number, or "auto": search the largest value that fits (issue #14).
whole_or_auto = number_or_auto(int, "a whole number")


def add_arguments(parser) -> None:
    train = parser.add_argument_group("optimizer and quantization")
    train.add_argument("--optim", choices=OPTIMIZERS, default="adamw_torch_fused",
                       help="TrainingArguments optim: AdamW (the Trainer default), or bitsandbytes' 8-bit / paged AdamW (default: adamw_torch_fused)")
    vl = parser.add_argument_group("vision-language models (ms-swift names and defaults)")
    vl.add_argument("--freeze-vit", type=boolean, metavar="true|false", help="freeze the vision tower (ms-swift default: true)")
    vl.add_argument("--freeze-aligner", type=boolean, metavar="true|false", help="freeze the projector/merger (ms-swift default: true)")
    vl.add_argument("--freeze-llm", type=boolean, metavar="true|false", help="freeze the language model (ms-swift default: false)")
    vl.add_argument("--max-pixels", type=whole_or_auto, metavar="N|auto",
                    help="largest image, in pixels, after the processor's resize (Qwen2-VL family default: 12845056, the published "
                         "processor's); auto: the largest that fits at --max-length and the batch (ms-swift's MAX_PIXELS)")
    vl.add_argument("--image-resize", choices=IMAGE_RULES, metavar="|".join(IMAGE_RULES),
                    help="which resize your launch runs on a Qwen-VL image: processor (transformers', as your own script, TRL "
                         "and LLaMA-Factory call it: under a small --max-pixels a thin strip comes out past it, 113 tokens at "
                         "50176 pixels) or qwen-vl-utils (ms-swift's: the largest grid under --max-pixels). "
                         "Qwen3-VL's video too: processor counts the larger of transformers' video processor (one budget over "
                         "all frames: a few frames keep their size) and qwen-vl-utils. "
                         "Default: qwen-vl-utils when the only --emit is swift, else processor")
    vl.add_argument("--images-per-sample", type=int, metavar="N", help="images in every sample of the worst-case batch (default: 1)")
    vl.add_argument("--video-frames", type=whole_or_auto, metavar="N|auto",
                    help="frames of one video per sample (default: no video); auto: the most that fit (ms-swift's FPS_MAX_FRAMES; "
                         "InternVL's VIDEO_SEGMENTS)")
    vl.add_argument("--video-max-pixels", type=int, metavar="N", help="pixels per video frame, Qwen families (default: qwen-vl-utils' 768 tokens, 602112 for Qwen2/2.5-VL, "
                         "786432 for Qwen3-VL; under --image-resize processor, Qwen3-VL's processor caps no frame: the most your frames have); "
                         "InternVL resizes frames to one tile")
    vl.add_argument("--video-min-pixels", type=int, metavar="N",
                    help="the least pixels per video frame, Qwen families (ms-swift's VIDEO_MIN_PIXELS; default: qwen-vl-utils' "
                         "128 tokens, 100352 for Qwen2/2.5-VL): every frame gets at least 1.05x this, whatever --video-max-pixels")
    vl.add_argument("--audio-clips", type=int, metavar="N",
                    help="audio clips per sample (Qwen2.5-Omni's thinker; default: none): the feature extractor pads or cuts "
                         "every clip to 30 s, so each is 3000 mel frames and 750 tokens")
    vl.add_argument("--use-audio-in-video", type=boolean, default=False, metavar="true|false",
                    help="true: the video's own sound track goes in too, its 30 s of audio tokens interleaved with the frames' "
                         "(Qwen2.5-Omni's thinker; ms-swift's USE_AUDIO_IN_VIDEO)")
    data = parser.add_argument_group("your own data")
    data.add_argument("--dataset", metavar="FILE.jsonl", nargs="+",
                      help="ms-swift JSONL file(s): measure every sample and probe at the longest (or --length-percentile); "
                           "none: probe at --max-length, not at the data --swift-args's file names")
    data.add_argument("--length-percentile", type=float, metavar="P", help="probe at the P-th percentile of the data's lengths and pixels; longer samples are truncated (counted in the recipe)")
    data.add_argument("--tokenizer", metavar="DIR", help="local tokenizer/processor files for --dataset when --model/--model-config has none")
    data.add_argument("--system", metavar="TEXT|FILE.txt",
                      help="the system prompt your run gives a sample that has none (ms-swift's --system), counted in its length")


def spec_kwargs(args) -> dict:
    kwargs = {k: getattr(args, k) for k in ("optim", "freeze_vit", "freeze_aligner", "freeze_llm", "max_pixels", "images_per_sample",
                                            "audio_clips", "video_frames", "video_max_pixels", "video_min_pixels", "use_audio_in_video", "image_resize", "dataset", "length_percentile", "tokenizer", "system")}
    kwargs["dataset"] = dataset_files(kwargs["dataset"])
    kwargs["system"] = system_prompt(kwargs["system"])
    # set by --swift-args (swift_probe_args), not flags: the file's ROOT_IMAGE_DIR, and its data as all-or-nothing
    kwargs["root_image_dir"] = getattr(args, "root_image_dir", None)
    kwargs["dataset_whole"] = bool(getattr(args, "dataset_whole", False)) and kwargs["dataset"] is not None
    return {k: None if v == "auto" else v for k, v in kwargs.items()}


def system_prompt(value: str | None) -> str | None:
    """--system as ms-swift reads it: a .txt file's text, else the string with its \\n as newlines."""
    if value is None or not value.endswith(".txt"):
        return None if value is None else value.replace("\\n", "\n")
    try:
        return Path(value).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError("--system", f"cannot read {value}: {exc.strerror}", "give the prompt itself, or a readable .txt file") from None


def dataset_files(files: list[str] | str | None) -> str | tuple[str, ...] | None:
    """--dataset's files: one path, a tuple of several, None for none (`--dataset none`)."""
    if files is None or isinstance(files, str):
        return files
    if [f.lower() for f in files] == ["none"]:
        return None
    return files[0] if len(files) == 1 else tuple(files)
