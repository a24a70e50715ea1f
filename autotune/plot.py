"""Peak memory against batch size for every candidate, with the capacity and usable-budget lines,
OOM trials marked at the capacity line, and throughput on a second axis. matplotlib is imported
here only (the `plot` extra), and through its object API: no pyplot global state."""

from __future__ import annotations

import io

MiB = 2**20


def _label(phase: str, settings: dict) -> str:
    gc = "gc on" if settings.get("gradient_checkpointing") else "gc off"
    return f"eval, {settings.get('attn_implementation')}" if phase == "eval" else f"{settings.get('attn_implementation')}, {gc}"


def group_trials(recipe) -> dict[str, list]:
    """Search trials (validation runs excluded) grouped by candidate, in the order first seen."""
    groups: dict[str, list] = {}
    for t in recipe.search.trials:
        if t.purpose != "validate":
            groups.setdefault(_label(t.phase, t.settings), []).append(t)
    return groups


def render_png(recipe, dpi: int = 110) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    search = recipe.search
    fig = Figure(figsize=(9, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    speed = ax.twinx()
    capacity, budget = search.capacity_bytes / MiB, search.budget_bytes / MiB
    colors = [f"C{i}" for i in range(10)]
    for i, (label, trials) in enumerate(group_trials(recipe).items()):
        color = colors[i % len(colors)]
        ran = sorted((t.batch_size, t.peak_bytes / MiB) for t in trials if t.peak_bytes is not None)
        if ran:
            ax.plot([b for b, _ in ran], [p for _, p in ran], "o-", color=color, label=label, markersize=4)
        ooms = [t.batch_size for t in trials if t.outcome == "oom"]
        if ooms:
            ax.plot(ooms, [capacity] * len(ooms), "x", color=color, markersize=9, markeredgewidth=2)
        # throughput from the longer measurement trials where there are any (one point per batch)
        timed = [t for t in trials if t.fits and t.tokens_per_s and t.phase == "train"]
        timed = [t for t in timed if t.purpose == "throughput"] or timed
        fast = sorted({t.batch_size: t.tokens_per_s for t in timed}.items())
        if fast:
            speed.plot([b for b, _ in fast], [s for _, s in fast], "^--", color=color, alpha=0.6, markersize=4)
    ax.axhline(capacity, color="black", linewidth=1)
    ax.axhline(budget, color="black", linewidth=1, linestyle=":")
    ax.text(ax.get_xlim()[1], capacity, "capacity (x: OOM) ", ha="right", va="bottom", fontsize=8)
    ax.text(ax.get_xlim()[1], budget, "usable budget ", ha="right", va="top", fontsize=8)
    ax.set_xlabel("per-device batch size")
    ax.set_ylabel("peak memory (MiB)")
    speed.set_ylabel("throughput (tokens/s, dashed)")
    s = recipe.settings
    ax.set_title(f"{recipe.model.architecture}, {recipe.model.train_type}, {recipe.model.max_length} tokens — chosen: "
                 f"{s.attn_implementation}, gc {'on' if s.gradient_checkpointing else 'off'}, batch {s.per_device_train_batch_size}",
                 fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
