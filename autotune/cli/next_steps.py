"""What to run after a file is written: the launcher command for each launch file, and the
pre-flight check. Pure functions from paths to command lines; the commands print them."""

from __future__ import annotations

import shlex

from ..emit.swift import resolve_version


def launch_command(target: str, path: str, swift_version: str | None = None, rlhf_type: str | None = None) -> str | None:
    """The command (or call) that reads the launch file at `path`; None for a side file.
    `rlhf_type`: the recipe's (an RLHF recipe launches with `swift rlhf`, TRL's GRPO/DPO config)."""
    q = shlex.quote(path)
    if target == "swift":
        command = "rlhf" if rlhf_type else "sft"
        if path.endswith(".sh"):
            return f"bash {q}   # extra swift {command} flags go after it"
        v3 = resolve_version(swift_version).startswith("3.")
        return f"swift {command} --config {q}" if v3 else f"swift {command} {q}"
    if target == "trl":
        if path.endswith(".model.json"):
            return None
        config = {"grpo": "GRPOConfig", "dpo": "DPOConfig"}.get(rlhf_type or "", "GRPOConfig")
        return (f"HfArgumentParser({config}).parse_json_file({path!r})   # in your TRL script; "
                f"or TrlParser([{config}]).parse_args_and_config() with --config {q}")
    if target == "hf":
        if path.endswith(".model.json"):
            return None
        return f"HfArgumentParser(TrainingArguments).parse_json_file({path!r})   # in your training script"
    if target == "deepspeed":
        return f"TrainingArguments(deepspeed={path!r}), or deepspeed --deepspeed_config {q} in your launcher"
    if target == "accelerate":
        if path.endswith(".deepspeed.json"):
            return None
        return f"accelerate launch --config_file {q} YOUR_TRAIN_SCRIPT.py"
    if target == "llamafactory":
        return f"llamafactory-cli train {q}"
    return None


def after_probe(recipe_path: str, emitted: dict[str, list[str]], swift_version: str | None = None,
                training: bool = True, rlhf_type: str | None = None) -> list[str]:
    """Next commands after `probe`: launch each emitted file, pre-flight the recipe in the job
    (`training` False: an evaluation-only recipe, which has no launch files)."""
    q = shlex.quote(recipe_path)
    lines = [f"python -m autotune check {q}   # in the job script, before the long run (exit 0 = fits)"]
    launches = [c for target, paths in emitted.items() for p in paths
                if (c := launch_command(target, p, swift_version, rlhf_type))]
    if launches:
        lines += launches
    elif training:
        lines.append(f"python -m autotune emit swift {q} -o swift.yaml   # launch files: swift, hf, deepspeed, accelerate, llamafactory, trl")
    return lines
