"""What measures a candidate's steps: the model's own, or its shallow copies' (plan/depth.py
chooses them), every number extended to the real depth (`DepthExtended`); the copies'
workloads built once by the layers they keep (`ShallowCopies`), so that a lean choice's
fallback (where `DepthChoice.check` refused a base copy without a kind) reuses the copies the
two have in common; and the settings a planned step runs with (eval steps, accumulation).
"""

from __future__ import annotations

from ..recipe.training_args import eval_outputs_of
from ..spec import ProbeSpec
from .depth import DepthChoice
from .measure import CandidateMeasure, CandidateSteps, EvalPoint, TrainPoint, switch_candidate


def accumulation_of(spec: ProbeSpec):
    """The accumulation a train step at a per-device batch uses to keep the global batch (the
    probe's train trials: space.SearchSpace.accumulation)."""
    if spec.global_batch_size is None:
        return lambda batch: 1
    return lambda batch: max(1, round(spec.global_batch_size / (batch * spec.world_size)))


def eval_steps_of(spec: ProbeSpec) -> int:
    """Eval steps a planned evaluation runs to reach the probe's eval peak. The probe's eval
    trials run max(--eval-steps, 2) (space.StepsRunner); keeping the loss only, every step from
    the second on repeats the second (the previous step's outputs live on through it)."""
    return 2 if eval_outputs_of(spec.eval_keep_settings()) == "loss" else max(spec.eval_steps, 2)


def candidate_steps(workload, attn: str, checkpointing: bool, spec: ProbeSpec, shallow: list | None = None,
                    depth: DepthChoice | None = None, reuse: list | None = None):
    """(what measures the candidate's steps, its measure): the model's own steps, or its shallow
    copies' extended to its depth (plan/copies.py); `reuse`: the steps of copies measured
    already (a fallback's, plan_candidate). The measure carries the reason it cannot run."""
    measure = switch_candidate(workload, attn, checkpointing)
    args = (eval_steps_of(spec), spec.eval_keep_settings(), accumulation_of(spec))
    if measure.error:
        return None, measure
    if shallow:
        done = {id(part.workload): part for part in reuse or ()}
        parts = [done.get(id(w)) or CandidateSteps(w, switch_candidate(w, attn, checkpointing), *args) for w in shallow]
        return DepthExtended(parts, depth, measure), measure
    return CandidateSteps(workload, measure, *args), measure


class ShallowCopies(list):
    """The copies' workloads in a choice's `parts()` order; `build(choice, kept)` makes the one
    keeping `kept` (per stack, the original layers). `for_choice` gives another choice's copies
    (the fallback's), reusing those that keep the same layers."""

    def __init__(self, build, choice: DepthChoice, built: dict | None = None):
        self._build, self._built = build, {} if built is None else built
        super().__init__(self._copy(choice, kept) for kept in choice.parts())

    def _copy(self, choice: DepthChoice, kept: list[list[int]]):
        key = repr(kept)
        if key not in self._built:
            self._built[key] = self._build(choice, kept)
        return self._built[key]

    def for_choice(self, choice: DepthChoice) -> "ShallowCopies":
        return ShallowCopies(self._build, choice, self._built)


class DepthExtended:
    """CandidateSteps' interface over shallow copies (`DepthChoice.parts()`): every number is
    parts[0] + sum over the longer copies of (part i - parts[0]) x the times the real depth
    holds what part i adds (`DepthChoice.repeats()`). Over a base without a kind, every step's
    numbers are checked first (`DepthChoice.check`; raises Unsound)."""

    def __init__(self, parts: list, choice: DepthChoice, result: CandidateMeasure):
        self.parts, self.choice, self.result = parts, choice, result
        self.extend = choice.extend
        result.weights = round(self.extend(*(part.result.weights for part in parts)))  # the whole model stays on meta
        self.train_points: dict[int, TrainPoint] = {}
        self.eval_points: dict[tuple, EvalPoint] = {}

    def _checked(self, what: str, values) -> float:
        if self.choice.lean:
            self.choice.check(what, *values)
        return self.extend(*values)

    def train(self, batch: int) -> TrainPoint:
        if batch not in self.train_points:
            points = [part.train(batch) for part in self.parts]
            at = f"train batch {batch}"
            fb = self._checked(f"the forward/backward peak at {at}", [p.forward_backward for p in points])
            step = self._checked(f"the optimizer step's peak at {at}", [p.step for p in points])
            rollout = self._checked(f"the rollout's live bytes at {at}", [p.rollout for p in points])
            rows = {name: round(self._checked(f"the {name.replace('_', ' ')} at {at}", [getattr(part.result, name) for part in self.parts]))
                    for name in ("gradients", "optimizer_state", "step_transient", "logits_per_sample")}
            point = TrainPoint(round(max(fb, step)), round(fb), round(step), [], 0, round(rollout))
            self.train_points[batch] = point
            r = self.result
            r.train_peaks[batch], r.forward_backward_peaks[batch], r.step_peaks[batch] = point.peak, point.forward_backward, point.step
            for name, value in rows.items():
                setattr(r, name, value)
        return self.train_points[batch]

    def eval(self, train_batch: int, accumulation: int, batch: int) -> EvalPoint:
        key = (train_batch, accumulation, batch)
        if key not in self.eval_points:
            points = [part.eval(*key) for part in self.parts]
            at = f"eval batch {batch} after train batch {train_batch} x {accumulation}"
            peak = self._checked(f"the evaluation's peak at {at}", [p.peak for p in points])
            rollout = self._checked(f"the rollout's live bytes at {at}", [p.rollout for p in points])
            point = EvalPoint(round(peak), [], round(rollout))
            self.eval_points[key] = point
            if self.result.eval_after in (None, f"{train_batch}x{accumulation}"):
                self.result.eval_after = f"{train_batch}x{accumulation}"
                self.result.eval_peaks[batch] = point.peak
        return self.eval_points[key]

    def close(self) -> None:
        for part in self.parts:
            part.close()
