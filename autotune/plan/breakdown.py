"""From a fake-tensor measurement to a per-card, per-rank prediction and its breakdown.

Three sources, always labelled in the output:
- `measured`: bytes the live-bytes counter saw while the real step ran under fake tensors;
- `assumed`: what a CPU cannot see on a CUDA card (CUDA context, cuBLAS workspaces, allocator
  fragmentation), with the assumed size stated;
- `documented partitioning`: per-rank sharding arithmetic from the engine's own documentation
  (ZeRO paper / DeepSpeed docs; PyTorch FSDP2 `fully_shard`), applied to the measured rows.
  It is not a run of the engine: no fake process group runs DeepSpeed or FSDP here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .measure import CandidateMeasure, Line

STRATEGIES = ("zero2", "zero3", "fsdp")
MiB = 2**20


@dataclass
class Allowance:
    """What the CPU cannot see. Defaults: a CUDA context with lazy module loading (~0.3-1 GiB
    outside the caching allocator); cuBLAS + cuBLASLt workspaces (PyTorch uses 32 MiB for
    cuBLASLt on Hopper, 4 MiB on Ampere; one pair per stream); allocator fragmentation as a
    fraction of the live peak (reserved minus allocated, typical of steady training)."""

    cuda_context: int = 512 * MiB
    workspaces: int = 64 * MiB
    fragmentation: float = 0.05

    def reserved(self, live: float) -> float:
        """Caching allocator reserved bytes for a live peak (what the probe's fit check reads)."""
        return live * (1 + self.fragmentation) + self.workspaces

    def on_card(self, live: float) -> float:
        return self.reserved(live) + self.cuda_context


@dataclass
class Rows:
    """The breakdown of one candidate, per rank, in bytes."""

    weights: float
    gradients: float
    optimizer_state: float
    step_transient: float
    activations_per_sample: float
    logits_per_sample: float
    gathered_working_set: float = 0.0  # zero3/fsdp: unsharded layers in flight
    method: str = "measured"
    reference_weights: float = 0.0  # RLHF: the reference model's weights, where the framework loads one
    reward_weights: float = 0.0  # GRPO: the reward models passed as models

    def as_dict(self) -> dict:
        return {k: (round(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class PeakModel:
    """Predicted live peak per rank at a batch size: the larger of the forward/backward phase
    and the optimizer step (each a line in the batch size)."""

    forward_backward: Line
    step: Line

    def live(self, batch: int) -> float:
        return max(self.forward_backward.at(batch), self.step.at(batch))


def layer_bytes(model) -> tuple[int, int]:
    """(largest decoder layer's parameter bytes, bytes of parameters outside the decoder layers):
    the units FSDP2 / ZeRO-3 gather whole. Layers are the model's `_no_split_modules` classes."""
    names = set(getattr(model, "_no_split_modules", None) or getattr(getattr(model, "base_model", None), "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    in_layers = {id(p) for m in layers for p in m.parameters()}
    largest = max((sum(p.numel() * p.element_size() for p in m.parameters()) for m in layers), default=0)
    outside = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in in_layers)
    return largest, outside


def rows_for(measure: CandidateMeasure, trainable_params: int, dtype_bytes: int, strategy: str | None = None,
             world_size: int = 1, layers: tuple[int, int] = (0, 0), frozen: tuple[int, int] = (0, 0)) -> Rows:
    """The rows for one rank. Unsharded: all measured. Sharded: the documented partitioning.
    `frozen`: an RLHF run's (reference model, reward models) weights, whole (in the measured
    peaks: they are on the counter), partitioned where the trainer's engine partitions them."""
    line = measure.train_line
    activations = max(line.slope - measure.logits_per_sample, 0.0)
    reference, rewards = frozen
    rows = Rows(measure.weights, measure.gradients, measure.optimizer_state, measure.step_transient,
                activations, float(measure.logits_per_sample), reference_weights=float(reference), reward_weights=float(rewards))
    if not strategy or world_size == 1:
        return rows
    n = world_size
    largest_layer, outside_layers = layers
    if strategy in ("zero2", "zero3"):
        # ZeRO (Rajbhandari et al. 2020; DeepSpeed docs): mixed-precision Adam keeps fp32 master
        # weights, momentum and variance (K = 12 bytes per trainable parameter; 8 without a
        # master copy in fp32), partitioned over ranks; stage 2 also partitions gradients and
        # stage 3 the weights. The step upcasts the rank's gradient partition to fp32.
        per_param = 8 if dtype_bytes == 4 else 12
        rows.optimizer_state = per_param * trainable_params / n
        rows.step_transient = 4 * trainable_params / n
        rows.gradients = measure.gradients / n
        if strategy == "zero3":
            rows.weights = measure.weights / n
            rows.gathered_working_set = 2 * largest_layer + outside_layers  # layer in use + prefetched
            # TRL's prepare_deepspeed starts the reference and reward models under the run's ZeRO-3
            # config (no optimizer): partitioned too, gathered layer by layer as the policy is. Under
            # stage 2 it starts them at stage 0: whole on every rank.
            rows.reference_weights, rows.reward_weights = reference / n, rewards / n
        rows.method = f"documented partitioning (DeepSpeed ZeRO stage {strategy[-1]}), not measured"
    elif strategy == "fsdp":
        # FSDP2 fully_shard per decoder layer (accelerate's transformer auto-wrap): parameters,
        # gradients and the optimizer's state are sharded; the optimizer runs on the shards.
        # During forward/backward one layer is unsharded and the next prefetched; the root
        # (embeddings, final norm, output layer) stays gathered.
        rows.weights = measure.weights / n
        rows.gradients = measure.gradients / n
        rows.optimizer_state = measure.optimizer_state / n
        rows.step_transient = measure.step_transient / n
        rows.gathered_working_set = 2 * largest_layer + outside_layers
        # TRL's prepare_fsdp shards the reference; reward models are prepared in evaluation mode,
        # which accelerate never wraps: whole on every rank.
        rows.reference_weights = reference / n
        rows.method = "documented partitioning (PyTorch FSDP2 fully_shard per decoder layer), not measured"
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    return rows


def frozen_saving(rows: Rows, frozen: tuple[int, int]) -> float:
    """What of the frozen models (`frozen`: reference, reward models, whole) a rank does not hold."""
    return sum(frozen) - rows.reference_weights - rows.reward_weights


def peak_model(measure: CandidateMeasure, rows: Rows | None = None, frozen: tuple[int, int] = (0, 0)) -> PeakModel:
    """The measured phase lines; for sharded rows, each phase loses what the ranks no longer
    hold. The forward/backward phase keeps the measured gradients (they fill up during
    backward; charging them whole is the conservative choice)."""
    fb, step = Line.through(measure.forward_backward_peaks), Line.through(measure.step_peaks)
    if rows is None or rows.method == "measured":
        return PeakModel(fb, step)
    saved_resident = ((measure.weights - rows.weights) + (measure.optimizer_state - rows.optimizer_state)
                      + frozen_saving(rows, frozen))
    saved_step = saved_resident + (measure.gradients - rows.gradients) + (measure.step_transient - rows.step_transient)
    extra = rows.gathered_working_set
    return PeakModel(Line(fb.intercept - saved_resident + extra, fb.slope), Line(step.intercept - saved_step + extra, step.slope))


def largest_batch(live, budget: float, allowance: Allowance, capacity: int, max_batch: int) -> int:
    """Largest batch whose reserved peak stays under the budget (the probe's fit rule) and whose
    whole footprint, CUDA context included, stays under the card. 0: not even batch 1."""
    def fits(batch: int) -> bool:
        peak = live(batch)
        return allowance.reserved(peak) <= budget and allowance.on_card(peak) <= capacity

    if not fits(1):
        return 0
    lo, hi = 1, max_batch + 1  # fits(lo), not known at hi; the peak is non-decreasing in batch
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


# ---------------------------------------------------------------- RLHF: the frozen models, the rollout engine


def frozen_bytes(workload) -> tuple[int, int]:
    """(the reference model's, the reward models') weights and buffers, whole (0: none resident)."""
    from .rlhf import weight_bytes

    return (weight_bytes(getattr(workload, "reference", None)),
            sum(weight_bytes(m) for m in getattr(workload, "reward_models", None) or ()))


def gathered_layers(workload, strategy: str | None, layers: tuple[int, int]) -> tuple[int, int]:
    """The (largest layer, rest) ZeRO-3 gathers at a time: the policy's (`layers`; the reference is
    the same model), or a reward model's where its gathered set is larger: each forward gathers
    its own model's layers while the others stay partitioned. Reward models are whole elsewhere."""
    if strategy != "zero3":
        return layers
    candidates = [layers, *(layer_bytes(m) for m in getattr(workload, "reward_models", None) or ())]
    return max(candidates, key=lambda pair: 2 * pair[0] + pair[1])


def rollout_on_card(workload, capacity: int) -> dict | None:
    """A colocated vLLM engine on a card of `capacity`: its share (`auto`: the smallest that holds
    it, model/rollout.py), the bytes it holds while generating (the whole share) and while the
    trainer trains (all of it at sleep level 0; at 1 and 2 what a sleeping engine keeps), and why
    vLLM would refuse it. None: no engine on the training cards."""
    rlhf = workload.spec.rlhf
    need = getattr(workload, "rollout_need", None)
    if rlhf is None or not rlhf.colocated or need is None:
        return None
    from ..errors import UsageError
    from ..model.rollout import auto_share, check_share
    from ..trials.rlhf_rollout import training_share_bytes

    refused = None
    if rlhf.share == "auto":
        try:
            share = auto_share(need, capacity)
        except UsageError as exc:
            share, refused = 1.0, str(exc)
    else:
        share = float(rlhf.share)
        refused = check_share(share, need, capacity)
    whole = int(share * capacity)
    training = training_share_bytes(workload, whole)
    held = ("the whole share, all the time (sleep level 0)" if rlhf.sleep_level == 0 else
            f"the whole share while generating; {training} bytes while training (sleep level {rlhf.sleep_level})")
    return {"share": share, "share_bytes": whole, "training_bytes": training, "auto": rlhf.share == "auto",
            "need_bytes": need.total_bytes, "refused": refused,
            "how": f"planned: the share counted beside the fake-tensor steps, {held}; sized from the config as vLLM "
                   "accounts it (model/rollout.py)"}


def syncs_whole_policy(spec, strategy: str | None) -> bool:
    """TRL pushes the policy's weights to vLLM before each generation after an optimizer step
    (vllm_generation.py `_iter_named_params`, colocated or server): a PEFT policy under ZeRO-3 is
    gathered whole on every rank for it (`gather_params` of every parameter, to merge the adapter),
    any other one parameter at a time."""
    rlhf = spec.rlhf
    return rlhf is not None and rlhf.rlhf_type == "grpo" and rlhf.use_vllm and spec.train_type == "lora" and strategy == "zero3"


def generation_shift(measure: CandidateMeasure, rows: Rows, frozen: tuple[int, int], whole_policy: bool) -> float:
    """What a rank holds when the engine generates, against the unsharded measurement: less what it
    does not hold (sharding), plus what the weight sync gathers (the whole policy where
    `syncs_whole_policy`, else at most the layers ZeRO-3 / FSDP gather anyway)."""
    if rows.method == "measured":
        return 0.0
    policy_saving = measure.weights - rows.weights
    saved = policy_saving + (measure.optimizer_state - rows.optimizer_state) + frozen_saving(rows, frozen)
    return (policy_saving if whole_policy else rows.gathered_working_set) - saved


def with_share(live, generating, share: dict | None, moment: bool = False):
    """The live peak with a colocated engine's share: the training step's peak plus what the engine
    holds while training, or the live bytes when it generates plus its whole share. Without a
    colocated engine, `moment`: the live bytes at generation can still be the peak (a weight sync
    that gathers the whole policy)."""
    if not share:
        return (lambda batch: max(live(batch), generating(batch))) if moment else live
    whole, training = share["share_bytes"], share["training_bytes"]
    return lambda batch: max(live(batch) + training, generating(batch) + whole)


def allowed_eval(spec, frontier: int) -> int:
    """The largest eval batch up to `frontier` that GRPO's rules allow (eval batch x world size a
    multiple of num_generations); the frontier itself otherwise."""
    return frontier if spec.rlhf is None else spec.rlhf.largest_eval_batch(frontier, spec.world_size)
