"""ms-swift argument files read back (`check --swift-args`): the file's settings in recipe names,
the media variables its templates will read (the file's `ENV` block over the shell's exports),
and the length ms-swift trains at when the file sets none. The writing side is swift.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from ..errors import UsageError
from ..recipe import lora
from ..spec import QWEN_VL_UTILS
from .common import HELD_ENV, TOKEN_ENV, VISION_ENV
from .swift import ATTN_IMPL


class SwiftArgs(dict):
    """An ms-swift file's arguments; `script`: read from a shell script (its variable assignments
    are set right before `swift`, so they win over the shell's exports; a YAML's ENV block does not:
    ms-swift sets only the variables the shell has not, swift/cli/main.py parse_yaml_args)."""

    def __init__(self, data: dict, script: bool):
        super().__init__(data)
        self.script = script


def read_args(path: str | Path) -> dict:
    """Read an ms-swift argument file (YAML or JSON, 3.x or 4.x) or a shell script that runs
    `swift sft` / `swift rlhf` back into a flat mapping of ms-swift names; the `ENV:` block (a
    script's variable assignments) comes back under "ENV"."""
    path = Path(path)
    try:
        text = path.read_text()
    except (FileNotFoundError, IsADirectoryError):
        raise UsageError("--swift-args", f"no file at {path}") from None
    script = _read_script(text)
    if script is not None:
        return SwiftArgs(script, script=True)
    try:
        data = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as exc:
        raise UsageError("--swift-args", f"{path} is not valid YAML/JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError("--swift-args", f"{path} does not hold a mapping of ms-swift arguments",
                         "give the YAML or JSON file `swift sft --config` reads, or a shell script that runs `swift sft`")
    return SwiftArgs(data, script=False)


def _read_script(text: str) -> dict | None:
    """The arguments of the `swift sft` / `swift rlhf` command in a shell script (as ms-swift's
    examples and `emit swift`'s .sh are written: `KEY=VALUE` before the command or exported,
    `--name value ...` after it, lines continued with a backslash); None where no line runs swift.
    A flag's several values come back as a list, a flag with none as true (ms-swift's bools)."""
    import shlex

    env, args = {}, None
    for line in text.replace("\\\n", " ").splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # an unclosed quote: not a line of ours
            continue
        if words[:1] == ["export"]:
            words = words[1:]
        while words and "=" in words[0] and not words[0].startswith("-"):
            key, _, value = words.pop(0).partition("=")
            env[key] = value
        if len(words) >= 2 and words[0] == "swift" and words[1] in ("sft", "rlhf", "pt"):
            args, name = {}, None
            for word in words[2:]:
                if word.startswith("--"):
                    word, eq, value = word.partition("=")  # --max_length=4096 as argparse takes it
                    name = word[2:].replace("-", "_")
                    args[name] = [value] if eq else []
                elif name is not None and word != "$@":
                    args[name].append(word)
            args = {k: (True if not v else v[0] if len(v) == 1 else v) for k, v in args.items()}
            if words[1] == "rlhf":
                args.setdefault("rlhf_type", "dpo")  # RLHFArguments' default (3.x and 4.x)
    if args is None:
        return None
    if env:
        args["ENV"] = env
    return args


_BACK = {"per_device_train_batch_size": int, "gradient_accumulation_steps": int, "per_device_eval_batch_size": int,
         "eval_accumulation_steps": int, "max_length": int, "torch_dtype": str, "optim": str,
         # swift rlhf (issue #12): what sets the completions, the reference model and the rollout share
         "rlhf_type": str, "num_generations": int, "max_completion_length": int, "beta": float, "vllm_mode": str,
         "vllm_gpu_memory_utilization": float, "sleep_level": int, "steps_per_generation": int}
_BOOLS = ("gradient_checkpointing", "prediction_loss_only", "vit_gradient_checkpointing", "freeze_vit", "freeze_aligner", "freeze_llm",
          "packing", "padding_free", "use_liger_kernel", "use_vllm", "offload_model", "offload_optimizer")


def _as_bool(key: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise UsageError("--swift-args", f"{key}: cannot read {value!r} as true/false")


def mixed_precision_of(args: dict) -> str | None:
    """ms-swift's rule (ModelArguments._init_mixed_precision): an unset fp16 is on for float16 and
    float32 weights, an unset bf16 on for bfloat16. None where neither the keys nor the dtype say."""
    dtype = args.get("torch_dtype")
    if dtype is None and args.get("bf16") is None and args.get("fp16") is None:
        return None
    fp16 = _as_bool("fp16", args["fp16"]) if args.get("fp16") is not None else dtype in ("float16", "float32")
    bf16 = _as_bool("bf16", args["bf16"]) if args.get("bf16") is not None else dtype == "bfloat16"
    if fp16 and bf16:
        raise UsageError("--swift-args", "bf16 and fp16 are both on", "set one of them to false")
    return "bf16" if bf16 else "fp16" if fp16 else "no"


# ms-swift's HfConfigFactory.get_max_model_len: the smallest of these config values (nested
# configs included) is the model's max_model_len, which it trains at when max_length is unset.
MODEL_LEN_KEYS = ("seq_length", "max_position_embeddings", "n_positions", "model_max_length", "seq_len", "max_seq_len",
                  "max_sequence_length", "max_seq_length")


LLM_KEYS = ("language_config", "llm_config", "text_config")


def _config_values(config, name: str, parent: str | None = None) -> list:
    """ms-swift's HfConfigFactory._get_config_attrs: `name` on the config and on its language
    configs, depth first through every nested *_config but the talker's (Qwen2.5-Omni's
    thinker_config.text_config counts; a vision tower's does not)."""
    from transformers import PretrainedConfig

    if not isinstance(config, (PretrainedConfig, dict)):
        return []
    keys = list(config) if isinstance(config, dict) else dir(config)
    get = (lambda k: config[k]) if isinstance(config, dict) else (lambda k: getattr(config, k, None))
    found = [get(name)] if name in keys and parent in (None, *LLM_KEYS) else []
    for key in keys:
        if key.endswith("_config") and key != "talker_config":
            found += _config_values(get(key), name, key)
    return found


def default_max_length(config) -> int | None:
    """The max_length ms-swift uses when the arguments set none: the model's full length, as its
    get_max_model_len finds it (for each key the first value found, the smallest over the keys)."""
    found = []
    for key in MODEL_LEN_KEYS:
        values = [v for v in _config_values(config, key) if isinstance(v, int) and not isinstance(v, bool) and v > 0]
        if values:
            found.append(values[0])
    return min(found) if found else None


def launch_environment(args: dict, environ: dict | None = None, keys=None) -> dict:
    """The variables the launch runs with (those in `keys`, or all): a script's assignments over the
    shell's exports; a YAML's ENV block under them (4.x sets only what the shell has not; a 3.x
    file has no ENV block, its header says to export them)."""
    shell = {k: str(v) for k, v in (environ or {}).items() if keys is None or k in keys}
    own = {str(k): str(v) for k, v in (args.get("ENV") or {}).items() if keys is None or k in keys}
    return shell | own if getattr(args, "script", True) else own | shell


def media_env(args: dict, environ: dict | None = None) -> dict:
    """The media variables ms-swift's templates will read (launch_environment's precedence)."""
    return launch_environment(args, environ, VISION_ENV | HELD_ENV | TOKEN_ENV.keys() | {"USE_AUDIO_IN_VIDEO"})


# What only a vision-language model reads. ms-swift ignores the freeze flags of a text model
# (TunerArguments._init_multimodal_full returns unless the model is multimodal; the LoRA target
# regex likewise) and a text template reads no media variables, so a file or shell that carries
# them (freeze_vit defaults to true, scripts export MAX_PIXELS) launches a text model unchanged.
VISION_SETTINGS = ("freeze_vit", "freeze_aligner", "freeze_llm", "vit_gradient_checkpointing", "max_pixels", "video_max_pixels",
                   "video_min_pixels", "video_frames", "use_audio_in_video", "image_resize")


def without_vision(settings: dict) -> tuple[dict, list[str]]:
    """A text model's settings: the vision-only ones dropped, and their names (ms-swift ignores them)."""
    dropped = [k for k in VISION_SETTINGS if k in settings and k != "image_resize"]  # that one is ms-swift's, not the file's
    return {k: v for k, v in settings.items() if k not in VISION_SETTINGS}, dropped


def settings_from_args(args: dict, environ: dict | None = None, pixels_per_token: int | None = None) -> tuple[dict, dict]:
    """(settings changes in recipe names, model changes) read back from ms-swift arguments, and
    from the media variables `environ` exports (media_env). `pixels_per_token`: the Qwen-VL
    family's factor squared, to read qwen-vl-utils' token numbers (TOKEN_ENV), which win over the
    pixel names as they do in ms-swift."""
    # ms-swift itself, whatever the file says: use_cache off in the language model's configs too.
    # and its templates size every image with qwen-vl-utils (the largest grid under MAX_PIXELS).
    settings: dict = {"use_cache_off_in_sub_configs": True, "image_resize": QWEN_VL_UTILS}
    for key, kind in _BACK.items():
        if args.get(key) is not None:
            try:
                settings[key] = kind(args[key])
            except (TypeError, ValueError):
                raise UsageError("--swift-args", f"{key}: cannot read {args[key]!r} as {kind.__name__}") from None
    if args.get("rlhf_type"):  # swift rlhf: response_length, then max_new_tokens, then max_completion_length (RLHFArguments)
        completion = next((args[k] for k in ("response_length", "max_new_tokens", "max_completion_length") if args.get(k)), None)
        if completion is not None:
            settings["max_completion_length"] = int(completion)
    for key in _BOOLS:
        if args.get(key) is not None:
            settings[key] = _as_bool(key, args[key])
    kwargs = args.get("gradient_checkpointing_kwargs")
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs)
        except ValueError:
            raise UsageError("--swift-args", f"gradient_checkpointing_kwargs: {kwargs!r} is not JSON") from None
    if isinstance(kwargs, dict) and kwargs.get("every_n_layers"):
        settings["checkpoint_every_n_layers"] = int(kwargs["every_n_layers"])
    precision = mixed_precision_of(args)
    if precision is not None:
        settings["mixed_precision"] = precision
    if args.get("sequence_parallel_size") is not None:
        settings["sequence_parallel_size"] = int(args["sequence_parallel_size"])
    if args.get("attn_impl") is not None:
        back = {v: k for k, v in ATTN_IMPL.items()}
        settings["attn_implementation"] = back.get(args["attn_impl"], args["attn_impl"])
    deepspeed = args.get("deepspeed")
    if deepspeed:
        settings["strategy"] = str(deepspeed)
    env = media_env(args, environ)
    for name, key in (("MAX_PIXELS", "max_pixels"), ("VIDEO_MAX_PIXELS", "video_max_pixels"), ("VIDEO_MIN_PIXELS", "video_min_pixels"),
                      ("VIDEO_SEGMENTS", "video_frames"),
                      ("FPS_MAX_FRAMES", "video_frames")):
        if name in env:
            settings[key] = int(env[name])
    for name, key in TOKEN_ENV.items():
        if name in env and pixels_per_token:
            settings[key] = int(env[name]) * pixels_per_token
    if args.get("max_pixels") not in (None, "", "None"):  # the template's own rescale, before the processor's MAX_PIXELS
        cap = int(args["max_pixels"])
        settings["max_pixels"] = min(cap, settings["max_pixels"]) if "max_pixels" in settings else cap
    if settings.get("video_frames") or "USE_AUDIO_IN_VIDEO" in env:
        # ms-swift's Qwen2.5-Omni template loads a video's sound track only when told (default false)
        settings["use_audio_in_video"] = _as_bool("USE_AUDIO_IN_VIDEO", env.get("USE_AUDIO_IN_VIDEO", False))
    model: dict = {}
    train_type = args.get("tuner_type", args.get("train_type"))
    quantized = _quantized(args, train_type)
    if quantized:
        model["train_type"] = "qlora"  # LoRA over the bitsandbytes 4-bit model, as autotune probes and writes it
    elif train_type is not None:
        model["train_type"] = str(train_type)
    if any(args.get(k) is not None for k in ("lora_rank", "lora_alpha", "lora_dropout", "target_modules", "target_regex")):
        model["lora"] = {"r": int(args.get("lora_rank", 8)), "alpha": int(float(args.get("lora_alpha", 32))),
                         "dropout": float(args.get("lora_dropout", 0.05)), **lora_targets_back(args)}
    return settings, model


def _quantized(args: dict, train_type) -> bool:
    """Whether the file trains QLoRA as autotune probes it (bitsandbytes 4-bit nf4 with double
    quantisation, LoRA). ms-swift quantizes only with a quant_method (quant_bits alone does nothing);
    any other quantization is refused, naming the key, rather than probed as something else."""
    method = args.get("quant_method")
    if method in (None, "", "None"):
        return False
    bits = str(args.get("quant_bits", ""))
    if str(method) != "bnb" or bits != "4":
        raise UsageError("--swift-args", f"quant_method {method} quant_bits {bits or 'unset'}: autotune probes bitsandbytes 4-bit (QLoRA) only",
                         "set quant_method: bnb and quant_bits: 4, or leave quantization out")
    if (train_type or "lora") != "lora":
        raise UsageError("--swift-args", f"a {train_type} fine-tune of a 4-bit model is not one autotune probes", "use tuner_type: lora")
    for key, probed in (("bnb_4bit_quant_type", "nf4"), ("bnb_4bit_use_double_quant", True)):
        value = args.get(key)
        if value is not None and (str(value).lower() != str(probed).lower()):
            raise UsageError("--swift-args", f"{key} {value}: autotune probes {key} {probed} (ms-swift's default)", f"leave {key} out")
    return True


# Keys of an ms-swift file that change what the card holds in ways autotune does not probe: a file
# that sets one is refused, naming it, rather than probed or checked as a different run.
UNPROBED = {
    "freeze_parameters": "freezes parameters by prefix", "freeze_parameters_regex": "freezes parameters by regex",
    "freeze_parameters_ratio": "freezes a share of the layers", "trainable_parameters": "trains extra parameters",
    "trainable_parameters_regex": "trains extra parameters", "modules_to_save": "trains full copies of modules beside LoRA",
    "use_dora": "trains DoRA's magnitude vectors", "target_parameters": "puts LoRA on parameters (MoE experts)",
}


def refuse_unprobed(args: dict, path) -> None:
    """One line for the first key autotune does not probe, set to a value other than its default."""
    for key, what in UNPROBED.items():
        value = args.get(key)
        if value not in (None, "", [], 0, 0.0, False, "false", "False", "0", "[]", "None"):
            raise UsageError("--swift-args", f"{key} in {path} {what}, which autotune does not probe",
                             f"remove {key} to probe (or check) the run without it")
    length, packing_length = args.get("max_length"), args.get("packing_length")
    if packing_length not in (None, "", "None") and str(packing_length) != str(length):
        raise UsageError("--swift-args", f"packing_length {packing_length} in {path}: packed rows of another length than "
                                         f"max_length ({length}) are not probed", "remove packing_length (rows are then max_length long)")


def lora_targets_back(args: dict) -> dict:
    """The file's LoRA targets in the recipe's keys: target_regex wins over target_modules (as in
    ms-swift's TunerArguments); unset, ms-swift's default all-linear."""
    if args.get("target_regex"):
        return lora.record((lora.ALL_LINEAR,), lora.check_regex(str(args["target_regex"]), "--swift-args"))
    items = args.get("target_modules", [lora.ALL_LINEAR])
    items = items if isinstance(items, list) else [items]
    for item in items:  # each item is one name to ms-swift: "q_proj,v_proj" would match no module
        if re.search(r"[,\s]", str(item)):
            raise UsageError("--swift-args", f"target_modules item {item!r} is one module name to ms-swift",
                             "write the names as a list: target_modules: [q_proj, v_proj]")
    return lora.record(lora.parse_names([str(i) for i in items], "--swift-args target_modules"), None)
