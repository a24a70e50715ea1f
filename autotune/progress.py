"""The progress protocol the probe and the plan report to. Kept free of torch so the CLI can
build its parsers (and answer --help) without importing it."""

from __future__ import annotations


class ProgressSink:
    """Receives progress events; the default ignores them."""

    def stage(self, text: str) -> None: ...

    def trial_started(self, phase: str, settings: dict) -> None: ...

    def trial_finished(self, result) -> None: ...

    def dataset(self, profile, record: dict) -> None:
        """--dataset was measured: `record` is what the recipe keeps (distribution, limits, problem lines)."""
