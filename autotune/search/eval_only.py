"""Evaluation-only probes (`--task eval`, issue #14): a benchmark or a validation pass with no
training. Every trial is the Trainer's own `evaluate()` (trial.evaluate_with_trainer): no
optimizer state, no gradients; with `--predict-with-generate`, `generate()` for
`--max-new-tokens` on every sample.

Searched: the eval batch per attention implementation (checkpointing does nothing under
no_grad), or, with a limit given as auto, that limit at the fixed `--per-device-eval-batch-size`
(limits.search_limit in its eval phase). The largest frontier wins; equal frontiers
go to the faster. The winner is validated by a longer evaluation (`--validate-steps` eval
steps). Returns data for probe._recipe."""

from __future__ import annotations

from ..errors import DoesNotFitError
from ..recipe.schema import Validation
from ..sizes import format_size
from .limits import open_candidate, search_limit
from .space import Candidate, Measured, StepsRunner
from .validate import Validated


def _eval_settings(space, attn: str) -> dict:
    return {"attn_implementation": attn, "gradient_checkpointing": False, **space.spec.eval_keep_settings()}


def _batch_frontiers(space, find_frontier) -> list[tuple[Candidate, int]]:
    """The eval batch frontier of every attention that runs here."""
    spec, found, previous = space.spec, [], None
    for attn in spec.attn_candidates:
        cand = open_candidate(space, attn, False)
        if cand.status == "skipped":
            continue
        trials: list = []
        with space.phase("eval"):
            # As many eval steps as accumulate on the device before the flush: fewer miss the last step's outputs.
            runner = StepsRunner(space.runner, max(spec.eval_steps, 2))
            search = find_frontier(runner, "eval", _eval_settings(space, attn), space.budget, spec.max_batch_size,
                                   space.progress, trials, hint=previous)
            for t in trials:
                t.purpose = "frontier"
            space.trials.extend(trials)
        cand.trials, cand.frontier = len(trials), search.frontier
        if search.error:
            cand.status, cand.reason = "failed", f"an eval step failed for a reason other than memory: {trials[-1].message}"
            space.errors.append(cand.reason)
            continue
        cand.status = "searched"
        if search.frontier:
            previous = search.frontier
            at = next(t for t in reversed(trials) if t.fits and t.batch_size == search.frontier)
            cand.measured.append(Measured(attn, False, 1, 1, at.tokens_per_s or 0.0, at.peak_bytes or 0))
        else:
            cand.reason = f"eval batch 1 does not fit ({trials[0].outcome})"
        found.append((cand, search.frontier))
    return found


def search_eval(space, find_frontier, values=None, at_limit=None):
    """Returns (Validated, the limit's FrontierResult or None, the recipe's frontier dict).
    With `values`, `at_limit(result)` makes every later trial (the validation) run at the found value."""
    spec = space.spec
    limit = None
    if values is not None:
        limit = search_limit(space, values, phase="eval")
        at_limit(limit)
        batch = limit.batch
        order = [(c, batch) for c in space.candidates if c.measured]
        frontier = {limit.dimension: limit.value, "eval": batch}
    else:
        order = [(c, f) for c, f in _batch_frontiers(space, find_frontier) if f]
        if not order:
            if space.errors:
                from ..errors import AutotuneError

                raise AutotuneError(space.errors[0], "rerun with AUTOTUNE_DEBUG=1 for details")
            raise DoesNotFitError(f"even eval batch 1 does not fit at max length {spec.max_length} (usable budget {format_size(space.budget)})",
                                  "try --attn sdpa, a shorter --max-length, fewer --max-new-tokens, or lower media limits")
        frontier = {"eval": max(f for _, f in order)}
    order.sort(key=lambda cf: (-cf[1], -cf[0].measured[0].tokens_per_s))
    return validate_eval(space, order, limit), limit, frontier


def validate_eval(space, order: list, limit=None) -> Validated:
    """A longer evaluation at each configuration in turn until one stays inside the budget."""
    spec, attempts = space.spec, []
    steps = max(spec.validate_steps, spec.eval_steps)
    for cand, batch in order:
        settings = {**_eval_settings(space, cand.attn_implementation), "per_device_eval_batch_size": batch}
        space.progress.stage(f"validating {cand.attn_implementation}, eval batch {batch}: {steps} eval steps")
        with space.phase("validate"):
            result = space._run("eval", settings, steps, "validate")
        peak = result.peak_bytes
        problem = None if result.fits else f"eval {result.outcome}: " + (
            f"peak {format_size(peak)} against a usable budget of {format_size(space.budget)}" if peak else (result.message or ""))
        attempts.append({**settings, "passed": problem is None, "peak_bytes": peak, "message": problem})
        if problem is None:
            cand.chosen = True
            config = cand.measured[0]
            space.eval_frontiers[space.eval_key(config)] = batch
            validation = Validation(passed=True, method="validation-run", steps=0, peak_bytes=peak,
                                    headroom_bytes=space.budget - peak, headroom_pct=round(100.0 * (space.budget - peak) / space.budget, 2),
                                    tokens_per_s=result.tokens_per_s, eval_steps=result.steps, eval_peak_bytes=peak, attempts=attempts)
            return Validated(config, batch, validation)
        space.progress.stage(f"validation failed: {problem}")
    raise DoesNotFitError(f"no configuration passed the evaluation run ({len(attempts)} tried; last: {attempts[-1]['message']})",
                          "try a smaller eval batch, fewer --max-new-tokens, or lower media limits")
