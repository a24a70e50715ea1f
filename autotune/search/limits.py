"""The sequence and media frontier (issue #14): the largest max_length, max_pixels or
video_frames that fits at a fixed per-device batch, searched for every attention x
checkpointing candidate as the batch is today.

The limit's possible values are listed smallest first (`Values`): multiples of the length
granularity up to the model's position limit, or every pixel count and frame count at which the
family's own resize rule changes the worst case, up to what --max-length leaves room for. The
search is `search.FrontierSearch` over the positions in that list: peak memory is not affine
in length (eager attention is quadratic), and that search needs only monotonicity to be exact
(its secant adapts where the peak curves and it bisects when the line is contradicted). The
answer is proven by a fit at one value and a non-fit at the next (or a fit at the last).

What the batch search learned is reused the same way: checkpointing only lowers memory, so
with it the search starts at the frontier without it, and is pruned when that frontier is
already the largest value; a frontier found for one attention is the first probe for the next.
The longest frontier wins; between candidates that reach the same value, the fastest (timed
at that value). Returns data; the recipe is assembled in probe.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import DoesNotFitError, UsageError
from .global_batch import Split
from .frontier import FrontierSearch
from ..sizes import format_size
from .attention import attn_unavailable_reason
from .space import Candidate
from .throughput import Measured

FLAGS = {"max_length": "--max-length", "max_pixels": "--max-pixels", "video_frames": "--video-frames"}


@dataclass
class Values:
    """What `auto` chooses among, smallest first, and why the list ends where it does."""

    dimension: str
    values: list[int]
    step: str  # the granularity, in words
    cap_reason: str

    def loading_spec(self, spec):
        """The spec the model is loaded with: the largest value (every trial then sets its own)."""
        return spec.replace(**{self.dimension: self.values[-1]})


def frontier_values(spec, source) -> Values:
    """The values `spec.frontier` is searched over, for this model and the rest of the spec."""
    from ..model.families import family_for

    family = family_for(source.config)
    flag = FLAGS[spec.frontier]
    if spec.frontier == "max_length":
        return length_values(spec, source.config, family)
    if family is None:
        raise UsageError(flag, "this model is text-only: there is no media limit to search", f"leave {flag} out, or probe a vision-language model")
    from ..model.multimodal import media_values

    values, step, cap = media_values(family, source.config, spec, spec.frontier)
    return Values(spec.frontier, values, step, cap)


def length_values(spec, config, family=None) -> Values:
    """Multiples of --length-granularity, from the first that holds the media and one text token
    to the model's position limit (less the generated tokens when evaluation generates); the
    limit itself when it is not a multiple."""
    from ..model.source import position_limit

    limit = position_limit(config)
    if limit is None:
        raise UsageError("--max-length", "auto needs the model's position limit, and this config states none",
                         "give --max-length N (a number)")
    generated = spec.max_new_tokens if spec.eval_keeps == "generate" and spec.max_new_tokens else 0
    cap = limit - generated
    reason = f"the model's position limit of {limit} tokens" + (f" less {generated} generated" if generated else "")
    low = 1
    if family is not None:
        from ..model.multimodal import media_from_spec

        low = family.plan(config, media_from_spec(spec)).tokens + 1  # the media alone, and one text token
    step = spec.length_granularity
    values = [v for v in range(step, cap + 1, step) if v >= low]
    if cap % step and cap >= low:
        values.append(cap)
    if not values:
        raise UsageError("--max-length", f"no length up to {reason} holds the {low - 1} media tokens and one text token",
                         "lower --max-pixels / --video-frames / --images-per-sample")
    return Values("max_length", values, "1 token" if step == 1 else f"{step} tokens", reason)


@dataclass
class FrontierResult:
    """The searched limit: its value at the winner, the proof, and every candidate's frontier."""

    dimension: str
    value: int
    batch: int
    phase: str
    values: Values
    proof: dict  # {"fit": value, "non_fit": next value or None (the last value fits)}
    candidates: dict = field(default_factory=dict)  # "attn/gc-on|off" -> frontier value (0: the smallest does not fit)
    trials: int = 0

    def record(self) -> dict:
        v = self.values
        return {"dimension": self.dimension, "value": self.value, "phase": self.phase, "batch": self.batch,
                "step": v.step, "smallest": v.values[0], "largest": v.values[-1], "cap": v.cap_reason,
                "fit": self.proof["fit"], "non_fit": self.proof["non_fit"], "candidates": dict(self.candidates),
                "trials": self.trials, **({"stepped_down": {k: self.proof[k] for k in ("phase", "train_fit", "why")}}
                                          if "train_fit" in self.proof else {})}


def open_candidate(space, attn: str, gc: bool) -> Candidate:
    """A new candidate in `space`, switched to; "skipped" (with the reason) when it cannot run here."""
    cand = Candidate(attn, gc)
    space.candidates.append(cand)
    cand.reason = attn_unavailable_reason(attn, space.device, space.spec.dtype, space.model_cls) or space._switch(attn, gc)
    if cand.reason is not None:
        cand.status = "skipped"
    return cand


def _key(cand: Candidate) -> str:
    return f"{cand.attn_implementation}/gc-{'on' if cand.gradient_checkpointing else 'off'}"


class LimitSearch:
    """Runs one limit's frontier for every candidate through a `space.SearchSpace` (its runner,
    budget, bookkeeping and candidate list), at the fixed batch of `phase`."""

    def __init__(self, space, values: Values, phase: str = "train"):
        spec = space.spec
        self.space, self.values, self.phase = space, values, phase
        self.batch_key = "per_device_train_batch_size" if phase == "train" else "per_device_eval_batch_size"
        self.batch = (spec.per_device_train_batch_size if phase == "train" else spec.per_device_eval_batch_size) or 1
        self.steps = spec.steps if phase == "train" else max(spec.eval_steps, 2)

    def settings(self, cand: Candidate) -> dict:
        s = {"attn_implementation": cand.attn_implementation, "gradient_checkpointing": cand.gradient_checkpointing,
             self.batch_key: self.batch}
        if self.phase == "train":
            s.update(self.space.accumulation(self.batch))
        else:
            s.update(self.space.spec.eval_keep_settings())
        return s

    def frontier(self, cand: Candidate, hint: int | None) -> FrontierSearch:
        """The largest position in the value list that fits (FrontierSearch over positions 1..n)."""
        space, values = self.space, self.values.values
        search = FrontierSearch(budget=space.budget, max_batch=len(values), hint=hint)
        base = self.settings(cand)
        with space.phase(self.values.dimension):
            while (k := search.next_batch()) is not None:
                result = space._run(self.phase, {**base, self.values.dimension: values[k - 1]}, self.steps, "frontier")
                search.record(k, result.outcome, result.peak_bytes)
        if search.error:
            cand.status, cand.reason = "failed", f"a step failed for a reason other than memory: {space.trials[-1].message}"
            space.errors.append(cand.reason)
        return search

    def candidates(self) -> list[tuple[Candidate, FrontierSearch]]:
        space, spec = self.space, self.space.spec
        gcs = sorted(spec.gradient_checkpointing_candidates) if self.phase == "train" else [False]  # no_grad: nothing to checkpoint
        previous: dict[bool, int] = {}
        found = []
        for attn in spec.attn_candidates:
            without = None
            for gc in gcs:
                cand = open_candidate(space, attn, gc)
                if cand.status == "skipped":
                    continue
                if gc and without is not None and without.lo == len(self.values.values):
                    cand.status = "pruned"
                    cand.reason = f"cannot win: the largest value ({self.values.values[-1]}) already fits without checkpointing"
                    continue
                before = len(space.trials)
                hint = (without.lo if gc and without is not None and without.lo else None) or previous.get(gc)
                search = self.frontier(cand, hint)
                cand.trials = len(space.trials) - before
                cand.frontier = self.values.values[search.lo - 1] if search.lo else 0
                if cand.status == "pending":
                    cand.status = "searched"
                    if not search.lo:
                        cand.reason = f"{self.values.dimension} {self.values.values[0]} does not fit at batch {self.batch}"
                if search.lo:
                    previous[gc] = search.lo
                if not gc:
                    without = search
                found.append((cand, search))
        return found


def search_limit(space, values: Values, phase: str = "train") -> FrontierResult:
    """Every candidate's frontier of `values.dimension` at the fixed batch, then the winner(s):
    the longest frontier, the fastest among those that reach it. Fills `space.candidates`
    (frontier = the limit's value) and their `measured` entries, so ranking and validation work
    as for the batch search. DoesNotFitError when even the smallest value fits nowhere."""
    started = len(space.trials)
    limit = LimitSearch(space, values, phase)
    found = limit.candidates()
    best = max((s.lo for _, s in found), default=0)
    if best == 0:
        if space.errors:
            from ..errors import AutotuneError

            raise AutotuneError(space.errors[0], "rerun with AUTOTUNE_DEBUG=1 for details")
        fixes = ("--train-type lora, --gradient-checkpointing on, a smaller --per-device-train-batch-size" if phase == "train"
                 else "a smaller --per-device-eval-batch-size, --prediction-loss-only, fewer --max-new-tokens")
        raise DoesNotFitError(f"even {values.dimension} {values.values[0]} does not fit at {phase} batch {limit.batch} "
                              f"(usable budget {format_size(space.budget)})", f"try {fixes}, or a larger card")
    value = values.values[best - 1]
    contenders = [(c, s) for c, s in found if s.lo == best]
    for cand, search in found:
        if search.lo and search.lo < best:
            cand.reason = f"frontier {cand.frontier} < {value}"
    timed = len(contenders) > 1
    for cand, _ in contenders:
        settings = {**limit.settings(cand), values.dimension: value}
        if timed:  # same value: the fastest wins, timed as the batch search times its candidates
            with space.phase("throughput"):
                trial = space._run(phase, settings, limit.steps + 2, "throughput")
        else:
            trial = _last_fit(space.trials[started:], values.dimension, value, cand)
        if trial is None or not trial.fits:
            continue
        cand.measured.append(_measured(space, cand, limit.batch, trial))
    non_fit = values.values[best] if best < len(values.values) else None
    return FrontierResult(values.dimension, value, limit.batch, phase, values, {"fit": value, "non_fit": non_fit},
                          {_key(c): c.frontier for c, _ in found}, len(space.trials) - started)


def _last_fit(trials, dimension: str, value: int, cand: Candidate):
    return next((t for t in reversed(trials) if t.fits and t.settings.get(dimension) == value
                 and t.settings.get("attn_implementation") == cand.attn_implementation
                 and bool(t.settings.get("gradient_checkpointing")) == cand.gradient_checkpointing), None)


def _measured(space, cand: Candidate, batch: int, trial) -> Measured:
    spec = space.spec
    if trial.phase == "eval":  # evaluation alone: no train batch (eval_only records the eval batch)
        return Measured(cand.attn_implementation, False, 1, 1, trial.tokens_per_s or 0.0, trial.peak_bytes or 0)
    accumulation = space.accumulation(batch)["gradient_accumulation_steps"] if trial.phase == "train" else 1
    target = spec.global_batch_size
    exact = target is None or batch * accumulation * spec.world_size == target
    split = Split(batch, accumulation, spec.world_size, target, exact,
                  None if exact else f"global batch {target} is not a multiple of per-device batch {batch} x world size "
                                     f"{spec.world_size}; using {batch} x {accumulation} x {spec.world_size}")
    return Measured(cand.attn_implementation, cand.gradient_checkpointing, split.per_device, split.accumulation,
                    trial.tokens_per_s or 0.0, trial.peak_bytes or 0, split.exact, split.note)


def evaluation_limit(space, result: FrontierResult, config) -> FrontierResult | None:
    """When the run at the found limit fails in its evaluation (the limit was searched on the train
    step; the evaluation, after a train step with the optimizer state resident, may hold more:
    kept logits grow with the length), the longest value below it whose evaluation at eval batch 1
    fits -- the same exact search over the value list, with the chosen configuration's eval trials
    -- and the configuration re-measured there. None when no smaller value's evaluation fits."""
    below = result.values.values[:result.values.values.index(result.value)]
    if not below or result.phase != "train":
        return None
    dimension = result.dimension
    base = {**space.eval_settings(config.attn_implementation, config.gradient_checkpointing), **config.levers,
            "per_device_train_batch_size": config.per_device_train_batch_size,
            "gradient_accumulation_steps": config.gradient_accumulation_steps, "per_device_eval_batch_size": 1}
    started = len(space.trials)
    search = FrontierSearch(budget=space.budget, max_batch=len(below))
    with space.phase(f"{dimension} (eval)"):
        while (k := search.next_batch()) is not None:
            trial = space._run("eval", {**base, dimension: below[k - 1]}, max(space.spec.eval_steps, 2), "frontier")
            search.record(k, trial.outcome, trial.peak_bytes)
        if search.error or search.lo == 0:
            return None
        value = below[search.lo - 1]
        cand = next(c for c in space.candidates if c.measured and any(m is config for m in c.measured))
        train = space._run("train", {**config.settings, "gradient_accumulation_steps": config.gradient_accumulation_steps,
                                     dimension: value}, space.spec.steps, "throughput")
    if not train.fits:
        return None
    for other in space.candidates:
        other.measured = []  # measured at the old value; only the re-measured configuration goes on
    cand.frontier = value
    cand.measured = [_measured(space, cand, result.batch, train)]
    non_fit = below[search.lo] if search.lo < len(below) else result.value
    proof = {"fit": value, "non_fit": non_fit, "phase": "eval",
             "train_fit": result.value, "why": f"the evaluation did not fit at {non_fit}"}
    space.eval_frontiers.clear()  # cached per configuration, at the old value
    space.measured_eval_frontiers.clear()
    return FrontierResult(dimension, value, result.batch, "train", result.values, proof, dict(result.candidates),
                          result.trials + len(space.trials) - started)
