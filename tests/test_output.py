"""The summary's tables fit 80- and 120-column terminals without cutting a value short."""

from __future__ import annotations

import dataclasses
import io

import pytest
from rich.console import Console

from autotune.cli.output import summary
from autotune.recipe.schema import TrialResult
from autotune.sizes import format_size
from launch_recipes import variant


def _wide_recipe():
    """Trials with the longest values a real probe prints: flash_attention_2, hundreds of MiB,
    six-digit throughput, every purpose."""
    r = variant("base")
    trials = []
    for i, (phase, purpose) in enumerate([("train", "frontier"), ("train", "throughput"), ("eval", "frontier"),
                                          ("train", "validate")] * 3):
        key = "per_device_eval_batch_size" if phase == "eval" else "per_device_train_batch_size"
        settings = {key: 100 + i, "attn_implementation": "flash_attention_2", "gradient_checkpointing": bool(i % 2),
                    "eval_accumulation_steps": 4 if phase == "eval" else None}
        trials.append(TrialResult(phase, settings, "over_budget" if i == 5 else "fit", peak_bytes=int(221.2 * 2**20) + i,
                                  tokens_per_s=123456.7, wall_s=1234.5, purpose=purpose))
    search = dataclasses.replace(r.search, trials=trials, budget_bytes=230 * 2**20)
    return dataclasses.replace(r, search=search)


@pytest.mark.parametrize("width", [80, 120])
def test_trials_table_fits_the_terminal_and_keeps_values_whole(width):
    recipe = _wide_recipe()
    buffer = io.StringIO()
    summary(recipe, Console(file=buffer, width=width, color_system=None, highlight=False))
    text = buffer.getvalue()
    table = text[: text.index("candidates") if "candidates" in text else text.index("device")]
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "…" not in table
    for t in recipe.search.trials:
        assert format_size(t.peak_bytes) in table  # 221.20 MiB, whole
    assert table.count("123,457") == len(recipe.search.trials)
    rows = [line for line in lines if line.strip()[:2].strip().isdigit()]
    assert len(rows) == len(recipe.search.trials)  # one line per trial, no wrapping
    if width == 120:
        assert "flash_attention_2" in table and "purpose" in table and "throughput" in table
    else:
        assert "fa2" in table


@pytest.mark.parametrize("width", [80, 120])
def test_whole_summary_has_no_truncated_cell(width):
    buffer = io.StringIO()
    summary(variant("base"), Console(file=buffer, width=width, color_system=None, highlight=False))
    text = buffer.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= width


def test_the_vision_line_names_only_the_media_a_sample_has():
    """A video-only recipe: no "0 image(s)"; a Qwen3-VL video says which rule sized it."""
    r = variant("base")
    settings = dataclasses.replace(r.settings, video_frames=4, video_max_pixels=131072, image_resize="processor")
    multimodal = {"family": "qwen3-vl", "images_per_sample": 0, "image_tokens": 16384, "videos_per_sample": 1,
                  "video_tokens": 512, "text_tokens_per_sample": 48}
    buffer = io.StringIO()
    summary(dataclasses.replace(r, settings=settings, multimodal=multimodal), Console(file=buffer, width=300, color_system=None))
    line = next(line for line in buffer.getvalue().splitlines() if line.startswith("vision"))
    assert "image(s)" not in line and "1 video x 512 tokens (the larger of what transformers' processor" in line


@pytest.mark.parametrize("dimension,column", [("max_length", "length"), ("max_pixels", "pixels"), ("video_frames", "frames")])
def test_a_limit_search_s_trials_show_the_value_each_ran_at(dimension, column):
    """In a --max-length / --max-pixels / --video-frames auto search every trial runs at the same
    batch: without the limit's column the trials table showed identical rows."""
    r = variant("base")
    values = [64, 2048, 1024, 1088]
    trials = [TrialResult("train", {"per_device_train_batch_size": 1, "attn_implementation": "sdpa", "gradient_checkpointing": False,
                                    dimension: v}, "fit" if v < 1088 else "oom", peak_bytes=2**20 * v // 64 if v < 1088 else None,
                          purpose="frontier") for v in values]
    search = dataclasses.replace(r.search, trials=trials, sequence={"dimension": dimension, "value": 1024, "phase": "train",
                                                                     "batch": 1, "step": "64 tokens", "fit": 1024, "non_fit": 1088,
                                                                     "cap": "x", "candidates": {}, "trials": 4})
    buffer = io.StringIO()
    summary(dataclasses.replace(r, search=search), Console(file=buffer, width=80, color_system=None, highlight=False))
    text = buffer.getvalue()
    table = text[: text.index("candidates")]
    header = next(line for line in table.splitlines() if "outcome" in line)
    assert column in header.split()
    rows = [line.split() for line in table.splitlines() if line.strip()[:2].strip().isdigit()]
    assert [row[header.split().index(column)] for row in rows] == [str(v) for v in values]
