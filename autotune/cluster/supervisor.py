"""Run every trial in a worker process, bounded by a timeout, and agree on it across ranks.

Each rank has a supervisor (this process) and one worker (a child it started). A trial is sent
to every rank's worker; each supervisor waits for its own worker's answer until the deadline,
watching three things: the answer, the worker dying, and an abort flag a peer raises when its
own worker failed. A rank that OOMs inside a collective leaves its peers blocked there: the
peers see the flag (or the deadline) and end their worker; nobody hangs. The supervisors then
agree (`agree.py`) over their own CPU process group, which never waits on the device.

After any trial that did not end cleanly on every rank (and on several ranks, after any OOM: the
ranks may have stopped at different collectives) all workers are ended and started again, with
a fresh process group. A worker killed from outside is retried once in a fresh worker before the
trial is recorded as `crashed`. Only processes this supervisor started are ended.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import subprocess
import sys
import tempfile
import time

from ..errors import AutotuneError
from ..recipe.schema import TrialResult
from ..trials.scratch import SCRATCH_ENV
from .agree import agree

CLEAN = ("fit", "over_budget", "oom", "error")
POLL_S = 0.2
STOP_GRACE_S = 10.0


class Worker:
    """One worker process and the pipe it answers on."""

    def __init__(self, config: dict, env: dict):
        read_fd, write_fd = os.pipe()
        # The Trainer's output_dir, made here: a killed worker cannot remove a directory of its own.
        self.scratch = tempfile.TemporaryDirectory(prefix="autotune-trainer-")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "autotune.cluster.worker", str(write_fd)], stdin=subprocess.PIPE,
            stdout=sys.stderr, pass_fds=(write_fd,), env={**env, SCRATCH_ENV: self.scratch.name}, text=True)
        os.close(write_fd)
        self.fd = read_fd
        self.buffer = b""
        self.send(config)

    def send(self, message: dict) -> None:
        self.proc.stdin.write(json.dumps(message, default=str) + "\n")
        self.proc.stdin.flush()

    def wait(self, deadline: float, aborted) -> tuple[str, object]:
        """("message", dict) | ("crashed", exit code) | ("timeout", None) | ("aborted", None)."""
        while True:
            if b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                return "message", json.loads(line)
            ready, _, _ = select.select([self.fd], [], [], POLL_S)
            if ready:
                chunk = os.read(self.fd, 1 << 16)
                if chunk:
                    self.buffer += chunk
                    continue
                return "crashed", self.proc.wait()  # the pipe closed: the worker is gone
            if self.proc.poll() is not None:
                return "crashed", self.proc.returncode
            if aborted():
                return "aborted", None
            if time.monotonic() > deadline:
                return "timeout", None

    def stop(self, kill: bool) -> None:
        """End the worker: ask (close its stdin) unless `kill`, then kill it if it lingers."""
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                try:
                    self.proc.stdin.close()
                    self.proc.wait(STOP_GRACE_S)
                except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
                    self.proc.kill()
        self.proc.wait()
        os.close(self.fd)
        self.scratch.cleanup()


@dataclasses.dataclass
class Ready:
    """What the workers reported after loading: the model, every rank's device, the budgets."""

    model: dict
    devices: list[dict]
    budgets: list[int]
    levers: dict  # the model's facts for the lever search (recipe/levers.py facts_of)
    rollout: dict | None  # an RLHF run's rollout engine as sized in the worker (trials/rlhf_rollout.py rollout_facts)
    load_span: tuple[float, float] | None = None  # this rank's model load, on the system's monotonic clock


def one_trial_per_worker(spec, strategy: str | None) -> bool:
    """An RLHF trial under DeepSpeed runs in a worker of its own. Its TRL trainer builds the engines
    (trials/rlhf_run.py `deepspeed_config`), and a ZeRO engine's hooks on the parameters form
    cycles through autograd that the collector cannot free, `DeepSpeedEngine.destroy()` and a
    reloaded model included: in a reused worker each trial left ~0.6 MiB on the card (GRPO LoRA
    ZeRO-3, tiny-llama), so the same batch peaked higher with every trial. A fresh process starts at
    the baseline, at the cost of a worker start per trial."""
    return spec.rlhf is not None and bool(strategy) and strategy.startswith("zero")


class SupervisedRunner:
    """`run(phase, settings) -> TrialResult`, agreed across ranks; trials run in workers."""

    def __init__(self, spec, control, timeout_s: float, capacities: list[int | None]):
        self.spec = spec
        self.control = control
        self.timeout_s = timeout_s
        self.capacities = capacities
        self.worker: Worker | None = None
        self.key = None
        self.generation = 0
        self.count = 0
        self.ready: Ready | None = None
        self.restarts = 0

    # ------------------------------------------------------------ workers
    def _config(self, strategy) -> dict:
        c = self.control
        spec = dataclasses.asdict(self.spec)
        return {"spec": spec, "rank": c.rank, "world_size": c.world_size, "local_rank": c.local_rank,
                "capacity": self.capacities[c.rank], "store": [c.store_host, c.store_port],
                "prefix": f"worker{self.generation}/", "strategy": strategy, "timeout_s": self.timeout_s}

    def start(self, strategy: str | None, env: dict, on_device=None) -> Ready:
        """Start this rank's worker; every rank's must report ready, or the probe stops.
        `on_device(device)`: called with the worker's device (kind, name, capacity, count, budget)
        as soon as it is open, while the worker goes on to load the model."""
        self.generation += 1
        c = self.control
        child_env = {**os.environ, **env, "RANK": str(c.rank), "WORLD_SIZE": str(c.world_size),
                     "LOCAL_RANK": str(c.local_rank), "MASTER_ADDR": c.store_host, "MASTER_PORT": str(c.store_port)}
        self.worker = Worker(self._config(strategy), child_env)
        self.key = (strategy, json.dumps(env, sort_keys=True))
        flag = f"abort/start/{self.generation}"
        kind, payload = self.worker.wait(time.monotonic() + self.timeout_s, lambda: c.flagged(flag))
        if kind == "message" and "device" in payload:
            if on_device is not None:
                on_device(payload["device"])
            # The load's own time limit, from now: the callback's work is not the worker's.
            kind, payload = self.worker.wait(time.monotonic() + self.timeout_s, lambda: c.flagged(flag))
        report = payload.get("ready") if kind == "message" else None
        if report is None:
            c.raise_flag(flag)
            report = {"failed": payload.get("failed") if kind == "message" else f"worker {kind} ({payload})"}
        reports = c.gather(report)
        failed = [(rank, r["failed"]) for rank, r in enumerate(reports) if "failed" in r]
        if failed:
            self.stop(kill=True)
            rank, why = failed[0]
            raise AutotuneError(f"the trial worker on rank {rank} could not load the model: {why}",
                                "rerun with AUTOTUNE_DEBUG=1 for details")
        self.ready = Ready(model=reports[0]["model"], devices=[r["device"] for r in reports], budgets=[r["budget"] for r in reports],
                           levers=reports[0]["levers"], rollout=reports[0]["rollout"],
                           load_span=tuple(report["load_span"]) if report.get("load_span") else None)
        return self.ready

    def stop(self, kill: bool = False) -> None:
        if self.worker is not None:
            self.worker.stop(kill)
            self.worker = None

    # ------------------------------------------------------------ trials
    def run(self, phase: str, settings: dict, steps: int | None = None) -> TrialResult:
        key = (settings.get("strategy"), json.dumps(settings.get("env") or {}, sort_keys=True))
        for attempt in (0, 1):
            if self.worker is None or key != self.key:
                self.stop()
                self.start(key[0], settings.get("env") or {})
            reports = self.control.gather(self._trial(phase, settings, steps))
            agreed = agree([TrialResult(**r) for r in reports])
            unclean = any(r["outcome"] not in CLEAN for r in reports)
            if unclean or (self.control.world_size > 1 and agreed.outcome not in ("fit", "over_budget")):
                self.stop(kill=True)  # its process group may be left mid-collective: start afresh
                self.restarts += 1
            elif self.worker is not None and one_trial_per_worker(self.spec, key[0]):
                self.stop()
            if agreed.outcome == "crashed" and attempt == 0:
                continue  # killed from outside, or a one-off: one retry in a fresh worker
            return agreed
        return agreed

    def _trial(self, phase: str, settings: dict, steps: int | None = None) -> dict:
        """This rank's report of the trial, as a dict (it travels through the process group)."""
        self.count += 1
        flag = f"abort/{self.generation}/{self.count}"
        c = self.control
        started = time.monotonic()
        self.worker.send({"phase": phase, "settings": settings, "steps": steps})
        kind, payload = self.worker.wait(started + self.timeout_s, lambda: c.world_size > 1 and c.flagged(flag))
        if kind == "message" and "result" in payload:
            report = payload["result"]
        else:
            messages = {"crashed": f"the worker died (exit code {payload})", "timeout": f"no answer within {self.timeout_s:g}s",
                        "aborted": "ended because another rank failed", "message": f"the worker failed: {payload.get('failed') if isinstance(payload, dict) else payload}"}
            outcome = "crashed" if kind == "message" else kind
            report = dataclasses.asdict(TrialResult(phase=phase, settings=settings, outcome=outcome, message=messages[kind],
                                                    wall_s=round(time.monotonic() - started, 3)))
        if report["outcome"] not in ("fit", "over_budget") and c.world_size > 1:
            c.raise_flag(flag)  # peers may be blocked in a collective this rank will never join
        return report
