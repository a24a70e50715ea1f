"""Peak memory (top) and throughput (bottom) against per-device batch size for every candidate
and the eval search. Fits are filled dots, over-budget trials hollow dots, OOMs crosses on the
capacity line; the chosen configuration is a star; capacity and usable budget are legend
entries, not text over the points. matplotlib is imported here only (the `plot` extra), and
through its object API: no pyplot global state."""

from __future__ import annotations

import io

from ..recipe.levers import LEVER_KEYS, describe

MiB = 2**20


def _label(phase: str, settings: dict) -> str:
    gc = "gc " + describe(settings)  # gc on / gc off, or gc every-4, gc on+offload, packing
    return f"eval, {settings.get('attn_implementation')}" if phase == "eval" else f"{settings.get('attn_implementation')}, {gc}"


def group_trials(recipe) -> dict[str, list]:
    """Search trials (validation runs excluded) grouped by candidate, in the order first seen."""
    groups: dict[str, list] = {}
    for t in recipe.search.trials:
        if t.purpose != "validate":
            groups.setdefault(_label(t.phase, t.settings), []).append(t)
    return groups


def throughput_points(trials) -> list[tuple[int, float]]:
    """(batch, tokens/s) from the longer throughput trials where there are any, one per batch."""
    timed = [t for t in trials if t.fits and t.tokens_per_s and t.phase == "train"]
    timed = [t for t in timed if t.purpose == "throughput"] or timed
    return sorted({t.batch_size: t.tokens_per_s for t in timed}.items())


def chosen_point(recipe) -> tuple[str, int, float] | None:
    """(label, batch, peak MiB) of the chosen configuration: its validated peak, else its largest measured one."""
    s = recipe.settings
    label = _label("train", {"attn_implementation": s.attn_implementation, "gradient_checkpointing": s.gradient_checkpointing,
                             **{k: getattr(s, k) for k in LEVER_KEYS}})
    batch = s.per_device_train_batch_size
    peaks = [t.peak_bytes for t in recipe.search.trials
             if t.phase == "train" and t.batch_size == batch and t.peak_bytes is not None
             and _label("train", t.settings) == label]
    if not peaks:
        return None
    return label, batch, max(peaks) / MiB


def render_png(recipe, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    build_figure(recipe).savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def build_figure(recipe):
    """The matplotlib Figure (two axes: peak, throughput); render_png draws it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    search = recipe.search
    fig = Figure(figsize=(9, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax, speed = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    capacity, budget = search.capacity_bytes / MiB, search.budget_bytes / MiB
    handles = []
    for i, (label, trials) in enumerate(group_trials(recipe).items()):
        color = f"C{i % 10}"
        ran = sorted((t.batch_size, t.peak_bytes / MiB, t.fits) for t in trials if t.peak_bytes is not None)
        if ran:
            ax.plot([b for b, _, _ in ran], [p for _, p, _ in ran], "-", color=color, linewidth=1.2, alpha=0.8)
            fit = [(b, p) for b, p, ok in ran if ok]
            over = [(b, p) for b, p, ok in ran if not ok]
            if fit:
                ax.plot(*zip(*fit), "o", color=color, markersize=5)
            if over:
                ax.plot(*zip(*over), "o", markerfacecolor="white", markeredgecolor=color, markeredgewidth=1.5, markersize=7)
        ooms = [t.batch_size for t in trials if t.outcome in ("oom", "timeout", "crashed")]
        if ooms:
            ax.plot(ooms, [capacity] * len(ooms), "x", color=color, markersize=9, markeredgewidth=2)
        fast = throughput_points(trials)
        if fast:
            speed.plot([b for b, _ in fast], [s for _, s in fast], "o-", color=color, markersize=4)
        handles.append(Line2D([], [], color=color, marker="o", markersize=5, label=label))
    ax.axhline(capacity, color="black", linewidth=1)
    ax.axhline(budget, color="black", linewidth=1, linestyle=":")
    chosen = chosen_point(recipe)
    if chosen:
        _, batch, peak = chosen
        ax.plot([batch], [peak], "*", color="gold", markeredgecolor="black", markersize=16, zorder=5)
        speed.axvline(batch, color="gold", linewidth=2, alpha=0.6, zorder=0)
    handles += [Line2D([], [], color="black", linewidth=1, label=f"capacity {capacity:,.0f} MiB"),
                Line2D([], [], color="black", linewidth=1, linestyle=":", label=f"usable budget {budget:,.0f} MiB"),
                Line2D([], [], linestyle="", marker="o", color="grey", label="fits"),
                Line2D([], [], linestyle="", marker="o", markerfacecolor="white", markeredgecolor="grey",
                       markeredgewidth=1.5, label="ran, over budget"),
                Line2D([], [], linestyle="", marker="x", color="grey", markeredgewidth=2, label="out of memory"),
                Line2D([], [], linestyle="", marker="*", color="gold", markeredgecolor="black", markersize=12, label="chosen")]
    # Clip to the card: an OOM has no peak, and nothing above the capacity line needs drawing.
    ax.set_ylim(0, capacity * 1.08)
    ax.set_ylabel("peak memory (MiB)")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    speed.set_title("throughput at the batches measured for it (colours as above; gold line: the chosen batch)", fontsize=8)
    speed.set_ylim(bottom=0)
    speed.set_ylabel("throughput (tokens/s per device)")
    speed.set_xlabel("per-device batch size")
    speed.grid(alpha=0.3)
    ax.grid(alpha=0.3)
    s = recipe.settings
    ax.set_title(f"{recipe.model.architecture}, {recipe.model.train_type}, {recipe.model.max_length} tokens — chosen: "
                 f"{s.attn_implementation}, gc {'on' if s.gradient_checkpointing else 'off'}, batch {s.per_device_train_batch_size}"
                 f" x {s.gradient_accumulation_steps}", fontsize=9)
    return fig
