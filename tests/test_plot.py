"""The plot reads by itself: over-budget trials look different from fits, the chosen point is
marked, throughput has its own panel, capacity and budget are legend entries."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from autotune.cli.plot import build_figure, render_png  # noqa: E402
from launch_recipes import variant  # noqa: E402


def _recipe_with_an_over_budget_trial():
    import dataclasses

    from autotune.recipe.schema import TrialResult

    r = variant("base")
    base = dict(r.search.trials[0].settings)
    over = TrialResult("train", {**base, "per_device_train_batch_size": 9}, "over_budget", peak_bytes=int(r.search.budget_bytes * 1.05))
    oom = TrialResult("train", {**base, "per_device_train_batch_size": 10}, "oom")
    return dataclasses.replace(r, search=dataclasses.replace(r.search, trials=[*r.search.trials, over, oom]))


def test_plot_marks_outcomes_the_choice_and_keeps_to_the_card():
    recipe = _recipe_with_an_over_budget_trial()
    fig = build_figure(recipe)
    peak_ax, speed_ax = fig.axes
    legend = [t.get_text() for t in peak_ax.get_legend().get_texts()]
    for entry in ("fits", "ran, over budget", "out of memory", "chosen"):
        assert entry in legend
    assert any(e.startswith("capacity") for e in legend) and any(e.startswith("usable budget") for e in legend)
    assert not peak_ax.texts  # no labels drawn over the points
    hollow = [line for line in peak_ax.lines if line.get_markerfacecolor() == "white" and len(line.get_xdata())]
    assert [list(line.get_xdata()) for line in hollow] == [[9]]
    star = [line for line in peak_ax.lines if line.get_marker() == "*"]
    assert [list(s.get_xdata()) for s in star] == [[recipe.settings.per_device_train_batch_size]]
    assert peak_ax.get_ylim()[1] <= recipe.search.capacity_bytes / 2**20 * 1.1
    assert speed_ax.get_ylabel().startswith("throughput") and speed_ax.lines
    assert render_png(recipe)[:8] == b"\x89PNG\r\n\x1a\n"
