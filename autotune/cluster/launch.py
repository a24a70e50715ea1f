"""Launching on a cluster: the probe's cluster flags, and `--nproc-per-node N` starting torchrun
(`torch.distributed.run`) on this very command. Under torchrun every rank runs the probe; rank
and world size come from the environment; only rank 0 prints and writes files."""

from __future__ import annotations

import subprocess
import sys

from ..errors import UsageError
from ..sizes import parse_size
from .control import rank_from_env, under_torchrun
from .journal import journal_path
from ..recipe.schema import STRATEGIES  # without importing torch

# Flags handed to torchrun (with a value), stripped from the command each rank runs.
TORCHRUN_FLAGS = ("--nproc-per-node", "--nnodes", "--node-rank", "--rdzv-endpoint", "--rdzv-id", "--master-port")


def add_arguments(parser) -> None:
    group = parser.add_argument_group("cluster (see README: Clusters)")
    group.add_argument("--strategy", metavar="S[,S...]",
                       help=f"sharding engine(s): {', '.join(STRATEGIES)}; several = a search dimension (default: none)")
    add_torchrun_arguments(group)
    group.add_argument("--isolate", action="store_true", help="run trials in supervised worker processes even on one device")
    group.add_argument("--trial-timeout", type=float, default=1800.0, metavar="S",
                       help="seconds one trial (or a worker's model load) may take before it is ended (default: 1800)")
    group.add_argument("--resume", action="store_true", help="continue from the journal next to --out (it must match)")
    group.add_argument("--no-journal", action="store_true", help="keep no journal of finished trials")
    group.add_argument("--expandable-segments", choices=("auto", "on", "off"), default="auto",
                       help="PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True: auto probes it on CUDA (default: auto)")


def add_torchrun_arguments(group) -> None:
    group.add_argument("--nproc-per-node", type=int, metavar="N", help="start torchrun with N processes per node on this command")
    group.add_argument("--nnodes", metavar="N", help="with --nproc-per-node: nodes (torchrun --nnodes)")
    group.add_argument("--node-rank", metavar="R", help="with --nproc-per-node: this node's rank (torchrun --node-rank)")
    group.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="with --nproc-per-node: rendezvous (torchrun --rdzv-endpoint)")
    group.add_argument("--rdzv-id", metavar="ID", help="with --nproc-per-node: job id (torchrun --rdzv-id)")
    group.add_argument("--master-port", metavar="PORT", help="with --nproc-per-node on one node: torchrun --master-port")


def gpu_memory_sizes(text: str | None) -> tuple[int | None, tuple | None]:
    """`--gpu-memory SIZE[,SIZE...]`: (the smallest size or None, one size per rank or None)."""
    sizes = [parse_size(s.strip()) for s in (text or "").split(",") if s.strip()]
    return (min(sizes) if sizes else None), (tuple(sizes) if len(sizes) > 1 else None)


def spec_fields(args) -> dict:
    """ProbeSpec fields from the cluster flags; --gpu-memory may list one size per rank."""
    _, world_size, _ = rank_from_env()
    smallest, per_rank = gpu_memory_sizes(args.gpu_memory)
    strategies = tuple(s.strip() for s in (args.strategy or "").split(",") if s.strip())
    return {
        "gpu_memory": smallest,
        "gpu_memory_per_rank": per_rank, "strategies": strategies, "world_size": world_size,
        "isolate": args.isolate, "trial_timeout": args.trial_timeout, "resume": args.resume,
        "journal": None if args.no_journal else str(journal_path(args.out)),
        "expandable_segments": args.expandable_segments,
    }


def wants_torchrun(args) -> bool:
    if args.nproc_per_node is None:
        for flag in ("nnodes", "node_rank", "rdzv_endpoint", "rdzv_id", "master_port"):
            if getattr(args, flag):
                raise UsageError(f"--{flag.replace('_', '-')}", "is a torchrun flag", "add --nproc-per-node N")
        return False
    if args.nproc_per_node < 1:
        raise UsageError("--nproc-per-node", f"must be at least 1, got {args.nproc_per_node}")
    _check_torchrun_values(args)
    return not under_torchrun()


def _check_torchrun_values(args) -> None:
    """What torchrun would refuse with a traceback (--nnodes 0: an AssertionError), or wait on
    (a port that cannot exist), said here in one line."""
    nodes = None
    if args.nnodes:  # N, or MIN:MAX (elastic)
        parts = str(args.nnodes).split(":")
        if len(parts) > 2 or not all(p.isdigit() and int(p) >= 1 for p in parts) or int(parts[0]) > int(parts[-1]):
            raise UsageError("--nnodes", f"expected a number of nodes >= 1 (or MIN:MAX), got {args.nnodes!r}", "for example --nnodes 2")
        nodes = int(parts[0]) if len(parts) == 1 else None
    if args.node_rank is not None:
        rank = str(args.node_rank)
        if not rank.isdigit() or (nodes is not None and int(rank) >= nodes):
            raise UsageError("--node-rank", f"expected 0 to {nodes - 1 if nodes else 'nnodes - 1'}, got {args.node_rank!r}",
                             "number the nodes 0, 1, ... (one --node-rank per node)")
    if args.master_port is not None:
        port = str(args.master_port)
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise UsageError("--master-port", f"expected a TCP port 1-65535, got {args.master_port!r}", "for example --master-port 29511")


def torchrun_command(argv: list[str], args) -> list[str]:
    """`python -m torch.distributed.run <torchrun flags> -m autotune <argv without torchrun flags>`."""
    rest, i = [], 0
    while i < len(argv):
        item = argv[i]
        name = item.split("=", 1)[0]
        if name in TORCHRUN_FLAGS:
            i += 1 if "=" in item else 2
            continue
        rest.append(item)
        i += 1
    flags = [f"--nproc-per-node={args.nproc_per_node}"]
    for name in ("nnodes", "node_rank", "rdzv_endpoint", "rdzv_id", "master_port"):
        if getattr(args, name):
            flags.append(f"--{name.replace('_', '-')}={getattr(args, name)}")
    if not args.nnodes and not args.rdzv_endpoint:
        flags.append("--standalone")
    return [sys.executable, "-m", "torch.distributed.run", *flags, "-m", "autotune", *rest]


# Under a relaunch that reads it, rank 0 writes its exit code here and every rank exits 0:
# torchrun turns any non-zero rank exit into its own failure (exit 1 and a traceback), which
# would lose the probe's 2 (bad input) and 3 (nothing fits), `check`'s 3 (does not fit) and 4
# (other hardware). A command that ends without writing it (a probe that succeeded) ends with
# torchrun's own code.
EXIT_FILE = "AUTOTUNE_EXIT_FILE"


def relaunch(argv: list[str], args) -> int:
    """Run this command under torchrun; its exit code is rank 0's."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "exit")
        code = subprocess.call(torchrun_command(argv, args), env={**os.environ, EXIT_FILE: path})
        if os.path.exists(path):
            with open(path) as f:
                return int(f.read().strip())
        return code


def report_exit_code(code: int) -> int:
    """The exit code this rank should end with (see EXIT_FILE)."""
    import os

    path = os.environ.get(EXIT_FILE)
    if not path:
        return code
    if rank_from_env()[0] == 0:
        with open(path, "w") as f:
            f.write(str(code))
    return 0
