"""Shard the workload through an existing engine: PyTorch DDP, PyTorch FSDP2 (`fully_shard`),
or DeepSpeed ZeRO through accelerate. Never a home-made imitation.

- `ddp`: `torch.nn.parallel.DistributedDataParallel` (what accelerate's prepare builds for
  multi-GPU and multi-CPU runs).
- `fsdp`: `torch.distributed.fsdp.fully_shard` on every decoder layer (the classes the model
  names in `_no_split_modules`, as accelerate's `transformer_based_wrap` does) and on the root.
  Called directly: accelerate's FSDP plugin needs CUDA (on CPU, `Accelerator(cpu=True)` silently
  falls back to DDP, and without `cpu=True` to no distribution at all), and FSDP2 itself runs
  on gloo.
- `zero2`, `zero3`, `zero2_offload`, `zero3_offload`: accelerate's `DeepSpeedPlugin` with the
  DeepSpeed config the launch files carry (emit/deepspeed.py `engine_config`: ms-swift's ZeRO
  settings and bucket sizes); the engine owns the optimizer and its `backward` also steps
  (accelerate's DeepSpeed wrapper).

The process group is set up by the worker before this runs.
"""

from __future__ import annotations

import dataclasses

from ..errors import UsageError
from ..model.workload import Workload

STRATEGIES = ("ddp", "fsdp", "zero2", "zero3", "zero2_offload", "zero3_offload")
DEEPSPEED = ("zero2", "zero3", "zero2_offload", "zero3_offload")


@dataclasses.dataclass
class ShardedWorkload(Workload):
    """The workload with `model` wrapped by the engine; attention and checkpointing switches act
    on the inner (unwrapped) model."""

    inner: object = None
    strategy: str | None = None
    engine: object = None  # accelerate's Accelerator for DeepSpeed
    optimizer: object = None  # DeepSpeed: the engine's optimizer, built once

    def configure(self, attn_implementation=None, gradient_checkpointing=None) -> None:
        wrapped, self.model = self.model, self.inner
        try:
            super().configure(attn_implementation, gradient_checkpointing)
        finally:
            self.model = wrapped

    def make_optimizer(self):
        return self.optimizer if self.optimizer is not None else super().make_optimizer()

    def release_grads(self) -> None:
        if self.engine is not None:
            self.model.zero_grad()  # DeepSpeedEngine.zero_grad takes no set_to_none; it frees its own
        else:
            super().release_grads()

    def backward(self, loss) -> None:
        if self.engine is not None:
            self.engine.backward(loss)  # DeepSpeed: engine.backward + engine.step
        else:
            loss.backward()


def check_strategy(strategy: str | None) -> None:
    if strategy is not None and strategy not in STRATEGIES:
        raise UsageError("--strategy", f"unknown strategy {strategy!r}", f"choose from {', '.join(STRATEGIES)}")


def shard(workload: Workload, strategy: str | None, local_rank: int) -> Workload:
    """Return the workload with its model sharded by `strategy` (None: unchanged)."""
    check_strategy(strategy)
    if strategy is None:
        return workload
    fields = {f.name: getattr(workload, f.name) for f in dataclasses.fields(Workload)}
    sharded = ShardedWorkload(**fields, inner=workload.model, strategy=strategy)
    cuda = workload.device.kind == "cuda"
    # Inside tracking, what the engine allocates counts against the device: DDP's gradient
    # buckets, FSDP2's sharded parameters (the full ones are freed as they are replaced).
    with workload.device.tracking():
        if strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            sharded.model = DistributedDataParallel(workload.model, device_ids=[local_rank] if cuda else None)
        elif strategy == "fsdp":
            sharded.model = _fully_shard(workload.model)
        else:
            _deepspeed(sharded, strategy)
    return sharded


def _fully_shard(model):
    from torch.distributed.fsdp import fully_shard

    names = set(getattr(model, "_no_split_modules", None) or ())
    inner = getattr(model, "get_base_model", lambda: model)()  # peft wraps the transformers model
    names |= set(getattr(inner, "_no_split_modules", None) or ())
    for module in list(model.modules()):
        if type(module).__name__ in names:
            fully_shard(module)
    return fully_shard(model)


def _deepspeed(sharded: ShardedWorkload, strategy: str) -> None:
    import torch.distributed as dist
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    from ..emit.deepspeed import engine_config, hidden_size

    mixed = {"bfloat16": "bf16", "float16": "fp16"}.get(sharded.spec.dtype, "no")
    # The config the launch files carry (emit/deepspeed.py), so the probe measures the real
    # buckets. No dataloader goes through prepare: the micro batch is DeepSpeed's bookkeeping only.
    config = engine_config(strategy, 1, 1, dist.get_world_size(), mixed, hidden_size(sharded.inner.config))
    plugin = DeepSpeedPlugin(hf_ds_config=config)
    # The optimizer first: building it parses TrainingArguments, which resets accelerate's state.
    optimizer = Workload.make_optimizer(sharded)
    accelerator = Accelerator(deepspeed_plugin=plugin, mixed_precision=mixed)
    sharded.model, sharded.optimizer = accelerator.prepare(sharded.inner, optimizer)
    sharded.engine = accelerator
