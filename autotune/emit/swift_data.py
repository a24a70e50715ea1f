"""The data an ms-swift argument file names: its `dataset` / `val_dataset` entries and the local
files among them, found as ms-swift's DatasetSyntax finds them (read by `probe --swift-args`,
which measures them, and by `emit swift`, which says when a recipe's data is not the file's)."""

from __future__ import annotations

from pathlib import Path


def dataset_entries(args: dict) -> list:
    """The file's `dataset` and `val_dataset` entries, in order (one string or a list each)."""
    entries = []
    for key in ("dataset", "val_dataset"):
        value = args.get(key)
        if value not in (None, "", []):
            entries += list(value) if isinstance(value, (list, tuple)) else [value]
    return entries


def local_dataset_file(name) -> Path | None:
    """The file an ms-swift dataset entry names here (`PATH`, `PATH#N` sampling N of it), as ms-swift's
    DatasetSyntax finds it: relative to the directory it is launched from. None for a hub id."""
    text = str(name)
    for candidate in (text, text.rsplit("#", 1)[0]):
        found = Path(candidate).expanduser()
        if found.is_file():
            return found
    return None
