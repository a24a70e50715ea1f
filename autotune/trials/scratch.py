"""The Trainer's output_dir for trials. Nothing is saved there (save_strategy="no"), but the
Trainer creates it on the main process. A trial worker's is made and removed by its supervisor
(cluster/supervisor.py), since a worker it kills cannot remove a directory of its own."""

from __future__ import annotations

import os
import tempfile

SCRATCH_ENV = "AUTOTUNE_TRAINER_DIR"
_SCRATCH: list = []  # this process's own, removed at exit


def scratch_dir() -> str:
    if os.environ.get(SCRATCH_ENV):
        return os.environ[SCRATCH_ENV]
    if not _SCRATCH:
        _SCRATCH.append(tempfile.TemporaryDirectory(prefix="autotune-trainer-"))
    return _SCRATCH[0].name
