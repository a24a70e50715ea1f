"""The control plane between supervisors: one lightweight process per rank that never touches
the device, so it can always answer.

Under torchrun the supervisors join the torchrun process group (gloo, CPU only) to agree on
each trial, and rank 0 hosts a TCP store that carries abort flags between ranks and the
rendezvous of every generation of workers (each restart uses a fresh key prefix, so a new
worker process group never meets the remains of the old one). On one rank there is no process
group; the store is local.
"""

from __future__ import annotations

import datetime
import os


def rank_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ)


class Control:
    def __init__(self, timeout_s: float):
        import torch.distributed as dist

        self.rank, self.world_size, self.local_rank = rank_from_env()
        timeout = datetime.timedelta(seconds=timeout_s)
        self._dist = dist
        if self.world_size > 1:
            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=timeout)
            host = os.environ.get("MASTER_ADDR", "127.0.0.1")
        else:
            host = "127.0.0.1"
        store = dist.TCPStore(host, 0, is_master=True, timeout=timeout) if self.rank == 0 else None
        port = self.share(store.port if store else None)
        if store is None:
            store = dist.TCPStore(host, port, is_master=False, timeout=timeout)
        self.store, self.store_host, self.store_port = store, host, port

    # ------------------------------------------------------------ collectives
    def gather(self, value) -> list:
        """Every rank's value, on every rank (index = rank)."""
        if self.world_size == 1:
            return [value]
        values = [None] * self.world_size
        self._dist.all_gather_object(values, value)
        return values

    def share(self, value):
        """Rank 0's value, on every rank."""
        if self.world_size == 1:
            return value
        box = [value]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]

    # ------------------------------------------------------------ flags
    def raise_flag(self, key: str) -> None:
        self.store.set(key, "1")

    def flagged(self, key: str) -> bool:
        return self.store.check([key])

    def close(self) -> None:
        if self.world_size > 1 and self._dist.is_initialized():
            self._dist.destroy_process_group()
