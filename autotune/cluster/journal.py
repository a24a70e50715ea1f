"""A journal of finished trials, so a killed probe resumes where it stopped.

JSON lines next to the recipe (`recipe.yaml` -> `recipe.yaml.journal.jsonl`): a header line with
the key, then one line per finished trial, appended and fsynced as each trial completes. Killing
the probe loses at most the trial in flight; a torn last line is ignored.

The key hashes everything that decides a trial's outcome: the model (its config), the probe's
settings, the hardware (device, capacity of every rank, world size) and the library versions.
A journal whose key differs is stale: it is never reused, and is replaced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from ..recipe.schema import TrialResult

VERSION = 1


def journal_path(out: str | os.PathLike) -> Path:
    return Path(f"{out}.journal.jsonl")


def journal_key(about: dict) -> str:
    text = json.dumps(about, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def request_key(phase: str, settings: dict) -> str:
    return json.dumps({"phase": phase, "settings": settings}, sort_keys=True, default=str)


class Journal:
    """Finished trials by request; `record` appends and fsyncs. A resumed run replays what the
    file holds, each entry once, in order: a request made twice (the runoff times a configuration
    again) gets its second answer from the second entry, or is run again, never the first answer twice."""

    def __init__(self, path: str | os.PathLike, about: dict):
        self.path = Path(path)
        self.key = journal_key(about)
        self.about = about
        self.done: dict[str, list[TrialResult]] = {}  # entries from the file not yet replayed
        self.stale = False
        self._started = False
        if self.path.exists():
            self._load()
        self._started = bool(self.done)

    def _load(self) -> None:
        lines = self.path.read_text().splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            header = {}
        if header.get("journal") != VERSION or header.get("key") != self.key:
            self.stale = bool(lines)
            return
        for line in lines[1:]:
            try:
                entry = json.loads(line)
                self.done.setdefault(entry["request"], []).append(TrialResult(**entry["result"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line torn by a kill mid-write

    def _start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w") as handle:
            handle.write(json.dumps({"journal": VERSION, "key": self.key, "about": self.about}, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def lookup(self, phase: str, settings: dict) -> TrialResult | None:
        entries = self.done.get(request_key(phase, settings))
        return entries.pop(0) if entries else None

    def record(self, phase: str, settings: dict, result: TrialResult) -> None:
        if not self._started:  # first trial of a fresh journal: replace whatever was there
            self._start()
            self._started = True
        key = request_key(phase, settings)
        line = json.dumps({"request": key, "result": dataclasses.asdict(result)}, default=str)
        with open(self.path, "a") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())


class JournalRunner:
    """Wraps a runner: a trial already in the journal is not run again.

    Under torchrun only rank 0 holds the journal; `share(value)` sends rank 0's value to every
    rank (identity on one rank), so every rank skips the same trials and the search stays in step.
    """

    def __init__(self, inner, journal: Journal | None, share=lambda value: value):
        self.inner = inner
        self.journal = journal
        self.share = share
        self.resumed = 0

    @property
    def workload(self):
        return getattr(self.inner, "workload", None)

    def run(self, phase: str, settings: dict, steps: int | None = None) -> TrialResult:
        inner_settings = settings
        if steps is not None:  # a longer run (validation, eval accumulation) is another trial
            settings = {**settings, "steps": steps}
        cached = self.journal.lookup(phase, settings) if self.journal else None
        cached = self.share(dataclasses.asdict(cached) if cached else None)
        if cached is not None:
            self.resumed += 1
            return TrialResult(**cached)
        result = self.inner.run(phase, inner_settings, steps)
        if self.journal:
            self.journal.record(phase, settings, result)
        return result
