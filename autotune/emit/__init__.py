"""Emitters: pure functions from a Recipe to the text of the files a framework reads.

`files(target, recipe, out, ...)` returns {path: text} for one target, so the CLI can check
every path before writing any."""

from __future__ import annotations

from ..errors import UsageError
from ..recipe.schema import Recipe
from . import accelerate, deepspeed, hf, llamafactory, rlhf, swift, swift_base, trl
from .common import require_validated, zero_stage

TARGETS = ("swift", "hf", "deepspeed", "accelerate", "llamafactory", "trl")
YAML_SUFFIXES = (".yaml", ".yml")


def check_yaml_name(target: str, out: str, swift_version: str | None = None) -> None:
    """Refuse an -o name under which the framework would not read the YAML written there: ms-swift
    4.x's `swift sft FILE` and `llamafactory-cli train FILE` take FILE as arguments only when it
    ends in .yaml/.yml (a .json one they parse as JSON), and accelerate parses a .json config as
    JSON. ms-swift 3.x's `--config` reads any name as YAML."""
    if out == "-":
        return
    if target == "accelerate":
        bad = out.endswith(".json")
        reads = "accelerate parses a config named .json as JSON"
    elif target == "llamafactory" or (target == "swift" and not swift.resolve_version(swift_version).startswith("3.")):
        bad = not out.endswith(YAML_SUFFIXES)
        reads = ("llamafactory-cli" if target == "llamafactory" else "ms-swift 4") + \
            " reads an argument file as YAML only when its name ends in .yaml or .yml"
    else:
        return
    if bad:
        stem = out[: -len(".json")] if out.endswith(".json") else out
        hint = f"name it {stem}.yaml" + (" (or .sh for the shell script)" if target == "swift" else "")
        raise UsageError("-o", f"{out!r} would hold YAML, and {reads}", hint)


def files(target: str, recipe: Recipe, out: str, swift_version: str | None = None, dataset: str | None = None,
          script: bool | None = None, swift_args: str | None = None) -> dict[str, str]:
    """The files `target` needs, keyed by path. For swift, a `.sh` path (or script=True) gives
    the shell script, anything else the YAML argument file (`swift rlhf`'s for an RLHF recipe).
    trl: a GRPOConfig / DPOConfig JSON and its sidecar; an RLHF recipe given to hf or
    llamafactory is refused (their files would launch supervised training)."""
    kind = rlhf.rlhf_type(recipe)
    if kind and target in ("hf", "llamafactory"):
        raise UsageError("RECIPE", f"this recipe is a {kind.upper()} run (settings.rlhf_type): `emit {target}` would write "
                         "supervised training", "use `autotune emit trl` (TRL's config) or `autotune emit swift` (swift rlhf)")
    if target == "trl":
        return {out: trl.render(recipe), hf.sidecar_path(out): trl.render_model(recipe)}
    if swift_args is not None and target != "swift":
        raise UsageError("--swift-args", f"only applies to `emit swift`, not {target}", "leave --swift-args out")
    if target == "swift":
        base = None
        if swift_args is not None:  # the user's own file, kept but for the recipe's keys
            from .swift_read import read_args

            base = read_args(swift_args)
            swift_version = swift_version or swift.installed_version() or swift_base.infer_version(base)
        as_script = out.endswith(".sh") if script is None else script
        if not as_script:
            check_yaml_name(target, out, swift_version)
        render = swift.render_script if as_script else swift.render_yaml
        return {out: render(recipe, swift_version, dataset, base, swift_args)}
    if target == "hf":
        return {out: hf.render(recipe), hf.sidecar_path(out): hf.render_model(recipe)}
    if target == "deepspeed":
        return {out: deepspeed.render(recipe)}
    if target in ("accelerate", "llamafactory"):
        check_yaml_name(target, out)
    if target == "accelerate":
        if zero_stage(recipe.settings.strategy) is None or out == "-":
            return {out: accelerate.render(recipe)}
        ds_out = accelerate.deepspeed_path(out)
        return {out: accelerate.render(recipe, ds_out), ds_out: deepspeed.render(recipe)}
    if target == "llamafactory":  # a ZeRO recipe's DeepSpeed config beside it, as for accelerate
        if zero_stage(recipe.settings.strategy) is None or out == "-":
            return {out: llamafactory.render(recipe, dataset)}
        ds_out = accelerate.deepspeed_path(out)
        return {out: llamafactory.render(recipe, dataset, ds_out), ds_out: deepspeed.render(recipe)}
    raise ValueError(f"unknown emit target {target!r}")


__all__ = ["TARGETS", "files", "require_validated", "swift", "hf", "deepspeed", "accelerate", "llamafactory", "trl"]
