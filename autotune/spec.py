"""ProbeSpec: what to probe, validated once, with errors that name the flag."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import UsageError

DTYPES = ("bfloat16", "float16", "float32")
TRAIN_TYPES = ("full", "lora")
ATTN_IMPLEMENTATIONS = ("flash_attention_2", "sdpa", "eager")
# 10% of the card: covers the CUDA context and cuBLAS workspaces (0.5-1 GiB, outside the
# allocator), NCCL buffers, and the drift of the caching allocator over a long run. See README.
DEFAULT_MARGIN = 0.10
DEFAULT_MAX_BATCH_SIZE = 256


@dataclass
class ProbeSpec:
    max_length: int
    model: str | None = None  # a local Hugging Face model directory (real weights)
    model_config: str | None = None  # config.json, a directory holding one, or a built-in name
    train_type: str = "full"
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str = "all-linear"
    dtype: str = "bfloat16"
    device: str | None = None  # cuda | sim; None = cuda when available
    gpu_memory: int | None = None  # bytes
    margin: float = DEFAULT_MARGIN
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    global_batch_size: int | None = None
    world_size: int = 1
    steps: int = 3  # optimizer steps per trial; peak is read from step 2 on
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"
    seed: int = 0
    # Clusters (issue #6): see autotune/cluster/.
    strategies: tuple = ()  # sharding strategies to probe: ddp, fsdp, zero2, zero3, zero2_offload, zero3_offload
    isolate: bool = False  # run trials in supervised worker processes even on one device
    trial_timeout: float = 1800.0  # seconds a trial (or a worker's model load) may take
    journal: str | None = None  # journal of finished trials (resume); None: none
    resume: bool = False  # require a matching journal
    gpu_memory_per_rank: tuple | None = None  # bytes per rank (a pool of unequal cards; a test hook on sim)
    env: dict = field(default_factory=dict)  # environment for the trial workers
    expandable_segments: str = "auto"  # auto: probe it on CUDA; on; off
    extras: dict = field(default_factory=dict)  # room for later phases' flags

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if (self.model is None) == (self.model_config is None):
            raise UsageError("--model", "give exactly one of --model DIR (real weights) or --model-config PATH|NAME (random init)",
                             "for example --model-config tiny-llama")
        _positive("--max-length", self.max_length)
        _positive("--max-batch-size", self.max_batch_size)
        _positive("--lora-r", self.lora_r)
        _positive("--lora-alpha", self.lora_alpha)
        _positive("--world-size", self.world_size)
        if self.global_batch_size is not None:
            _positive("--global-batch-size", self.global_batch_size)
        if not isinstance(self.steps, int) or self.steps < 3:
            raise UsageError("--steps", f"need at least 3 optimizer steps per trial, got {self.steps}",
                             "AdamW creates its state in step 1, so the peak is read from step 2 on")
        if not (0.0 <= self.margin < 1.0):
            raise UsageError("--margin", f"must be a fraction in [0, 1), got {self.margin}", "for example --margin 0.1 keeps 10% free")
        if self.dtype not in DTYPES:
            raise UsageError("--dtype", f"unknown dtype {self.dtype!r}", f"choose one of {', '.join(DTYPES)}")
        if self.train_type not in TRAIN_TYPES:
            raise UsageError("--train-type", f"unknown training type {self.train_type!r}", f"choose one of {', '.join(TRAIN_TYPES)}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise UsageError("--attn", f"unknown attention implementation {self.attn_implementation!r}",
                             f"choose one of {', '.join(ATTN_IMPLEMENTATIONS)}")
        if self.gpu_memory is not None:
            _positive("--gpu-memory", self.gpu_memory)
        _check_cluster(self)

    @property
    def usable_fraction(self) -> float:
        return 1.0 - self.margin

    def replace(self, **changes) -> "ProbeSpec":
        return dataclasses.replace(self, **changes)


def _positive(flag: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UsageError(flag, f"must be a positive whole number, got {value!r}")


def _check_cluster(spec: ProbeSpec) -> None:
    from .cluster.sharding import check_strategy

    for strategy in spec.strategies:
        check_strategy(strategy)
    if len(set(spec.strategies)) != len(spec.strategies):
        raise UsageError("--strategy", "a strategy is listed twice", "for example --strategy ddp,fsdp")
    if not (isinstance(spec.trial_timeout, (int, float)) and spec.trial_timeout > 0):
        raise UsageError("--trial-timeout", f"must be a positive number of seconds, got {spec.trial_timeout!r}")
    if spec.expandable_segments not in ("auto", "on", "off"):
        raise UsageError("--expandable-segments", f"unknown value {spec.expandable_segments!r}", "choose auto, on or off")
    for size in spec.gpu_memory_per_rank or ():
        _positive("--gpu-memory", size)
