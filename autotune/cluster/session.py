"""Where trials run: in this process (the default on one device), or in supervised workers (under
torchrun, with a sharding strategy, or with --isolate). Either way the probe gets a runner with
`run(phase, settings)`, the model and hardware descriptions, and the budget; a journal wraps the
runner when the probe has an output path."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

from .. import __version__
from ..errors import AutotuneError, UsageError
from ..recipe.schema import Hardware, ModelInfo
from .journal import Journal, JournalRunner


@dataclasses.dataclass
class Session:
    runner: object
    model: ModelInfo
    hardware: Hardware
    capacity: int  # the smallest rank's capacity: the recipe's card
    budget: int  # the smallest rank's usable budget: what the search aims under
    rank: int = 0
    world_size: int = 1
    control: object = None
    supervisor: object = None
    journal: Journal | None = None
    agreed: bool = False  # every rank reached this recipe
    lever_facts: dict | None = None  # what the lever search needs of the model (recipe/levers.py facts_of)
    rollout: object = None  # an RLHF run's rollout engine as sized where the model loaded (the workload, or a view)
    load_span: tuple[float, float] | None = None  # the model's load on the system's monotonic clock (this rank's)

    @property
    def rollout_source(self):
        """What `rlhf_run.recipe_settings` / `recipe_record` read the rollout engine from."""
        return getattr(self.runner, "workload", None) or self.rollout

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, value):
        return self.control.share(value) if self.control else value

    def gather(self, value) -> list:
        return self.control.gather(value) if self.control else [value]

    def confirm_agreement(self, recipe) -> None:
        """Every rank computed the recipe; they must be the same (the search is deterministic)."""
        if self.world_size == 1:
            return
        digest = hashlib.sha256(json.dumps([dataclasses.asdict(recipe.settings), recipe.search.frontier,
                                            [(t.phase, t.outcome, t.settings) for t in recipe.search.trials]],
                                           sort_keys=True, default=str).encode()).hexdigest()
        digests = self.gather(digest)
        if len(set(digests)) != 1:
            raise AutotuneError(f"the ranks reached different recipes ({len(set(digests))} distinct)", "please report this as a bug")
        self.agreed = True

    def close(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
        if self.control is not None:
            self.control.close()


def supervised(spec) -> bool:
    from .control import under_torchrun

    from ..devices import default_device_kind

    # On CUDA the allocator's expandable segments are probed, which needs fresh worker processes.
    cuda_auto = (spec.device or default_device_kind()) == "cuda" and spec.expandable_segments == "auto"
    return bool(spec.world_size > 1 or spec.strategies or spec.isolate or spec.gpu_memory_per_rank or under_torchrun() or cuda_auto)


def open_session(spec, source, progress, device=None, on_device=None) -> Session:
    """`on_device(kind, capacity, budget, world_size)`: called once with the card; with workers,
    as soon as they have opened it, while they load the model (the probe's plan first runs
    there); in this process, after the load."""
    if supervised(spec):
        session = _supervised(spec, progress, on_device)
    else:
        session = _local(spec, source, progress, device, on_device)
    if spec.journal:
        about = journal_about(spec, source, session)
        journal = Journal(spec.journal, about) if session.is_main else None
        session.journal = journal
        session.runner = JournalRunner(session.runner, journal, session.share)
        if spec.resume and not session.share(bool(journal and journal.done)):
            session.close()
            raise UsageError("--resume", f"no journal of this probe at {spec.journal}, or it was made with other settings, "
                             "hardware or library versions", "drop --resume to start afresh")
    return session


def _local(spec, source, progress, device, on_device=None) -> Session:
    from ..devices import make_device
    from ..describe import describe_hardware, describe_model
    from ..recipe.levers import facts_of
    from ..sizes import format_size
    from ..trials.trial import InProcessRunner
    from ..model.workload import load_workload

    device = device or make_device(spec.device, spec.gpu_memory)
    budget = int(device.capacity * spec.usable_fraction)
    progress.stage(f"loading {source.architecture} ({source.kind}: {source.path}) on {device.name}")
    load_started = time.monotonic()
    workload = load_workload(source, spec, device)
    load_span = (load_started, time.monotonic())
    if on_device is not None:  # one process does one thing at a time: the plan after the load
        on_device(device.kind, device.capacity, budget, 1)
    progress.stage(f"usable budget {format_size(budget)} of {format_size(device.capacity)} (margin {spec.margin:.0%})")
    return Session(runner=InProcessRunner(workload, spec.steps, budget), model=describe_model(workload),
                   hardware=describe_hardware(device, spec.world_size), capacity=device.capacity, budget=budget,
                   lever_facts=facts_of(workload), load_span=load_span)


def _supervised(spec, progress, on_device=None) -> Session:
    from ..describe import library_versions
    from ..devices import available_kind
    from ..sizes import format_size
    from .control import Control
    from ..trials.rlhf_rollout import rollout_view
    from .supervisor import SupervisedRunner

    available_kind(spec.device)  # here, in one line: a worker that cannot open the card ends as a crash
    # The supervisors' own collectives wait at most one trial (or load) plus slack: never the limit.
    control = Control(2 * spec.trial_timeout + 60)
    capacities = per_rank(spec.gpu_memory_per_rank, spec.gpu_memory, control.world_size)
    runner = SupervisedRunner(spec, control, spec.trial_timeout, capacities)
    first = spec.strategies[0] if spec.strategies else None
    env = dict(spec.env)
    progress.stage(f"starting {control.world_size} trial worker(s)" + (f" ({first})" if first else ""))
    world_size = control.world_size
    about = (lambda d: on_device(d["kind"], d["capacity"], d["budget"], world_size)) if on_device else None
    try:
        ready = runner.start(first, env, about)
    except BaseException:
        control.close()
        raise
    devices = ready.devices
    names = sorted({d["name"] for d in devices})
    capacity, budget = min(d["capacity"] for d in devices), min(ready.budgets)
    # The launch files' layout is the probe's: ranks per node as torchrun started them (a node's
    # simulated devices count 1 whatever the ranks), else the devices this node has.
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE") or devices[0]["count"])
    hardware = Hardware(device=devices[0]["kind"], name=" + ".join(names), capacity_bytes=capacity,
                        device_count=per_node, world_size=control.world_size, **library_versions())
    if len({d["capacity"] for d in devices}) > 1:
        progress.stage("ranks differ: " + ", ".join(f"rank {i} {format_size(d['capacity'])}" for i, d in enumerate(devices)))
    progress.stage(f"usable budget {format_size(budget)} of {format_size(capacity)} (margin {spec.margin:.0%}) per rank")
    return Session(runner=runner, model=ModelInfo(**ready.model), hardware=hardware, capacity=capacity, budget=budget,
                   rank=control.rank, world_size=control.world_size, control=control, supervisor=runner,
                   lever_facts=ready.levers, rollout=rollout_view(ready.rollout) if ready.rollout else None,
                   load_span=ready.load_span)


def per_rank(listed, single, world_size: int) -> list:
    """Capacities, one per rank: a list must name every rank; a single value is every rank's."""
    if not listed:
        return [single] * world_size
    if len(listed) != world_size:
        raise UsageError("--gpu-memory", f"{len(listed)} sizes for {world_size} ranks",
                         "give one size for every rank, or a single size for all")
    return list(listed)


def journal_about(spec, source, session: Session) -> dict:
    """What a journal is keyed by: model, probe settings, hardware, library versions."""
    config = source.config.to_dict() if hasattr(source.config, "to_dict") else {}
    settings = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("journal", "resume", "trial_timeout", "isolate")}
    return {
        "autotune": __version__,
        "model": {"path": source.path, "kind": source.kind, "config": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()},
        "spec": settings,
        "hardware": session.hardware.fingerprint() | {"python": session.hardware.python, "capacity_bytes": session.capacity},
        "ranks": session.gather(session.budget),
        "libraries": _more_versions(),
    }


def _more_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("accelerate", "deepspeed", "bitsandbytes", "trl"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found
