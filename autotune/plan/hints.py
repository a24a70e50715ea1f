"""What a plan hands a probe (`probe --from-plan`, `--plan-first`): for each planned candidate,
the batch where its measured peaks cross the probe's budget, the first trial of each search."""

from __future__ import annotations

import time

from ..errors import AutotuneError
from ..progress import ProgressSink
from ..recipe.schema import Recipe
from ..spec import ProbeSpec
from .breakdown import Allowance, largest_batch
from .planner import PlanOptions, make_plan


def _planned_batch(points: dict, budget: int, max_batch: int) -> int | None:
    points = {int(b): p for b, p in (points or {}).items()}
    if len(points) < 2:
        return None
    return largest_batch(_through(points), budget, Allowance(0, 0, 0.0), 2**62, max_batch) or 1


def hints_from_plan(recipe: Recipe, spec: ProbeSpec, budget: int, progress: ProgressSink | None = None) -> dict:
    """(attention, checkpointing) -> {"train": batch, "eval": batch}: where each planned
    candidate's measured peaks cross this device's budget. Where the plan measured a fit at k
    and a non-fit at k + 1 for this budget, the hint is k and the probe needs 2 trials. The probe
    has checked the plan (plan/match.py `check_plan`); `progress` hears which searches start
    without it, and why."""
    progress = progress or ProgressSink()
    hints = _hints(recipe.plan.get("candidates", []), budget, spec.max_batch_size)
    kept = _eval_kept(recipe.settings.eval_outputs, recipe.settings.eval_accumulation_steps)
    probed = _eval_kept(spec.eval_keeps, spec.eval_keep_settings().get("eval_accumulation_steps"))
    if spec.eval and kept != probed and any("eval" in h for h in hints.values()):
        hints = {key: {"train": found["train"]} for key, found in hints.items() if "train" in found}
        progress.stage(f"the plan's evaluation keeps {kept}, this probe's {probed}: its eval frontiers are another "
                       "evaluation's, so the eval search starts without them (plan with this probe's --eval-outputs to use them)")
    wanted = [(a, gc) for a in spec.attn_candidates for gc in spec.gradient_checkpointing_candidates]
    missing = [_key(*k) for k in wanted if "train" not in hints.get(k, {})]
    if missing:
        progress.stage(f"the plan has no train frontier for {', '.join(missing)} (not planned, or nothing fits this budget): "
                       "their searches start without it")
    return hints


def _eval_kept(outputs: str | None, steps: int | None) -> str:
    return f"{outputs} over {steps} steps" if outputs != "loss" and steps else str(outputs)


def _key(attn: str, checkpointing: bool) -> str:
    return f"{attn}/gc-{'on' if checkpointing else 'off'}"


def _hints(candidates: list[dict], budget: int, max_batch: int) -> dict:
    hints = {}
    for candidate in candidates:
        found = {phase: _planned_batch(candidate.get(f"{phase}_points"), budget, max_batch) for phase in ("train", "eval")}
        if any(found.values()):
            hints[(candidate["attn_implementation"], candidate["gradient_checkpointing"])] = {k: v for k, v in found.items() if v}
    return hints


def planned_hints(spec: ProbeSpec, capacity: int, budget: int, progress: ProgressSink | None = None) -> dict:
    """The probe's plan first: every candidate of its space planned for its card under fake
    tensors (no allowance: the probe's fit rule reads the device itself), as hints_from_plan
    hands them over. {} where the plan cannot run (the probe then searches as without it)."""
    progress = progress or ProgressSink()
    options = PlanOptions([capacity], attn=list(spec.attn_candidates), checkpointing=sorted(spec.gradient_checkpointing_candidates),
                          allowance=Allowance(0, 0, 0.0))
    try:
        plan = make_plan(spec, options, progress)
    except AutotuneError as exc:
        progress.stage(f"no plan first ({exc}); searching without it")
        return {}
    progress.stage(f"planned in {plan.wall_s:.1f}s under fake tensors; each search starts at its planned frontier")
    return _hints([c.to_dict() for c in plan.ok()], budget, spec.max_batch_size)


class FirstPlan:
    """The probe's plan first, made when the session knows its card (`open_session`'s
    `on_device`): where trials run in a worker, while the worker loads the model, so the plan's
    CPU work on fake tensors costs no wall time beside a load from disk onto the card. `wanted(kind,
    world_size)` says whether to plan; `hints` stays None where no plan was made."""

    def __init__(self, spec: ProbeSpec, wanted, progress: ProgressSink | None = None):
        self.spec, self.wanted, self.progress = spec, wanted, progress or ProgressSink()
        self.hints: dict | None = None
        self.span: tuple[float, float] | None = None

    def __call__(self, kind: str, capacity: int, budget: int, world_size: int) -> None:
        if not self.wanted(kind, world_size):
            return
        started = time.monotonic()
        self.hints = planned_hints(self.spec, capacity, budget, self.progress)
        self.span = (started, time.monotonic())

    def phase(self, load_span: tuple[float, float] | None) -> dict | None:
        """The recipe's `search.phases["plan"]`: the plan's wall time, and how much of it ran while
        the model loaded (`load_span`, on the same monotonic clock). None where no plan was made."""
        if self.span is None:
            return None
        start, end = self.span
        beside = max(0.0, min(end, load_span[1]) - max(start, load_span[0])) if load_span else 0.0
        return {"trials": 0, "wall_s": round(end - start, 3), "while_loading_s": round(beside, 3)}


def hint_from_plan(recipe: Recipe, spec: ProbeSpec, budget: int) -> int | None:
    """The batch size a probe should try first: where the plan's measured peaks for this
    probe's (attention, checkpointing) cross this device's budget. None: the plan has no such candidate."""
    for candidate in recipe.plan.get("candidates", []):
        if (candidate.get("attn_implementation") == spec.attn_implementation
                and candidate.get("gradient_checkpointing") == spec.gradient_checkpointing and candidate.get("train_line")):
            planned = _planned_batch(candidate.get("train_points"), budget, spec.max_batch_size)
            if planned is None:  # a plan written before the exact search: its phase lines
                fb, step = candidate["forward_backward_line"], candidate["step_line"]
                live = lambda b: max(fb["intercept"] + fb["slope"] * b, step["intercept"] + step["slope"] * b)  # noqa: E731
                planned = largest_batch(live, budget, Allowance(0, 0, 0.0), 2**62, spec.max_batch_size) or 1
            return planned
    return None


def _through(points: dict[int, int]):
    """The peak between measured batches, linearly; past the last two, their line. Where the
    plan measured a fit at k and a non-fit at k + 1 for this budget, it is k."""
    batches = sorted(points)

    def live(batch: int) -> float:
        i = next((i for i, b in enumerate(batches) if b >= batch), len(batches) - 1)
        lo, hi = (batches[i - 1], batches[i]) if i > 0 else (batches[0], batches[1])
        return points[lo] + (points[hi] - points[lo]) * (batch - lo) / (hi - lo)
    return live
