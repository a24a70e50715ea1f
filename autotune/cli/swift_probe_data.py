"""`probe --swift-args FILE`'s data: the file's local dataset / val_dataset become --dataset
where the probe can count every sample as ms-swift will feed it, and the note says why not
where it cannot (a hub id, another format, renamed columns, MIN_PIXELS, no tokenizer or chat
template, a limit searched instead); an RLHF file's data is measured as its type feeds it. swift_probe_args.py maps the rest of the file."""

from __future__ import annotations

from pathlib import Path


_AUTO = ("max_length", "max_pixels", "video_frames")  # a limit search takes no --dataset (spec.py)
_MIN_IMAGE = ("MIN_PIXELS", "IMAGE_MIN_TOKEN_NUM")  # ms-swift's qwen-vl-utils patch: a smallest image size


def dataset_flags(file: dict, flags: dict, args, given: set[str], path: str, measure_data: bool,
                   environ: dict, config) -> tuple[dict, str | None]:
    """({"dataset": the file's local JSONL files} where the probe can measure them, else {}; the note
    that says which). ms-swift drops (or truncates) a sample longer than max_length, so the data's
    longest sample, capped by max_length, is the run's worst case. The data is measured only where
    all of it can be (a hub id is not downloaded; only ms-swift's `messages` JSONL is read), and the
    file's val_dataset counts too: the mid-training evaluation runs on it."""
    if "dataset" in given:  # --dataset on the command line (the file's system prompt counts in it), or `--dataset none`
        from .multimodal_args import dataset_files

        counts = dataset_files(getattr(args, "dataset", None)) and file.get("system") is not None and "system" not in given
        return ({"system": str(file["system"])} if counts else {}), None
    from ..emit.swift_data import dataset_entries, local_dataset_file

    names = dataset_entries(file)
    if not names:
        return {}, None
    local = [local_dataset_file(name) for name in names]
    at = "plan takes the worst case from max_length" if not measure_data else "probing at max_length"
    hub = [name for name, found in zip(names, local) if found is None]
    if hub:
        return {}, (f"{path}'s dataset {', '.join(map(str, hub))} is not a local file here (autotune downloads nothing): not measured, "
                    f"{at}")
    unread = [str(found) for found in local if found.suffix != ".jsonl" or not _holds_messages(found)]
    if unread:
        return {}, (f"{path}'s dataset {', '.join(unread)} is not an ms-swift `messages` JSONL, the one format autotune measures: "
                    f"not measured, {at}")
    if file.get("columns"):
        return {}, f"{path} renames the data's columns (columns), which autotune does not follow: not measured, {at}"
    from ..emit.swift_read import launch_environment
    from ..model.families import family_for

    layout = launch_environment(file, environ, ("ROOT_IMAGE_DIR", *_MIN_IMAGE))
    raised = [key for key in _MIN_IMAGE if layout.get(key)]
    family = family_for(config)
    if raised and family is not None and family.pixels_per_token is not None:
        return {}, (f"{path} sets {', '.join(raised)}, which enlarges small images past the count autotune makes of them: "
                    f"not measured, {at}")
    if not measure_data:
        return {}, f"{path}'s dataset is not measured by a plan: `autotune probe --swift-args {path}` measures it"
    blocked = next((f"--{key.replace('_', '-')} auto searches the limit" for key in _AUTO if getattr(args, key, None) == "auto"), None)
    if blocked:
        return {}, f"{path}'s dataset is not measured: {blocked}; {at}"
    missing = _tokenizer_missing(flags, args)
    if missing:
        return {}, f"{path}'s dataset is not measured: {missing} (give --tokenizer DIR, the model's own, to measure it); {at}"
    files = [str(found) for found in local]
    # every sample counts: one autotune cannot measure could be the run's longest
    data = {"dataset": files[0] if len(files) == 1 else files, "dataset_whole": True}
    root = layout.get("ROOT_IMAGE_DIR")
    if root:
        data["root_image_dir"] = root
    if file.get("system") is not None and "system" not in given:
        data["system"] = str(file["system"])  # ms-swift gives it to every sample without its own
    return data, (f"measuring {path}'s dataset ({', '.join(files)}) with the tokenizer's chat template, which ms-swift's template "
                  "reproduces: the probe runs at its longest sample, as ms-swift would meet it, where every sample can be "
                  "measured (else at max_length; give --dataset none to probe at max_length anyway)")


def _holds_messages(path: Path) -> bool:
    """The file's first sample is a conversation as ms-swift's MessagesPreprocessor reads it
    (`messages` / `conversation(s)`); alpaca and query/response columns are ms-swift's too, and
    autotune does not read them."""
    from contextlib import closing

    from ..errors import UsageError
    from ..model.dataset_samples import MESSAGE_KEYS, records

    try:
        with closing(records(path)) as lines:
            _, record, _ = next(lines, (None, None, None))
    except UsageError:  # unreadable: not measured
        return False
    return isinstance(record, dict) and any(isinstance(record.get(key), list) for key in MESSAGE_KEYS)


def _tokenizer_missing(flags: dict, args) -> str | None:
    """Why the data's tokens cannot be counted here (no tokenizer files, or a tokenizer without a
    chat template to lay a conversation out with), or None."""
    from ..model.dataset import tokenizer_dir

    found = tokenizer_dir([getattr(args, "tokenizer", None), flags.get("model") or getattr(args, "model", None),
                           flags.get("model_config") or getattr(args, "model_config", None)])
    if found is None:
        return "the model directory has no tokenizer to count its tokens with"
    if not _has_chat_template(Path(found)):
        return f"the tokenizer in {found} has no chat template to lay a conversation out with"
    return None


def _has_chat_template(directory: Path) -> bool:
    """As transformers saves it: chat_template.jinja / .json beside the tokenizer, or in tokenizer_config.json."""
    import json

    if any((directory / name).is_file() for name in ("chat_template.jinja", "chat_template.json")):
        return True
    try:
        return bool(json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False
