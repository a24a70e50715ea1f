"""The whole search space: attention implementation x gradient checkpointing.

For each candidate: its exact train frontier, then its throughput at the per-device batches that
split the target global batch exactly. Then the eval frontier for the attention that won.
Returns data; validation is search/validate.py, the recipe is assembled in probe.py.

What earlier candidates teach is reused, never guessed past:
- checkpointing only lowers memory, so the frontier with it is at least the frontier without:
  the search with checkpointing starts at that frontier (the `hint`);
- at the same per-device batch checkpointing only adds compute (it re-runs the forward), so
  with checkpointing only batches larger than the best one without it are measured, and the
  candidate is pruned when there is none;
- a frontier found for one attention implementation is the first probe for the next.

With a plan's frontiers (`probe --plan-first`, `--from-plan`; issue #13) each search starts at
its planned frontier and the space spends no trial that cannot change the choice: a search stops
at the largest per-device batch the objective admits (search/batches.py `search_bound`), a
frontier trial is as long as a timing so its fit at a timed batch is that timing, smaller
batches are not timed where a fit at a larger one ran no slower (up to the noise), and the
runoff re-times only timings inside each other's noise (search/throughput.py). Without a
plan, as before.
The batch rules are search/batches.py; timings and their ranking search/throughput.py; which
attention can run search/attention.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from dataclasses import dataclass, field

from ..recipe import levers
from . import batches as batch_rules
from .attention import attn_unavailable_reason
from .global_batch import split_global_batch
from .levers import cheapest_fitting
from .throughput import RUNOFF_BAND, RUNOFF_ROUNDS, Measured, rank, rises_to_above, runoff_contenders, timed_already
from ..recipe.schema import TrialResult


@dataclass
class Candidate:
    attn_implementation: str
    gradient_checkpointing: bool
    status: str = "pending"  # "searched" | "skipped" (cannot run here) | "pruned" (cannot win) | "failed"
    reason: str | None = None
    frontier: int | None = None
    trials: int = 0
    measured: list[Measured] = field(default_factory=list)
    chosen: bool = False
    levers: dict = field(default_factory=dict)
    bound: int | None = None  # the frontier is this search bound, below --max-batch-size: it is at least this

    @property
    def base(self) -> dict:
        """The settings every trial of this candidate has."""
        return {"attn_implementation": self.attn_implementation, "gradient_checkpointing": self.gradient_checkpointing,
                **self.levers}

    def best(self) -> Measured | None:
        return rank(self.measured)[0] if self.measured else None

    def row(self) -> dict:
        best = self.best()
        row = {
            "attn_implementation": self.attn_implementation, "gradient_checkpointing": self.gradient_checkpointing,
            "status": self.status, "reason": self.reason, "frontier": self.frontier,
            "per_device_train_batch_size": best.per_device_train_batch_size if best else None,
            "gradient_accumulation_steps": best.gradient_accumulation_steps if best else None,
            "tokens_per_s": round(best.tokens_per_s, 2) if best else None,
            "peak_bytes": best.peak_bytes if best else None, "trials": self.trials, "chosen": self.chosen,
            "measured": [{"per_device_train_batch_size": m.per_device_train_batch_size,
                          "tokens_per_s": round(m.tokens_per_s, 2), "peak_bytes": m.peak_bytes} for m in self.measured],
        }
        if self.levers:
            row["levers"] = dict(self.levers)
        if self.bound:
            row["frontier_bound"] = self.bound  # not searched above: the global batch admits no larger per-device batch
        return row


class SearchSpace:
    """Runs the space's trials through `runner` (run(phase, settings, steps=None) -> TrialResult)."""

    def __init__(self, spec, runner, device, budget: int, progress, find_frontier):
        self.spec = spec
        self.runner = runner
        self.device = device
        self.budget = budget
        self.progress = progress
        self._find_frontier = find_frontier  # frontier.find_frontier (tests pass their own)
        self.trials: list[TrialResult] = []
        self.candidates: list[Candidate] = []
        self.phases: dict[str, dict] = {}
        self.eval_frontiers: dict[str, int] = {}
        self.measured_eval_frontiers: dict[str, int] = {}  # the eval frontiers as measured, before the batch rules
        self.errors: list[str] = []
        self.first_hint: int | None = None  # a predicted frontier (a plan) for the first candidate without checkpointing
        self.plan_hints: dict = {}  # (attention, checkpointing) -> {"train": batch, "eval": batch}: a plan's frontiers
        self.model_cls = None  # the transformers class: attentions it does not support are skipped
        # What the levers need to know of the model (recipe/levers.py facts_of) and whether trials run
        # the Trainer (not under FSDP / DeepSpeed); set by the probe from its session, else read off
        # the runner's workload when first needed.
        self.lever_facts: dict | None = None
        self.through_trainer = True

    # ------------------------------------------------------------ bookkeeping
    @contextlib.contextmanager
    def phase(self, name: str):
        entry = self.phases.setdefault(name, {"trials": 0, "wall_s": 0.0})
        before, started = len(self.trials), time.perf_counter()
        try:
            yield
        finally:
            entry["trials"] += len(self.trials) - before
            entry["wall_s"] = round(entry["wall_s"] + time.perf_counter() - started, 3)

    def _run(self, phase: str, settings: dict, steps: int | None, purpose: str) -> TrialResult:
        self.progress.trial_started(phase, settings)
        result = self.runner.run(phase, settings, steps)
        result.purpose = purpose
        self.trials.append(result)
        self.progress.trial_finished(result)
        return result

    # ------------------------------------------------------------ train
    def reachable(self) -> list[int]:
        """Per-device batches the objective admits at any frontier (search/batches.py)."""
        return batch_rules.reachable(self.spec)

    def accumulation(self, batch: int) -> dict:
        """The accumulation that keeps the global batch at this per-device batch (search/batches.py)."""
        return batch_rules.accumulation(self.spec, batch)

    def batches_to_measure(self, frontier: int) -> list[int]:
        """Per-device batches <= frontier that split the global batch exactly, largest first."""
        return batch_rules.to_measure(self.spec, frontier)

    @property
    def planned(self) -> bool:
        """The search starts from a plan's frontiers (--plan-first, --from-plan): it then also
        stops each train search at the largest batch the objective admits, takes a frontier
        trial as the throughput sample where its settings are those timed, times no smaller
        batch where a larger one ran no slower, and runs off only the timings inside each
        other's noise (issue #13). Without a plan, as before."""
        return bool(self.plan_hints)

    def search_train(self) -> list[Candidate]:
        previous: dict[str, int] = {}  # configuration name -> frontier found for the previous attention
        for attn in self.spec.attn_candidates:
            for variant in self.variants():
                self._search_chain(attn, variant, previous)
        levers.check_forced(self.spec, self.candidates)
        return self.candidates

    def variants(self) -> list[dict]:
        """The data-side levers (packing, padding-free, Liger) each attention is searched with."""
        return levers.variants(self.spec, self.device)

    def _search_chain(self, attn: str, variant: dict, previous: dict[str, int]) -> None:
        """The checkpointing modes of one attention and variant, most memory first (off, on,
        on+offload; with `partial`, every-N between off and on). Each mode only lowers memory and
        only adds work at the same batch, so each starts at the frontier of the modes before it
        and is measured only above the largest batch they measured."""
        earlier: list[Candidate] = []
        for mode in levers.checkpointing_modes(self.spec):
            gc = mode["gradient_checkpointing"]
            cand = Candidate(attn, gc, levers={**variant, **levers.of(mode)})
            self.candidates.append(cand)
            cand.reason = self._unavailable(cand)
            if cand.reason is not None:
                cand.status = "skipped"
                continue
            floor = max((c.frontier for c in earlier if c.frontier), default=None)
            # the largest batch measured with more memory: here, the same batch is only slower
            largest = max((m.per_device_train_batch_size for c in earlier for m in c.measured), default=None)
            if largest and largest >= max(self.reachable()):
                cand.status = "pruned"
                cand.reason = (f"cannot win: batch {largest} already fits {levers.modes_in_words([c.base for c in earlier])} and is the largest "
                               "the global batch allows")
                continue
            name = levers.describe(cand.base)
            partial = gc and earlier and self.spec.every_n_layers == levers.PARTIAL and not cand.levers.get("activation_offloading")
            # a plan's frontier: planned without levers, so only for a candidate without them
            planned = None if cand.levers else self.plan_hints.get((attn, gc), {}).get("train")
            self._search_candidate(cand, hint=planned or floor or previous.get(name) or (None if gc else self.first_hint),
                                   floor_batch=largest, measure=not partial)
            partials = self._search_partial(cand, largest) if partial and cand.status == "searched" else []
            if cand.frontier:
                previous[name] = cand.frontier
            earlier += [*partials, cand]

    def _unavailable(self, cand: Candidate) -> str | None:
        reason = attn_unavailable_reason(cand.attn_implementation, self.device, self.spec.dtype, self.model_cls)
        if reason is None and cand.levers:
            reason = levers.runs_here(self.facts(), self.through_trainer, cand.levers) or levers.variant_unavailable(
                cand.levers, cand.attn_implementation, self.device)
        return reason or self._switch(cand.attn_implementation, cand.gradient_checkpointing)

    def facts(self) -> dict:
        if self.lever_facts is None:
            self.lever_facts = levers.facts_of(self.runner.workload)
        return self.lever_facts

    def _search_partial(self, on: Candidate, largest: int | None) -> list[Candidate]:
        """Partial checkpointing between off and on: for each batch that fits only with
        checkpointing, the every-N that checkpoints the fewest layers and still fits
        (search/levers.py cheapest_fitting); then throughput at each batch with that mode (or with
        full checkpointing where no N fits), largest batch first."""
        batches = [b for b in self.batches_to_measure(on.frontier) if largest is None or b > largest]
        layers = self.facts()["checkpointed_layers"]
        ladder = levers.every_n_ladder(layers)
        by_n: dict[int, Candidate] = {}

        def fits(batch: int, n: int) -> bool:
            cand = by_n.get(n)
            if cand is None:
                cand = by_n[n] = Candidate(on.attn_implementation, True, status="searched",
                                           levers={**on.levers, "checkpoint_every_n_layers": n},
                                           reason=f"checkpoints {-(-layers // n)} of {layers} layers")
                self.candidates.insert(self.candidates.index(on), cand)
            before = len(self.trials)
            with self.phase("train"):
                result = self._run("train", {**cand.base, "per_device_train_batch_size": batch, **self.accumulation(batch)},
                                   None, "frontier")
            cand.trials += len(self.trials) - before
            if result.outcome == "error":
                self.errors.append(f"a training step failed for a reason other than memory: {result.message}")
            if result.fits:
                cand.frontier = max(cand.frontier or 0, batch)
            return result.fits

        found = cheapest_fitting(batches, ladder, fits) if batches else {}
        for cand in by_n.values():
            if not cand.frontier:
                cand.status, cand.reason = "pruned", f"cannot win: {cand.reason}, and fits no batch above {largest or 0}"
        pairs = [(b, by_n[found[b]] if found.get(b) else on) for b in sorted(batches, reverse=True)]
        before = len(self.trials)
        with self.phase("throughput"):
            self._measure_pairs(pairs)
        for trial in self.trials[before:]:
            (by_n.get(trial.settings.get("checkpoint_every_n_layers")) or on).trials += 1
        if not batches:
            on.status, on.reason = "pruned", (f"cannot win: frontier {on.frontier} admits no batch splitting the global batch "
                                              f"above {largest}, which runs faster without checkpointing")
        elif not on.measured and on.status == "searched":
            on.status, on.reason = "pruned", "cannot win: a partial checkpointing fits each batch it fits, and recomputes less"
        return list(by_n.values())

    def _switch(self, attn: str, gc: bool) -> str | None:
        workload = getattr(self.runner, "workload", None)
        if workload is None:  # trials run in workers: a switch that fails shows as an error trial there
            return None
        try:
            workload.configure(attn_implementation=attn, gradient_checkpointing=gc)
        except (ValueError, ImportError, NotImplementedError) as exc:  # the model does not support it
            return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        return None

    def _search_candidate(self, cand: Candidate, hint: int | None, floor_batch: int | None, measure: bool = True) -> None:
        spec = self.spec
        base = cand.base
        before = len(self.trials)
        # With a plan, the search stops at the largest batch the objective admits, and each of its
        # trials is as long as a timing: a fit at a batch that is timed then is that timing.
        bound = batch_rules.search_bound(spec) if self.planned else spec.max_batch_size
        runner = StepsRunner(self.runner, spec.steps + 2) if self.planned else self.runner
        with self.phase("train"):
            found: list[TrialResult] = []
            search = self._find_frontier(runner, "train", base, self.budget, bound, self.progress, found,
                                         hint=hint, per_batch=self.accumulation)
            for t in found:
                t.purpose = "frontier"
            self.trials.extend(found)
        cand.frontier = search.frontier
        cand.bound = bound if search.frontier == bound < spec.max_batch_size else None
        if search.error:
            cand.status, cand.reason = "failed", f"a training step failed for a reason other than memory: {found[-1].message}"
            self.errors.append(cand.reason)
        elif search.frontier == 0:
            first = found[0]
            cand.status, cand.reason = "failed", f"batch 1 does not fit ({first.outcome})"
        elif not measure:
            cand.status = "searched"
        else:
            cand.status = "searched"
            batches = self.batches_to_measure(search.frontier)
            if floor_batch is not None:  # checkpointing: only larger batches than without it can win
                batches = [b for b in batches if b > floor_batch]
                if not batches:
                    cand.status = "pruned"
                    cand.reason = (f"cannot win: frontier {search.frontier} admits no batch splitting the global batch above {floor_batch}, "
                                   "which runs faster without checkpointing")
            with self.phase("throughput"):
                self._measure_pairs([(b, cand) for b in batches])
        cand.trials = len(self.trials) - before

    def _measure_pairs(self, pairs: list[tuple[int, Candidate]]) -> None:
        """(batch, candidate) pairs, largest batch first; per candidate, go on to smaller batches while
        its throughput keeps rising (a smaller batch with a cheaper mode can still be faster)."""
        spec = self.spec
        key = "per_device_train_batch_size"
        last: dict[int, Measured] = {}
        done: set[int] = set()
        for batch, cand in pairs:
            if id(cand) in done or (id(cand) in last and self._rises_above(cand, last[id(cand)])):
                continue
            settings = {**cand.base, key: batch, **self.accumulation(batch)}
            result = self._timed_already(settings) or self._run("train", settings, spec.steps + 2, "throughput")
            if not result.fits or not result.tokens_per_s:
                continue  # at the frontier's edge a longer run can breach: it is not a candidate
            split = split_global_batch(spec.global_batch_size, batch, spec.world_size)  # batch itself: it came from the splits
            entry = Measured(cand.attn_implementation, cand.gradient_checkpointing, split.per_device, split.accumulation,
                             result.tokens_per_s, result.peak_bytes, split.exact, split.note, dict(cand.levers),
                             result.step_time_spread)
            cand.measured.append(entry)
            if id(cand) in last and entry.tokens_per_s <= last[id(cand)].tokens_per_s:
                done.add(id(cand))
            last[id(cand)] = entry

    def _timed_already(self, settings: dict) -> TrialResult | None:
        """With a plan: the frontier's fit at exactly these settings, as long as a timing."""
        return timed_already(self.trials, settings, self.spec.steps + 2) if self.planned else None

    def _rises_above(self, cand: Candidate, entry: Measured) -> bool:
        """With a plan: a fit of this configuration at a larger batch ran no slower than `entry`."""
        return self.planned and rises_to_above(self.trials, cand.base, entry, self.spec.steps + 2)

    def runoff(self, band: float = RUNOFF_BAND, rounds: int = RUNOFF_ROUNDS) -> None:
        """Measure, don't guess, when in doubt: configurations within `band` of the fastest (with a
        plan: within their timings' own noise of it, search/throughput.py) are timed again,
        round-robin (so load drift hits all alike), and ranked by their median."""
        contenders = runoff_contenders([m for c in self.candidates for m in c.measured], band, by_noise=self.planned)
        if not contenders:
            return
        samples = {id(m): [m.tokens_per_s] for m in contenders}
        with self.phase("throughput"):
            for _ in range(rounds):
                for m in contenders:
                    result = self._run("train", m.settings, self.spec.steps + 2, "throughput")
                    if result.fits and result.tokens_per_s:
                        samples[id(m)].append(result.tokens_per_s)
        for m in contenders:
            m.tokens_per_s = statistics.median(samples[id(m)])

    def ranked(self) -> list[Measured]:
        return rank([m for c in self.candidates for m in c.measured])

    # ------------------------------------------------------------ eval
    def eval_settings(self, attn: str, gc: bool) -> dict:
        return {"attn_implementation": attn, "gradient_checkpointing": gc, **self.spec.eval_keep_settings()}

    def eval_frontier(self, config: Measured) -> int:
        """The eval batch frontier for a configuration, evaluating inside its training: after an
        optimizer step at its train batch and accumulation (the Trainer still holds that step's
        micro-batches while it evaluates). Cached per (attention, checkpointing, train batch, accumulation)."""
        key = self.eval_key(config)
        if key not in self.eval_frontiers:
            found: list[TrialResult] = []
            # The levers as the evaluation runs them: packing packs the eval rows too; the Trainer
            # uses Liger's fused loss in evaluation only when it keeps the loss alone (skip_logits).
            settings = {**self.eval_settings(config.attn_implementation, config.gradient_checkpointing), **config.levers,
                        "per_device_train_batch_size": config.per_device_train_batch_size,
                        "gradient_accumulation_steps": config.gradient_accumulation_steps}
            with self.phase("eval"):
                runner = StepsRunner(self.runner, max(self.spec.eval_steps, 2))
                planned = None if config.levers else self.plan_hints.get((config.attn_implementation, config.gradient_checkpointing), {}).get("eval")
                search = self._find_frontier(runner, "eval", settings, self.budget, self.spec.max_batch_size, self.progress, found,
                                             hint=planned)
                for t in found:
                    t.purpose = "frontier"
                self.trials.extend(found)
            if search.error:
                self.errors.append(f"an eval step failed for a reason other than memory: {found[-1].message}")
            self.eval_frontiers[key] = batch_rules.eval_allowed(self.spec, search.frontier)
            self.measured_eval_frontiers[key] = search.frontier  # before an RLHF run's batch rules
        return self.eval_frontiers[key]

    @staticmethod
    def eval_key(config: Measured) -> str:
        # checkpointing too: on a GPU the train step before the evaluation leaves its cached blocks in the reserved peak
        gc = "on" if config.gradient_checkpointing else "off"
        if config.levers:
            gc = levers.describe(config.settings).replace(", ", "+")
        return f"{config.attn_implementation}/gc-{gc}/{config.per_device_train_batch_size}x{config.gradient_accumulation_steps}"


@dataclasses.dataclass
class StepsRunner:
    """A runner whose trials run `steps` steps (eval: as many steps as accumulate on the device)."""

    inner: object
    steps: int

    def run(self, phase: str, settings: dict, steps: int | None = None) -> TrialResult:
        return self.inner.run(phase, settings, steps or self.steps)
