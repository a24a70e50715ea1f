"""Fault injection for tests/test_cluster_procs.py, kept out of autotune itself: Python imports
`sitecustomize` at start-up from the path, so a test that puts tests/faults on PYTHONPATH gets
it in every process it starts (torchrun, supervisors, workers).

AUTOTUNE_TEST_FAULT="kill:BATCH:MARKER": the first process that runs a trial at per-device
train batch BATCH kills itself (SIGKILL) as the trial starts, as a worker dying mid-trial would;
the file MARKER makes it happen once per test. The hook wraps `autotune.trials.trial.run_trial` when
that module is first imported (no torch import at start-up)."""

import importlib.abc
import importlib.machinery
import os
import signal
import sys

FAULT = os.environ.get("AUTOTUNE_TEST_FAULT")


def _killing(run_trial, batch: int, marker: str):
    def run(workload, phase, settings, *args, **kwargs):
        if settings.get("per_device_train_batch_size") == batch and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return run_trial(workload, phase, settings, *args, **kwargs)

    return run


class _WrapRunTrial(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "autotune.trials.trial":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            kind, batch, marker = FAULT.split(":", 2)
            assert kind == "kill", FAULT
            module.run_trial = _killing(module.run_trial, int(batch), marker)

        spec.loader.exec_module = exec_module
        return spec


if FAULT:
    sys.meta_path.insert(0, _WrapRunTrial())
