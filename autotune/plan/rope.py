"""Multimodal RoPE positions once per layout, not once per row, in a plan's steps.

Qwen2-VL, Qwen2.5-VL and Qwen3-VL compute their 3-D positions (`get_rope_index`) in a Python
loop over the batch's rows, and each row's loop is a few dozen small operators; under fake tensors
that loop cost seconds per plan at the batches a frontier reaches (3.9 s of a Qwen2.5-VL-7B plan,
26 s of a Qwen2-VL-7B LoRA plan at batches 13-18). A plan's rows are the family's worst case,
built alike (`family.inputs`: the same media at the same places, every token attended), so
their positions are alike: the loop runs for the first row and its positions are repeated, in
new tensors of the shapes the loop returns. The positions are small (3 x batch x length integers)
and made before the step's first activation, so a step's peak does not move; the probe's own
trials (sim device, card) run the model's loop as the user's run does."""

from __future__ import annotations

FAMILIES = ("Qwen2VLModel", "Qwen2_5_VLModel", "Qwen3VLModel")


def positions_once_per_layout(model) -> int:
    """Wrap `get_rope_index` of every multimodal-RoPE module in `model`; returns how many."""
    wrapped = 0
    for module in model.modules():
        if type(module).__name__ in FAMILIES and not getattr(module, "_positions_once", False):
            module.get_rope_index = _once(module.get_rope_index)
            module._positions_once = True
            wrapped += 1
    return wrapped


def _once(loop):
    def get_rope_index(input_ids, mm_token_type_ids=None, image_grid_thw=None, video_grid_thw=None, attention_mask=None, **kwargs):
        rows = input_ids.shape[0]
        if rows == 1:
            return loop(input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_grid_thw,
                        video_grid_thw=video_grid_thw, attention_mask=attention_mask, **kwargs)

        def first_row(items):  # per-image / per-video entries, row after row
            if items is None:
                return None
            if len(items) % rows:
                raise ValueError(f"{len(items)} media entries do not split over {rows} alike rows")
            return items[: len(items) // rows]

        if kwargs.get("second_per_grid_ts") is not None:
            kwargs["second_per_grid_ts"] = first_row(kwargs["second_per_grid_ts"])
        positions, deltas = loop(input_ids[:1], mm_token_type_ids=None if mm_token_type_ids is None else mm_token_type_ids[:1],
                                 image_grid_thw=first_row(image_grid_thw), video_grid_thw=first_row(video_grid_thw),
                                 attention_mask=None if attention_mask is None else attention_mask[:1], **kwargs)
        return positions.expand(-1, rows, -1).contiguous(), deltas.expand(rows, -1).contiguous()

    return get_rope_index
