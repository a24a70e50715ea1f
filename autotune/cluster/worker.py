"""A trial worker: one process per rank that loads the model once, shards it, and runs the
trials its supervisor sends. `python -m autotune.cluster.worker FD`.

Protocol: one JSON line of configuration on stdin, then one JSON request per line
(`{"phase", "settings"}`); replies go to file descriptor FD as JSON lines (`{"device": ...}` once
the device is open and before the model loads, so the supervisor can plan meanwhile; then
`{"ready": ...}`, `{"result": ...}`, `{"failed": ...}`). stdout and stderr stay free for library noise.

A worker may die at any moment (an OOM mid-collective, a sticky CUDA error, a segfault): the
supervisor sees it and starts a fresh one. The environment a trial needs
(`PYTORCH_CUDA_ALLOC_CONF`) is set by the supervisor when it starts the process, before CUDA
initialises.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import time


# Strategies the Trainer applies itself from its arguments and the torchrun variables (accelerate
# wraps the model in DDP); the others go through the engine call the Trainer would make
# (cluster/sharding.py): accelerate's FSDP plugin needs CUDA, and DeepSpeed ZeRO changes the
# model in place, so one engine per worker serves every trial.
TRAINER_APPLIES = (None, "ddp")


def trainer_applies(strategy: str | None, spec) -> bool:
    """Whether the trial's Trainer shards the model itself. An RLHF trial's TRL trainer always
    does: DeepSpeed from its `deepspeed` argument (trials/trainer_run.py), so that TRL gathers
    ZeRO-3 weights to generate and prepares its reference and reward models as in the run."""
    return strategy in TRAINER_APPLIES or spec.rlhf is not None


TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _send(out, **message) -> None:
    out.write(json.dumps(message, default=str) + "\n")
    out.flush()


def _init_process_group(config: dict, device_kind: str) -> None:
    import torch.distributed as dist

    host, port = config["store"]
    store = dist.TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=config["timeout_s"]))
    backend = "cpu:gloo,cuda:nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.PrefixStore(config["prefix"], store), rank=config["rank"],
                            world_size=config["world_size"], timeout=datetime.timedelta(seconds=config["timeout_s"]))


def _make_device(spec, config: dict):
    from ..devices import CudaDevice, make_device

    if (spec.device or "cuda") == "cuda":
        import torch

        torch.cuda.set_device(config["local_rank"])
        return CudaDevice(config["local_rank"], config["capacity"])
    return make_device(spec.device, config["capacity"])


def serve(config: dict, requests, out) -> None:
    from ..model.source import resolve
    from ..describe import describe_model
    from ..recipe.levers import facts_of
    from ..trials.rlhf_rollout import rollout_facts
    from ..spec import ProbeSpec
    from ..trials.trial import run_trial
    from ..model.workload import load_workload
    from .fragmentation import apply_steady_state_rule
    from .sharding import shard

    spec = ProbeSpec(**config["spec"])
    strategy = config["strategy"]
    device = _make_device(spec, config)
    if config["world_size"] > 1 or strategy is not None:
        # Before the Trainer's argument parsing, which would otherwise initialise distributed
        # itself from the torchrun variables.
        _init_process_group(config, device.kind)
    else:
        # One rank, no strategy: the user's `python train.py`. With the torchrun variables set,
        # accelerate would wrap the model in DDP and its gradient buckets would count.
        for name in TORCHRUN_VARIABLES:
            os.environ.pop(name, None)
    budget = int(device.capacity * spec.usable_fraction)
    about = {"kind": device.kind, "name": device.name, "capacity": device.capacity, "count": device.count}
    _send(out, device={**about, "budget": budget})
    load_started = time.monotonic()  # system-wide on Linux and macOS: comparable with the supervisor's clock
    workload = load_workload(resolve(spec.model, spec.model_config), spec, device)
    info, facts = describe_model(workload), facts_of(workload)
    if not trainer_applies(strategy, spec):
        workload = shard(workload, strategy, config["local_rank"])
    if spec.rlhf is not None:
        from ..trials.rlhf_run import prepare

        prepare(workload)  # the rollout engine's share, the reference and reward models, before any trial
    _send(out, ready={"model": dataclasses.asdict(info), "device": about, "budget": budget, "levers": facts,
                      "rollout": rollout_facts(workload) if spec.rlhf is not None else None,
                      "load_span": [load_started, time.monotonic()]})
    for line in requests:
        request = json.loads(line)
        result = run_trial(workload, request["phase"], request["settings"], request.get("steps") or spec.steps, budget)
        result = apply_steady_state_rule(result)
        _send(out, result=dataclasses.asdict(result))


def main(argv: list[str]) -> int:
    out = os.fdopen(int(argv[0]), "w", buffering=1)
    config = json.loads(sys.stdin.readline())
    try:
        serve(config, sys.stdin, out)
    except Exception as exc:  # noqa: BLE001 - the supervisor records it; the worker just ends
        from ..devices import short_message

        _send(out, failed=short_message(exc, limit=1000))
        return 1
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
