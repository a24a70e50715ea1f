"""Presentation: live progress on stderr, summary tables, JSON. Compute modules never print."""

from __future__ import annotations

import contextlib
import io
import json
import sys

from rich import box
from rich.console import Console
from rich.table import Table

from ..recipe.levers import describe as describe_levers
from ..progress import ProgressSink
from ..recipe.schema import Recipe, TrialResult
from ..sizes import format_size

_STYLE = {"fit": "green", "oom": "red", "over_budget": "yellow", "error": "red bold", "skipped": "dim",
          "timeout": "magenta", "crashed": "magenta bold"}
_RESIZE_WORDS = {"processor": "transformers' processor", "qwen-vl-utils": "ms-swift's qwen-vl-utils"}
# Qwen3-VL's video under the processor's rule is the larger of the two (model/families/qwen3_vl.py)
_VIDEO_RESIZE_WORDS = {"processor": " (the larger of what transformers' processor and ms-swift's qwen-vl-utils make)",
                       "qwen-vl-utils": " (as ms-swift's qwen-vl-utils resizes it)"}


def stderr_console(quiet: bool = False) -> Console:
    return Console(stderr=True, quiet=quiet, highlight=False)


def describe_settings(settings: dict) -> str:
    parts = []
    for key, short in (("per_device_train_batch_size", "batch"), ("per_device_eval_batch_size", "eval batch"),
                       ("attn_implementation", "attn"), ("gradient_checkpointing", "gc"),
                       ("eval_accumulation_steps", "eval accum"), ("max_new_tokens", "generate"),
                       ("max_length", "length"), ("max_pixels", "pixels"), ("video_frames", "frames")):
        if key in settings and settings[key] is not None:
            value = settings[key]
            if key == "gradient_checkpointing":
                value = describe_levers(settings)  # on | off | every-4 | on+offload, packing ...
            parts.append(f"{short} {'on' if value is True else 'off' if value is False else value}")
    return ", ".join(parts)


class ConsoleProgress(ProgressSink):
    """One line per trial on stderr, as it finishes; a status spinner while it runs."""

    def __init__(self, console: Console):
        self.console = console
        self.count = 0
        self._status = None

    def stage(self, text: str) -> None:
        self.console.print(f"[dim]·[/dim] {text}")

    def trial_started(self, phase: str, settings: dict) -> None:
        if self.console.is_terminal:
            self._status = self.console.status(f"trial {self.count + 1}: {phase} {describe_settings(settings)}")
            self._status.start()

    def trial_finished(self, result: TrialResult) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        self.count += 1
        style = _STYLE.get(result.outcome, "")
        peak = format_size(result.peak_bytes) if result.peak_bytes is not None else "-"
        speed = f"{result.tokens_per_s:,.0f} tok/s" if result.tokens_per_s else ""
        self.console.print(f"trial {self.count:>2} {result.phase:<5} {describe_settings(result.settings):<34} "
                           f"[{style}]{result.outcome:<11}[/{style}] {peak:>10} {speed}", soft_wrap=True)


    def dataset(self, profile, record: dict) -> None:
        for file, line, problem in profile.issues:
            self.console.print(f"[yellow]{file}:{line}[/yellow]: {problem}", soft_wrap=True)
        self.console.print(dataset_lines(record))


def dataset_lines(d: dict) -> str:
    t, px = d["tokens"], d["image_pixels"]
    if d.get("used") is False:  # --swift-args's data, not all of it measurable: the probe keeps max_length
        return (f"dataset     {d['samples']} samples measured, {d['issue_count']} not (the lines above): the worst case of the "
                f"data ms-swift will train on is not known, so the probe runs at max_length {d['max_length']} (fix those lines, "
                f"or give --dataset FILE to measure the rest and leave them out)")
    counted = f" ({d['counted']})" if d.get("counted", "conversation") != "conversation" else ""
    text = (f"dataset     {d['samples']} samples measured ({d['issue_count']} problem lines): tokens{counted} p50 {t['p50']}, "
            f"p95 {t['p95']}, max {t['max']}")
    if px["count"]:
        text += f"; image pixels p50 {px['p50']}, p95 {px['p95']}, max {px['max']}"
    text += (f"\n            probing max_length {d['max_length']} ({d['truncated_samples']} samples longer: dropped or cut to it, "
             "as ms-swift's truncation_strategy says)")
    if d["max_pixels"]:
        text += f", max_pixels {d['max_pixels']} ({d['downscaled_images']} images downscaled)"
    return text


ATTN_SHORT = {"flash_attention_2": "fa2", "flash_attention_3": "fa3"}
# Columns the trials table gives up, in this order, until it fits the terminal: a value is
# never cut short; a column is dropped or abbreviated instead.
_DROPPABLE = ("purpose", "time", "% budget", "gc")


# A limit search (--max-length / --max-pixels / --video-frames auto) runs every trial at one
# batch: its trials differ in the limit, which gets a column of its own.
_LIMIT_COLUMNS = {"max_length": "length", "max_pixels": "pixels", "video_frames": "frames"}


def _limit_dimension(recipe: Recipe) -> str | None:
    return (recipe.search.sequence or {}).get("dimension")


def _trial_cells(recipe: Recipe, t: TrialResult, short_attn: bool) -> dict:
    s, budget = t.settings, recipe.search.budget_bytes
    attn = str(s.get("attn_implementation") or "-")
    limit = _limit_dimension(recipe)
    value = s.get(limit) if limit else None
    return {"#": None, "phase": t.phase, "purpose": t.purpose or "", "batch": str(t.batch_size),
            **({_LIMIT_COLUMNS.get(limit, limit): str(value if value is not None else getattr(recipe.settings, limit, "-"))}
               if limit else {}),
            "attn": ATTN_SHORT.get(attn, attn) if short_attn else attn,
            "gc": "-" if t.phase == "eval" else describe_levers(s),
            "outcome": f"[{_STYLE.get(t.outcome, '')}]{t.outcome}", "peak": format_size(t.peak_bytes),
            "% budget": f"{100 * t.peak_bytes / budget:.1f}" if t.peak_bytes and budget else "-",
            "tok/s": f"{t.tokens_per_s:,.0f}" if t.tokens_per_s else "-", "time": f"{t.wall_s:.1f}s"}


def _build_trials_table(recipe: Recipe, columns: list[str], short_attn: bool) -> Table:
    table = Table(title="trials", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in columns:
        table.add_column(column, justify="right" if column in ("#", "batch", "peak", "% budget", "tok/s", "time", *_LIMIT_COLUMNS.values())
                         else "left",
                         no_wrap=True)
    for i, t in enumerate(recipe.search.trials, 1):
        cells = _trial_cells(recipe, t, short_attn)
        cells["#"] = str(i)
        table.add_row(*(cells[c] for c in columns))
    return table


def _width(table: Table) -> int:
    console = Console(width=10_000, file=io.StringIO(), highlight=False, color_system=None)
    return console.measure(table).maximum


def trials_table(recipe: Recipe, width: int = 120) -> Table:
    """Every trial, one line each, fitted to `width` columns by abbreviating attention names
    (fa2) and then dropping purpose, time, % of budget and checkpointing, in that order."""
    columns = ["#", "phase", "purpose", "batch", "attn", "gc", "outcome", "peak", "% budget", "tok/s", "time"]
    if limit := _limit_dimension(recipe):
        columns.insert(columns.index("batch") + 1, _LIMIT_COLUMNS.get(limit, limit))
    table = _build_trials_table(recipe, columns, short_attn=False)
    if _width(table) <= width:
        return table
    table = _build_trials_table(recipe, columns, short_attn=True)
    for column in _DROPPABLE:
        if _width(table) <= width:
            break
        columns.remove(column)
        table = _build_trials_table(recipe, columns, short_attn=True)
    return table


def _build_candidates_table(recipe: Recipe, columns: list[str], short_attn: bool) -> Table:
    table = Table(title="candidates (fastest at the target global batch wins)", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for column in columns:
        table.add_column(column, justify="right" if column in ("frontier", "tok/s", "peak", "trials") else "left",
                         no_wrap=column != "note")
    for c in recipe.search.candidates:
        attn = c.get("attn_implementation", "")
        cells = {"attn": ATTN_SHORT.get(attn, attn) if short_attn else attn,
                 "gc": describe_levers({**c, **(c.get("levers") or {})}),
                 "status": "[green bold]chosen[/green bold]" if c.get("chosen") else c.get("status", ""),
                 "frontier": (">=" if c.get("frontier_bound") else "") + str(c["frontier"]) if c.get("frontier") is not None else "-",
                 "split": (f"{c['per_device_train_batch_size']} x {c['gradient_accumulation_steps']}"
                                   if c.get("per_device_train_batch_size") else "-"),
                 "tok/s": f"{c['tokens_per_s']:,.0f}" if c.get("tokens_per_s") else "-",
                 "peak": format_size(c.get("peak_bytes")), "trials": str(c.get("trials", 0)), "note": c.get("reason") or ""}
        table.add_row(*(cells[k] for k in columns))
    return table


def candidates_table(recipe: Recipe, width: int = 120) -> Table:
    """One row per (attention, checkpointing) candidate: why skipped or pruned, frontier, speed,
    peak. The note wraps; the other columns keep their values whole (attention abbreviated and
    the trial count dropped where the terminal is narrow)."""
    columns = ["attn", "gc", "status", "frontier", "split", "tok/s", "peak", "trials", "note"]
    fixed = lambda cols, short: _width(_build_candidates_table(recipe, [c for c in cols if c != "note"], short)) + 22  # noqa: E731
    short = fixed(columns, False) > width
    if short and fixed(columns, True) > width:
        columns.remove("trials")
    return _build_candidates_table(recipe, columns, short)


def phases_line(recipe: Recipe) -> str:
    def part(name: str, p: dict) -> str:
        if name == "plan":  # the plan first: no trials; with workers it ran while they loaded the model
            beside = p.get("while_loading_s") or 0
            return f"plan {p['wall_s']:.1f}s" + (f" ({beside:.1f}s of it while the model loaded)" if beside else "")
        return f"{name} {p['trials']} trials {p['wall_s']:.1f}s"
    return ", ".join(part(name, p) for name, p in recipe.search.phases.items())


def sequence_line(q: dict) -> str:
    """The limit search's answer with its proof: the fit, and the next value's non-fit (or the cap)."""
    bound = f"{q['non_fit']} does not" if q.get("non_fit") is not None else f"the largest value, capped by {q['cap']}"
    return (f"{q['dimension']} {q['value']} at {q['phase']} batch {q['batch']} (step {q['step']}; {q['fit']} fits, {bound}; "
            f"{q['trials']} trials)")


def summary(recipe: Recipe, console: Console, written: list[str] = (), next_steps: list[str] = ()) -> None:
    s, search, v = recipe.settings, recipe.search, recipe.validation
    console.print(trials_table(recipe, console.width))
    if search.candidates:
        console.print(candidates_table(recipe, console.width))
    console.print(f"device      {recipe.hardware.name}, usable {format_size(search.budget_bytes)} "
                  f"(margin {search.margin:.0%} of {format_size(search.capacity_bytes)})")
    frontier = ", ".join(f"{phase} {k}" for phase, k in search.frontier.items())
    console.print(f"frontier    {frontier}  ({len(search.trials)} trials, {search.wall_s:.1f}s)")
    if search.sequence:
        console.print(f"limit       {sequence_line(search.sequence)}")
    if search.phases:
        console.print(f"phases      {phases_line(recipe)}")
    line = f"recipe      per_device_train_batch_size={s.per_device_train_batch_size} gradient_accumulation_steps={s.gradient_accumulation_steps}"
    if s.task == "eval":  # evaluation only: no train batch
        line = "recipe      task=eval"
    if s.per_device_eval_batch_size is not None:
        line += f" per_device_eval_batch_size={s.per_device_eval_batch_size}"
    if s.eval_accumulation_steps is not None or s.prediction_loss_only is not None:
        line += f" eval_accumulation_steps={s.eval_accumulation_steps} prediction_loss_only={s.prediction_loss_only}"
    line += f" gradient_checkpointing={s.gradient_checkpointing} attn_implementation={s.attn_implementation}"
    for key in ("checkpoint_every_n_layers", "activation_offloading", "packing", "padding_free", "use_liger_kernel", "sequence_parallel_size"):
        if getattr(s, key, None):
            line += f" {key}={getattr(s, key)}"
    console.print(line + f" max_length={s.max_length}")
    if recipe.multimodal:
        m = recipe.multimodal
        resized = f" (as {_RESIZE_WORDS.get(s.image_resize, s.image_resize)} resizes them)" if s.image_resize else ""
        media = [f"{m['images_per_sample']} image(s) x {m['image_tokens']} tokens" + resized] if m['images_per_sample'] else []
        if m['videos_per_sample']:
            media.append(f"{m['videos_per_sample']} video x {m['video_tokens']} tokens"
                         + (_VIDEO_RESIZE_WORDS.get(s.image_resize, "") if m['family'] == "qwen3-vl" else ""))
        if m.get('audio_clips_per_sample'):
            media.append(f"{m['audio_clips_per_sample']} audio clip(s) x {m['audio_tokens']} tokens")
        console.print(f"vision      {m['family']}: {', '.join(media) or 'no media'}"
                      + f" + {m['text_tokens_per_sample']} text tokens; freeze_vit={s.freeze_vit} freeze_aligner={s.freeze_aligner} "
                      f"freeze_llm={s.freeze_llm}" + (f" env {s.env}" if s.env else ""))
    for line in levers_lines(search.levers):
        console.print(line)
    for line in rlhf_lines(recipe):
        console.print(line)
    if search.global_batch_note:
        console.print(f"[yellow]note[/yellow]        {search.global_batch_note}")
    if v.method == "planned":  # `autotune plan --out`: predicted, never run, so neither passed nor failed
        evaluation = f" (evaluation {format_size(v.eval_peak_bytes)})" if v.eval_peak_bytes else ""
        console.print(f"validation  [yellow]none[/yellow] (planned): predicted peak {format_size(v.peak_bytes)}{evaluation}, "
                      f"headroom {format_size(v.headroom_bytes)}; {v.message}")
    else:
        status = "[green]passed[/green]" if v.passed else "[red]failed[/red]"
        steps = f"{v.steps} train steps" + (f" + {v.eval_steps} eval steps" if v.eval_steps else "")
        speed = f", {v.tokens_per_s:,.0f} tok/s" if v.tokens_per_s else ""
        pct = f" ({v.headroom_pct}%)" if v.headroom_pct is not None else ""
        console.print(f"validation  {status} ({v.method}, {steps}): peak {format_size(v.peak_bytes)}, "
                      f"headroom {format_size(v.headroom_bytes)}{pct}{speed}")
    for attempt in v.attempts:
        if not attempt.get("passed"):
            console.print(f"[yellow]note[/yellow]        validation of {describe_settings(attempt)} failed: {attempt.get('message')}")
    files_and_next(console, written, next_steps)


def rlhf_lines(recipe: Recipe) -> list[str]:
    """An RLHF recipe (issue #12): the run's RLHF arguments, the reference model, the rollout engine."""
    r, s = recipe.rlhf, recipe.settings
    if not r:
        return []
    if r["type"] == "dpo":
        head = f"rlhf        dpo, beta {r['beta']} ({r['beta_from']}); reference model: {r['reference_model']}"
        return [head + (", log-probs precomputed" if s.precompute_ref_log_probs else "")]
    lines = [f"rlhf        grpo, {r['num_generations']} completions of {r['max_completion_length']} tokens per prompt of "
             f"{s.max_length}; generation batch {r['generation_batch_size']}; beta {r['beta']} ({r['beta_from']}); "
             f"reference model: {r['reference_model']}"]
    rollout = r.get("rollout") or {}
    if rollout.get("share") is not None:
        auto = rollout.get("auto") or {}
        lines.append(f"{'':<12}vLLM colocated: {rollout['share']} of the card ({format_size(rollout['share_bytes'])})"
                     + (f", auto: needs {format_size(auto['need_bytes'])}" if auto.get("need_bytes") else "")
                     + f"; {rollout['how']}: {rollout.get('why')}")
    elif rollout:
        lines.append(f"{'':<12}rollouts {rollout['how']}: {rollout.get('why')}")
    return lines


def levers_lines(record: dict) -> list[str]:
    """The levers asked for (issue #15): what each did, and by how much the chosen one wins."""
    if not record:
        return []
    lines = []
    for name, row in record.get("asked", {}).items():
        text = f"{name.replace('_', '-')} {row['asked']}: {row['status']}"
        if row.get("reason"):
            text += f" ({row['reason']})"
        if row.get("written"):
            text += "; written to the launch files"
        lines.append(f"{'levers' if not lines else '':<12}{text}")
    best = record.get("best_without_levers")
    if record.get("speedup_pct") is not None and best:
        lines.append(f"{'':<12}chosen {record['chosen']}: {record['speedup_pct']:+.1f}% tok/s over the best without levers "
                     f"({best['configuration']}, batch {best['per_device_train_batch_size']}, {best['tokens_per_s']:,.0f} tok/s)")
    elif record.get("note"):
        lines.append(f"{'':<12}chosen {record['chosen']}: {record['note']}")
    return lines


def files_and_next(console: Console, written: list[str], next_steps: list[str]) -> None:
    """Every file written, then the commands to run next."""
    for i, path in enumerate(written):
        console.print(f"{'wrote' if i == 0 else '':<12}{path}", soft_wrap=True)
    for i, line in enumerate(next_steps):
        console.print(f"{'next' if i == 0 else '':<12}{line}", soft_wrap=True)


_RESULTS = None  # the real stdout while a command whose stdout is data runs (machine_readable_stdout)


@contextlib.contextmanager
def machine_readable_stdout():
    """While a command whose stdout is data runs (`--format json`, `emit -o -`), anything else
    printed to stdout goes to stderr: DeepSpeed's logger writes its accelerator line to stdout
    when transformers imports it ("Setting accelerator to CPU", "Setting ds_accelerator to cuda"),
    which broke `... --format json | jq`. The data itself goes to `results()`."""
    global _RESULTS
    saved = sys.stdout
    _RESULTS, sys.stdout = saved, sys.stderr
    try:
        yield
    finally:
        sys.stdout, _RESULTS = saved, None


def results():
    """Where a command's data goes: the real stdout (see machine_readable_stdout)."""
    return _RESULTS or sys.stdout


def print_json(data: dict) -> None:
    json.dump(data, results(), indent=2)
    results().write("\n")


def stdout_console() -> Console:
    """The terminal's width (rich: $COLUMNS, else 80 when not a terminal); tables fit it."""
    return Console(highlight=False)
