"""ms-swift argument files: a YAML for `swift sft FILE.yaml` (4.x) or `swift sft --config
FILE.yaml` (3.10-3.12), and a shell script in the style of ms-swift's own examples. A recipe
with `settings.rlhf_type` (issue #12) gets the same files for `swift rlhf`: every SFT key plus
the RLHF ones (`rlhf_type`, the rollout engine, the generation batch, beta).

Names are ms-swift's: 4.x calls the training type `tuner_type`, 3.x `train_type`; attention is
`attn_impl`. The checked-in field lists (swift_fields/*.json, extracted from the real argument
dataclasses by scripts/extract_swift_fields.py: `3.12.json` SFT, `3.12-rlhf.json` RLHF) say what
each version accepts; the RLHF keys are written only where that version's list has them."""

from __future__ import annotations

import json
import shlex
from importlib import metadata
from pathlib import Path

import yaml

from ..errors import UsageError
from ..recipe import lora
from ..recipe.schema import Recipe
from ..recipe.training_args import CHECKPOINTING_KWARGS, checkpointing_lever_kwargs, eval_outputs_of
from . import rlhf, swift_base
from .common import (DATASET_PLACEHOLDER, REWARD_MODEL_PLACEHOLDER, check_strategy, launch_env, memory_comment, mixed_precision,
                     model_location, reward_model_location, world_size)

FIELDS_DIR = Path(__file__).parent / "swift_fields"
SUPPORTED = ("3.10", "3.11", "3.12", "4")
# HF attn_implementation -> ms-swift attn_impl (ms-swift takes `flash_attn` and maps it itself).
ATTN_IMPL = {"flash_attention_2": "flash_attn", "sdpa": "sdpa", "eager": "eager", "flash_attention_3": "flash_attention_3"}


def installed_version() -> str | None:
    try:
        return metadata.version("ms-swift")
    except metadata.PackageNotFoundError:
        return None


def resolve_version(requested: str | None) -> str:
    """`major.minor` of the ms-swift to write for: the requested one, else the installed one,
    else the newest we know (4.6)."""
    text = requested or installed_version() or "4.6"
    parts = text.split(".")
    try:
        major, minor = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise UsageError("--swift-version", f"cannot read version {text!r}", "write it like 4.6 or 3.12") from None
    if major < 3 or (major == 3 and minor < 10):
        raise UsageError("--swift-version", f"ms-swift {text} has no --config YAML support",
                         "upgrade to ms-swift >= 3.10, or pass --swift-version 3.12 / 4.6")
    if major > 4:  # its arguments are not in swift_fields/: a file written for it would be unchecked
        raise UsageError("--swift-version", f"ms-swift {text} is newer than the argument lists autotune checks files against (3.12, 4.6)",
                         "pass --swift-version 4.6 to write 4.6's arguments (and check them with your ms-swift)")
    return f"{major}.{minor}"


def field_list(version: str, command: str = "sft") -> dict[str, str]:
    """Accepted argument names -> type text of `swift sft` / `swift rlhf`, for the closest checked-in list."""
    major = version.split(".")[0]
    name = ("4.6" if major != "3" else "3.12") + ("-rlhf" if command == "rlhf" else "")
    return json.loads((FIELDS_DIR / f"{name}.json").read_text())["fields"]


def command(recipe: Recipe) -> str:
    """`swift sft` or `swift rlhf`: which of ms-swift's commands launches the recipe."""
    return "rlhf" if rlhf.rlhf_type(recipe) else "sft"


# The attentions ms-swift accepts for packing / padding_free (SftArguments._check_padding_free).
FLASH_IMPLS = ("flash_attention_2", "flash_attention_3")


def check_levers(recipe: Recipe) -> None:
    """Refuse a lever ms-swift has no argument for: transformers' activation offloading lives in
    the HF Trainer's checkpointing kwargs, which ms-swift does not promise to hand on; without it
    the run would hold on the device what the probe measured in host memory."""
    if recipe.settings.activation_offloading:
        raise UsageError("RECIPE", "this recipe offloads activations (transformers' activation_checkpointing_kwargs offload); "
                         "ms-swift has no argument for it", "use `autotune emit hf`, or re-probe with --activation-offloading off")
    s = recipe.settings
    if (s.packing or s.padding_free) and s.attn_implementation not in FLASH_IMPLS:
        lever = "packing" if s.packing else "padding_free"
        raise UsageError("RECIPE", f"this recipe uses {lever} with {s.attn_implementation}, and ms-swift runs {lever} with flash "
                         "attention only (its packing is padding-free: flattened rows)",
                         f"use `autotune emit hf`, or re-probe with --attn flash_attention_2 on a CUDA card (or --{lever.replace('_', '-')} off)")


def lever_comments(recipe: Recipe) -> list[str]:
    """What the levers in ms-swift's file rely on, said where a user reads it."""
    s, notes = recipe.settings, []
    if s.checkpoint_every_n_layers and s.checkpoint_every_n_layers > 1:
        notes.append(f"# gradient_checkpointing_kwargs.every_n_layers={s.checkpoint_every_n_layers}: transformers >= 5.24 "
                     "reads it when the Trainer enables checkpointing; a transformers or ms-swift path that ignores it "
                     "checkpoints every layer (less memory than probed, slower)")
    if s.sequence_parallel_size and s.sequence_parallel_size > 1:
        notes.append(f"# sequence_parallel_size={s.sequence_parallel_size}: not measured by autotune; ms-swift splits each "
                     "sequence over that many ranks, so fewer ranks hold distinct samples: check the global batch")
    if s.strategy == "fsdp":
        notes.append("# fsdp2: ms-swift's preset checkpoints activations itself (fsdp_config activation_checkpointing: true, "
                     "gradient_checkpointing then off): the run holds less than probed"
                     + (" without checkpointing" if not s.gradient_checkpointing else "") + ", and every layer is checkpointed")
    if s.use_liger_kernel and ((recipe.search.levers or {}).get("asked", {}).get("liger") or {}).get("status") == "not measured":
        notes.append("# use_liger_kernel: asked for and not measured (Liger needs CUDA); it lowers training memory")
    return notes


def swift_args(recipe: Recipe, version: str, dataset: str | None = None) -> dict:
    """The `swift sft` arguments for the recipe, in launch order. Values are YAML scalars/lists
    that ms-swift's parser converts (bool as true/false, ints, strings)."""
    s, m = recipe.settings, recipe.model
    check_levers(recipe)
    strategy = check_strategy(recipe)
    v4 = not version.startswith("3.")
    rlhf_keys = rlhf_args(recipe, version)[0] if rlhf.rlhf_type(recipe) else {}
    args: dict = {"rlhf_type": rlhf_keys.pop("rlhf_type")} if rlhf_keys else {}  # first, as ms-swift's examples write it
    args["model"] = model_location(recipe)
    # QLoRA is LoRA over a 4-bit model to ms-swift (its tuners know no "qlora")
    args["tuner_type" if v4 else "train_type"] = "lora" if m.train_type == "qlora" else m.train_type
    if m.train_type in ("lora", "qlora") and m.lora:
        args["lora_rank"] = int(m.lora["r"])
        args["lora_alpha"] = int(m.lora["alpha"])
        if m.lora.get("dropout") is not None:
            args["lora_dropout"] = float(m.lora["dropout"])
        names, regex = lora.from_record(m.lora)
        if regex is not None:
            args["target_regex"] = regex  # as a target_modules item it would be matched as a module name
        else:
            args["target_modules"] = list(names)
    if m.train_type == "qlora":
        q = m.quantization or {}
        args.update(quant_method="bnb", quant_bits=4, bnb_4bit_quant_type=q.get("quant_type", "nf4"),
                    bnb_4bit_use_double_quant=bool(q.get("double_quant", True)), bnb_4bit_compute_dtype=q.get("compute_dtype", s.torch_dtype))
    args["dataset"] = [dataset or DATASET_PLACEHOLDER]
    args["torch_dtype"] = s.torch_dtype
    # Mixed precision as probed, written out: left unset, ms-swift turns fp16 on for float32 weights.
    precision = mixed_precision(recipe)
    args["bf16"], args["fp16"] = precision == "bf16", precision == "fp16"
    if s.max_length is not None:
        args["max_length"] = int(s.max_length)
    args["per_device_train_batch_size"] = s.per_device_train_batch_size
    args["gradient_accumulation_steps"] = s.gradient_accumulation_steps
    for key in ("per_device_eval_batch_size", "eval_accumulation_steps", "prediction_loss_only"):
        if getattr(s, key) is not None:
            args[key] = getattr(s, key)
    outputs = eval_outputs_of(s) if s.per_device_eval_batch_size is not None else "loss"
    if outputs == "argmax":
        args["eval_metric" if v4 else "metric"] = "acc"  # keeps argmax ids, as probed
    elif outputs == "generate":
        args["predict_with_generate"] = True
    args["gradient_checkpointing"] = bool(s.gradient_checkpointing)
    if s.gradient_checkpointing:
        # Without it ms-swift runs reentrant checkpointing in a single process; the probe measured non-reentrant.
        # every_n_layers (partial checkpointing) rides in the same kwargs (see lever_comments).
        args["gradient_checkpointing_kwargs"] = json.dumps({**CHECKPOINTING_KWARGS, **checkpointing_lever_kwargs(s)})
    args["attn_impl"] = ATTN_IMPL.get(s.attn_implementation, s.attn_implementation)
    for key in ("padding_free", "packing", "use_liger_kernel"):  # ms-swift's names are the recipe's
        if getattr(s, key, False):
            args[key] = True
    if s.sequence_parallel_size and s.sequence_parallel_size > 1:
        args["sequence_parallel_size"] = int(s.sequence_parallel_size)
    for key in ("vit_gradient_checkpointing", "freeze_vit", "freeze_aligner", "freeze_llm"):
        if getattr(s, key) is not None:
            args[key] = getattr(s, key)
    if s.optim:
        args["optim"] = s.optim
    if strategy and strategy.startswith("zero"):
        args["deepspeed"] = strategy  # ms-swift ships zero2/zero3/zero2_offload/zero3_offload configs
    elif strategy == "fsdp":
        if not v4:  # 3.12.6's wheel has no fsdp_config/fsdp2.json, which its _init_fsdp looks for
            raise UsageError("RECIPE", f"ms-swift {version} ships no fsdp2 preset for `fsdp: fsdp2`",
                             "pass --swift-version 4.6 (ms-swift 4.x ships it), or write your own FSDP config file into the file's fsdp")
        args["fsdp"] = "fsdp2"  # ms-swift's FSDP2 preset (swift/config/fsdp2.json)
    args.update(rlhf_keys)
    args["output_dir"] = "output"
    return args


def rlhf_args(recipe: Recipe, version: str) -> tuple[dict, list[str]]:
    """The `swift rlhf` keys of an RLHF recipe that this version's RLHFArguments accepts, and a
    comment for each one it lacks. A lacking key that changes what the card holds (sleep, offload,
    the generation batch, precomputed reference log-probs) is refused: the run would not be the
    one probed."""
    s, kind = recipe.settings, rlhf.rlhf_type(recipe)
    fields = field_list(version, "rlhf")
    args: dict = {"rlhf_type": kind}
    comments: list[str] = []

    def put(key: str, value, memory: str | None = None) -> None:
        if value is None:
            return
        if key in fields:
            args[key] = value
        elif memory:
            raise UsageError("RECIPE", f"ms-swift {version}'s RLHFArguments has no {key} (the recipe sets {value}): {memory}",
                             "pass --swift-version 4.6 (or the ms-swift you run), or re-probe without it")
        else:
            comments.append(f"# {key}={value}: ms-swift {version} has no such argument; left out (no memory effect)")

    if s.beta is not None:
        put("beta", float(s.beta))
    if kind == "dpo":
        if s.precompute_ref_log_probs:
            put("precompute_ref_log_probs", True, "without it the reference model stays resident while the policy trains")
        return args, comments
    put("num_generations", s.num_generations)
    put("reward_model", [reward_model_location(ref) for ref in s.reward_model] if s.reward_model else s.reward_model,
        "the reward models are resident beside the policy")
    put("max_completion_length", s.max_completion_length)
    spg = rlhf.steps_per_generation(recipe)
    if "steps_per_generation" in fields:
        put("steps_per_generation", spg)
    elif spg != s.gradient_accumulation_steps:  # the default needs no key; another value sets the rollout batch
        put("generation_batch_size", rlhf.generation_batch_size(recipe),
            "it sets how many completions one rollout generates and holds")
    put("use_vllm", bool(s.use_vllm))
    if s.use_vllm:
        mode = s.vllm_mode or "colocate"
        put("vllm_mode", mode)
        if mode == "colocate":
            put("vllm_gpu_memory_utilization", s.vllm_gpu_memory_utilization)
        elif s.vllm_gpu_memory_utilization is not None:
            comments.append(f"# vllm_mode server: start the server (swift rollout) with --vllm_gpu_memory_utilization "
                            f"{s.vllm_gpu_memory_utilization} on its own cards")
        if s.max_length and s.max_completion_length:
            put("vllm_max_model_len", int(s.max_length + s.max_completion_length))  # the context the share was sized for
        put("sleep_level", s.sleep_level, "sleep releases vLLM's share while the policy trains" if s.sleep_level else None)
    for key in ("offload_model", "offload_optimizer"):
        value = getattr(s, key)
        put(key, value, "it moves the training side off the card while vLLM generates" if value else None)
    return args, comments


def rlhf_comments(recipe: Recipe, version: str, args: dict) -> list[str]:
    """What the file's reader must know of the RLHF run: the rollout share as the recipe records
    it, the keys this version lacks, the reward (autotune measures none) unless the file written
    (`args`, the user's own with --swift-args) names one."""
    if not rlhf.rlhf_type(recipe):
        return []
    lines = [f"# {note}" for note in rlhf.notes(recipe, "swift")] + rlhf_args(recipe, version)[1]
    if recipe.settings.rlhf_type == "grpo" and not any(args.get(key) for key in ("reward_funcs", "reward_model")):
        lines.append("# GRPO needs your reward: add reward_funcs (or reward_model; a reward model on the card is memory "
                     "the probe counted only if the recipe's rlhf record names it)")
    return lines


def _on_base(recipe: Recipe, version: str, dataset: str | None, base: dict | None, source: str | None) -> tuple[dict, dict, list[str]]:
    """(arguments, environment, head lines): the recipe's own, or put into the user's file `base`."""
    args, env = swift_args(recipe, version, dataset), launch_env(recipe)
    if base is None:
        return args, env, []
    args, removed = swift_base.merge(args, base, dataset_given=dataset is not None)
    env = swift_base.merge_env(env, base)
    lines = [f"# {source}'s arguments with the recipe's settings put in (its comments are not kept)"]
    if removed:
        lines.append(f"# removed from {source} (the probed configuration does not use them): {', '.join(removed)}")
    lines += swift_base.data_lines(recipe, base, source)
    world = swift_base.launch_world_note(env, world_size(recipe), args, source)
    return args, env, lines + ([world] if world else [])


def render_yaml(recipe: Recipe, version: str | None = None, dataset: str | None = None, base: dict | None = None,
                source: str | None = None) -> str:
    """`base`: the user's own arguments (read_args of `source`), kept but for the recipe's keys."""
    version = resolve_version(version)
    args, env, based = _on_base(recipe, version, dataset, base, source)
    v4 = not version.startswith("3.")
    head = [f"# ms-swift {version} arguments from autotune recipe ({recipe.model.architecture}, "
            f"{recipe.model.train_type}, max_length {recipe.settings.max_length})",
            memory_comment(recipe), *based]
    cmd = command(recipe)
    if v4:
        head.append(f"# run: swift {cmd} THIS_FILE.yaml   (flags after the file override it)")
    else:
        head.append(f"# run: swift {cmd} --config THIS_FILE.yaml   (3.x: the file wins over flags)")
        if env:
            head.append("# 3.x reads no ENV block from this file; export these first:")
            head += [f"#   export {k}={shlex.quote(v)}" for k, v in env.items()]
    if args.get("dataset") == [DATASET_PLACEHOLDER]:
        head.append(f"# {DATASET_PLACEHOLDER}: replace with your dataset (a hub id or a local .jsonl)")
    if REWARD_MODEL_PLACEHOLDER in (args.get("reward_model") or []):
        head.append(f"# {REWARD_MODEL_PLACEHOLDER}: the reward model was a built-in config; replace with its hub id or directory")
    head += model_type_comment(recipe, base) + lever_comments(recipe) + rlhf_comments(recipe, version, args)
    body = dict(args)
    if v4 and env:
        body = {"ENV": env, **body}
    return "\n".join(head) + "\n" + yaml.safe_dump(body, sort_keys=False, default_flow_style=False, width=100)


def _flag_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(shlex.quote(str(v)) for v in value)
    return shlex.quote(str(value))


def render_script(recipe: Recipe, version: str | None = None, dataset: str | None = None, base: dict | None = None,
                  source: str | None = None) -> str:
    """A runnable script shaped like ms-swift's examples: memory comment, env vars one per
    line, `swift sft \\` (or `swift rlhf \\`), then four-space-indented flags. `base`: as render_yaml's."""
    version = resolve_version(version)
    args, env, based = _on_base(recipe, version, dataset, base, source)
    lines = [memory_comment(recipe), f"# ms-swift {version}; generated by autotune from a probed recipe", *based]
    if args.get("dataset") == [DATASET_PLACEHOLDER]:
        lines.append(f"# {DATASET_PLACEHOLDER} below is a placeholder: replace it with your dataset")
    if REWARD_MODEL_PLACEHOLDER in (args.get("reward_model") or []):
        lines.append(f"# {REWARD_MODEL_PLACEHOLDER} below is a placeholder: replace it with the reward model's hub id or directory")
    lines += model_type_comment(recipe, base) + lever_comments(recipe) + rlhf_comments(recipe, version, args)
    lines.append('# extra flags go on the command line: bash THIS_FILE.sh --num_train_epochs 3 (passed on as "$@")')
    lines += [f"{k}={shlex.quote(v)} \\" for k, v in env.items()]
    lines.append(f"swift {command(recipe)} \\")
    for key, value in args.items():
        lines.append(f"    --{key} {_flag_value(value)} \\")
    lines.append('    "$@"')
    return "\n".join(lines) + "\n"


def model_type_comment(recipe: Recipe, base: dict | None = None) -> list[str]:
    """ms-swift finds the model's type and chat template from a hub name; a local directory with
    another name needs them given. autotune does not guess ms-swift's names: say how to set them
    (unless the user's own file `base` names both)."""
    if recipe.model.source not in ("weights", "config") or (base and {"model_type", "template"} <= base.keys()):
        return []
    return [f"# ms-swift matches the model by its hub name; if the directory name is not one, add model_type and template "
            f"(this model's transformers model_type is {recipe.model.model_type!r}; ms-swift's names: "
            f"https://swift.readthedocs.io, Supported Models)"]
