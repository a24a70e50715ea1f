"""RLHF workloads (issue #12): what a GRPO or DPO probe is asked, the frameworks' defaults, and
the rules that tie the batch arguments together. Data and checks only; the trials that run
TRL's trainers are in trials/rlhf_run.py.

Names are ms-swift's (`rlhf_type`, `num_generations`, `max_completion_length`, `beta`,
`vllm_gpu_memory_utilization`, `sleep_level`, ...). The two launch targets differ in their
defaults, so a value left unset follows the chosen target and the recipe says which:

| argument | ms-swift | TRL |
|---|---|---|
| `beta` (GRPO) | 0.04 | 0.0 |
| `beta` (DPO) | 0.1 | 0.1 |
| `max_completion_length` | 512 | 512 |
| `num_generations` | 8 | 8 |
| `vllm_gpu_memory_utilization` | 0.9 | 0.3 |

Batch rules (TRL's `GRPOConfig.__post_init__`, which ms-swift follows): the per-device batch
counts completions; the generation batch, per-device batch × world size × steps_per_generation
(steps_per_generation defaults to the accumulation), must be divisible by `num_generations`;
the eval batch × world size too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UsageError

RLHF_TYPES = ("grpo", "dpo")
TARGETS = ("swift", "trl")
VLLM_MODES = ("colocate", "server")
SLEEP_LEVELS = (0, 1, 2)
DEFAULTS = {
    "swift": {"grpo_beta": 0.04, "dpo_beta": 0.1, "max_completion_length": 512, "num_generations": 8,
              "vllm_gpu_memory_utilization": 0.9},
    "trl": {"grpo_beta": 0.0, "dpo_beta": 0.1, "max_completion_length": 512, "num_generations": 8,
            "vllm_gpu_memory_utilization": 0.3},
}
# ms-swift's default total batch when none is given (its gradient_accumulation_steps default
# makes per-device × accumulation × world reach 16).
SWIFT_DEFAULT_GLOBAL_BATCH = 16


@dataclass
class RLHFSpec:
    """What an RLHF probe runs; None: the target's default (see the table above)."""

    rlhf_type: str
    target: str = "swift"
    num_generations: int | None = None
    max_completion_length: int | None = None
    beta: float | None = None
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    vllm_gpu_memory_utilization: float | str | None = None  # a fraction, or "auto"
    sleep_level: int = 0
    offload_model: bool = False
    offload_optimizer: bool = False
    steps_per_generation: int | None = None
    precompute_ref_log_probs: bool = False
    reward_models: tuple = ()  # GRPO: reward models passed as models (a model directory, a config.json, a built-in name)
    global_batch_defaulted: bool = False  # GRPO without --global-batch-size: the spec chose it (default_global_batch)

    def validate(self, world_size: int = 1, global_batch: int | None = None, max_batch: int = 256) -> None:
        if self.rlhf_type not in RLHF_TYPES:
            raise UsageError("--rlhf-type", f"unknown RLHF type {self.rlhf_type!r}", f"choose one of {', '.join(RLHF_TYPES)}")
        if self.target not in TARGETS:
            raise UsageError("--rlhf-target", f"unknown target {self.target!r}", f"choose one of {', '.join(TARGETS)}")
        if self.rlhf_type == "dpo":
            self._validate_dpo()
            return
        for flag, value in (("--num-generations", self.num_generations), ("--max-completion-length", self.max_completion_length),
                            ("--steps-per-generation", self.steps_per_generation)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise UsageError(flag, f"must be a positive whole number, got {value!r}")
        if self.generations < 2:
            raise UsageError("--num-generations", "GRPO compares at least 2 completions per prompt", "for example --num-generations 8")
        if self.beta is not None and self.beta < 0:
            raise UsageError("--beta", f"must be >= 0, got {self.beta}")
        if self.vllm_mode not in VLLM_MODES:
            raise UsageError("--vllm-mode", f"unknown mode {self.vllm_mode!r}", f"choose one of {', '.join(VLLM_MODES)}")
        if self.sleep_level not in SLEEP_LEVELS:
            raise UsageError("--sleep-level", f"must be 0, 1 or 2, got {self.sleep_level!r}")
        share = self.vllm_gpu_memory_utilization
        if share is not None and share != "auto" and not (isinstance(share, float) and 0.0 < share < 1.0):
            raise UsageError("--vllm-gpu-memory-utilization", f"must be a fraction in (0, 1) or auto, got {share!r}",
                             "for example --vllm-gpu-memory-utilization 0.6")
        if not self.use_vllm:
            for flag, value in (("--vllm-gpu-memory-utilization", share), ("--sleep-level", self.sleep_level or None),
                                ("--offload-model", self.offload_model or None), ("--offload-optimizer", self.offload_optimizer or None)):
                if value is not None:
                    raise UsageError(flag, "only means something with vLLM generating the rollouts", "add --use-vllm")
        if self.precompute_ref_log_probs:
            raise UsageError("--precompute-ref-log-probs", "is a DPO setting", "leave it out for GRPO")
        self.reward_models = tuple(self.reward_models)
        self.check_global_batch(world_size, global_batch)
        self.check_some_batch(world_size, global_batch, max_batch)

    def _validate_dpo(self) -> None:
        for flag, value in (("--num-generations", self.num_generations), ("--max-completion-length", self.max_completion_length),
                            ("--steps-per-generation", self.steps_per_generation),
                            ("--vllm-gpu-memory-utilization", self.vllm_gpu_memory_utilization)):
            if value is not None:
                raise UsageError(flag, "is a GRPO setting (DPO trains on given chosen/rejected pairs, it generates nothing)",
                                 "leave it out, or use --rlhf-type grpo")
        if self.use_vllm:
            raise UsageError("--use-vllm", "DPO generates no rollouts", "leave it out, or use --rlhf-type grpo")
        if self.reward_models:
            raise UsageError("--reward-model", "DPO learns from given preferences, it scores nothing", "leave it out, or use --rlhf-type grpo")
        if self.beta is not None and self.beta <= 0:
            raise UsageError("--beta", f"DPO's beta must be > 0, got {self.beta}")

    # ---------------------------------------------------------------- resolved values
    @property
    def defaults(self) -> dict:
        return DEFAULTS[self.target]

    @property
    def generations(self) -> int:
        return self.num_generations or self.defaults["num_generations"]

    @property
    def completion_length(self) -> int:
        return self.max_completion_length or self.defaults["max_completion_length"]

    @property
    def kl_beta(self) -> float:
        if self.beta is not None:
            return self.beta
        return self.defaults["grpo_beta" if self.rlhf_type == "grpo" else "dpo_beta"]

    @property
    def colocated(self) -> bool:
        """vLLM shares the training cards (server mode: it has cards of its own)."""
        return self.rlhf_type == "grpo" and self.use_vllm and self.vllm_mode == "colocate"

    @property
    def share(self) -> float | str | None:
        """The colocated engine's share of each card: a fraction, "auto", or None (no colocated engine)."""
        if not self.colocated:
            return None
        return self.vllm_gpu_memory_utilization or self.defaults["vllm_gpu_memory_utilization"]

    def reference_model(self, train_type: str) -> str:
        """Whether a reference model is resident, as the frameworks decide it."""
        if self.kl_beta == 0.0:
            return "none (beta 0)"
        if train_type in ("lora", "qlora"):
            # TRL keeps a frozen copy of the adapter ("ref"); ms-swift disables the adapter: the base is the reference.
            return "adapter (LoRA: the base model with the adapter off, or TRL's frozen adapter copy)"
        if self.rlhf_type == "dpo" and self.precompute_ref_log_probs:
            return "precomputed"
        return "loaded"

    def check_global_batch(self, world_size: int, global_batch: int | None) -> None:
        """The generation batch is the global batch when steps_per_generation is left at the
        accumulation: it must hold whole groups of num_generations completions."""
        if self.rlhf_type != "grpo" or global_batch is None or self.steps_per_generation is not None:
            return
        if global_batch % world_size:  # each rank generates the same share of the batch: it must split evenly
            raise UsageError("--global-batch-size", f"GRPO's {global_batch} completions per optimizer step do not split over "
                             f"{world_size} ranks",
                             f"use a multiple of {math.lcm(self.generations, world_size)} (whole groups of --num-generations "
                             f"{self.generations} on {world_size} ranks), e.g. --global-batch-size {self.default_global_batch(world_size)}")
        if global_batch % self.generations:
            raise UsageError("--global-batch-size", f"GRPO generates {global_batch} completions per optimizer step, "
                             f"which is not a multiple of --num-generations {self.generations}",
                             f"use a multiple of {self.generations}, e.g. --global-batch-size {self.default_global_batch(world_size)}")

    def check_some_batch(self, world_size: int, global_batch: int | None, max_batch: int) -> None:
        """Some per-device batch up to --max-batch-size must satisfy the rules (with
        --steps-per-generation the generation batch follows the per-device batch)."""
        if self.rlhf_type != "grpo" or self.steps_per_generation is None:
            return
        per_rank = global_batch // world_size if global_batch and global_batch % world_size == 0 else None
        for batch in range(1, max_batch + 1):
            if per_rank is not None and per_rank % batch:
                continue
            accumulation = per_rank // batch if per_rank else 1
            if self.train_allowed(batch, accumulation, world_size):
                return
        raise UsageError("--steps-per-generation", f"no per-device batch up to {max_batch} makes batch x {world_size} rank(s) x "
                         f"{self.steps_per_generation} steps a multiple of --num-generations {self.generations}"
                         + (f" while splitting --global-batch-size {global_batch}" if global_batch else ""),
                         "change --steps-per-generation, --num-generations or --global-batch-size (or leave --steps-per-generation out)")

    def default_global_batch(self, world_size: int) -> int:
        """ms-swift's default total batch of 16, rounded up to hold whole groups on every rank."""
        unit = math.lcm(self.generations, world_size)
        return -(-max(SWIFT_DEFAULT_GLOBAL_BATCH, unit) // unit) * unit

    # ---------------------------------------------------------------- batch rules
    def train_allowed(self, batch: int, accumulation: int, world_size: int) -> bool:
        if self.rlhf_type != "grpo":
            return True
        return generation_batch(batch, accumulation, world_size, self.steps_per_generation) % self.generations == 0

    def eval_allowed(self, batch: int, world_size: int) -> bool:
        return self.rlhf_type != "grpo" or (batch * world_size) % self.generations == 0

    def largest_eval_batch(self, frontier: int, world_size: int) -> int:
        """The largest eval batch up to `frontier` the rules allow; 0 when none does."""
        return next((b for b in range(frontier, 0, -1) if self.eval_allowed(b, world_size)), 0)

    def settings(self) -> dict:
        """The recipe's settings (ms-swift's names) for this run."""
        if self.rlhf_type == "dpo":
            return {"rlhf_type": "dpo", "beta": self.kl_beta, "precompute_ref_log_probs": self.precompute_ref_log_probs or None}
        values = {"rlhf_type": "grpo", "num_generations": self.generations, "max_completion_length": self.completion_length,
                  "beta": self.kl_beta, "use_vllm": self.use_vllm, "steps_per_generation": self.steps_per_generation,
                  "reward_model": list(self.reward_models) or None}
        if self.use_vllm:
            values.update(vllm_mode=self.vllm_mode, sleep_level=self.sleep_level, offload_model=self.offload_model,
                          offload_optimizer=self.offload_optimizer)
        return values


def generation_batch(batch: int, accumulation: int, world_size: int, steps_per_generation: int | None) -> int:
    """Completions generated at once across the ranks (TRL's generation_batch_size)."""
    return batch * world_size * (steps_per_generation or accumulation)


def from_recipe(settings, record: dict | None) -> RLHFSpec | None:
    """The RLHFSpec a recipe was probed with (`check` re-runs it), from its settings and record."""
    if not getattr(settings, "rlhf_type", None):
        return None
    record = record or {}
    grpo = settings.rlhf_type == "grpo"
    return RLHFSpec(
        rlhf_type=settings.rlhf_type, target=record.get("target", "swift"),
        num_generations=settings.num_generations if grpo else None,
        max_completion_length=settings.max_completion_length if grpo else None, beta=settings.beta,
        use_vllm=bool(settings.use_vllm), vllm_mode=settings.vllm_mode or "colocate",
        vllm_gpu_memory_utilization=settings.vllm_gpu_memory_utilization if settings.use_vllm and settings.vllm_mode != "server" else None,
        sleep_level=settings.sleep_level or 0, offload_model=bool(settings.offload_model),
        offload_optimizer=bool(settings.offload_optimizer), steps_per_generation=settings.steps_per_generation,
        precompute_ref_log_probs=bool(settings.precompute_ref_log_probs),
        reward_models=tuple(getattr(settings, "reward_model", None) or ()))


def cli_flags(rlhf: RLHFSpec | None) -> list[str]:
    """The probe flags that ask for this RLHF run again (a re-probe command)."""
    if rlhf is None:
        return []
    flags = ["--rlhf-type", rlhf.rlhf_type, "--rlhf-target", rlhf.target, "--beta", str(rlhf.kl_beta)]
    if rlhf.rlhf_type == "dpo":
        return flags + (["--precompute-ref-log-probs"] if rlhf.precompute_ref_log_probs else [])
    flags += ["--num-generations", str(rlhf.generations), "--max-completion-length", str(rlhf.completion_length)]
    if rlhf.steps_per_generation:
        flags += ["--steps-per-generation", str(rlhf.steps_per_generation)]
    for reward in rlhf.reward_models:
        flags += ["--reward-model", reward]
    if rlhf.use_vllm:
        flags += ["--use-vllm", "--vllm-mode", rlhf.vllm_mode, "--sleep-level", str(rlhf.sleep_level)]
        if rlhf.vllm_gpu_memory_utilization is not None and rlhf.vllm_mode == "colocate":
            flags += ["--vllm-gpu-memory-utilization", str(rlhf.vllm_gpu_memory_utilization)]
        flags += [f for f, on in (("--offload-model", rlhf.offload_model), ("--offload-optimizer", rlhf.offload_optimizer)) if on]
    return flags
