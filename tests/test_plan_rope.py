"""plan/rope.py: a plan computes a multimodal-RoPE model's positions for one row of its alike
worst-case rows and repeats them; the positions must equal the model's own loop over every row."""

import pytest
import torch

from autotune.devices import SimDevice
from autotune.model.source import resolve
from autotune.model.workload import load_workload
from autotune.plan.rope import positions_once_per_layout
from autotune.spec import ProbeSpec


@pytest.mark.parametrize("name, media", [("tiny-qwen2-vl", dict(max_pixels=12544, video_frames=4, video_max_pixels=6272, video_min_pixels=3136)),
                                         ("tiny-qwen2.5-vl", dict(max_pixels=12544, video_frames=4, video_max_pixels=6272, video_min_pixels=3136)),
                                         ("tiny-qwen3-vl", dict(max_pixels=65536, images_per_sample=2))])
def test_positions_once_per_layout_equal_the_models_own_loop(name, media):
    spec = ProbeSpec(model_config=name, max_length=512, device="sim", gpu_memory=2**32, **media)
    workload = load_workload(resolve(None, name), spec, SimDevice(2**32))
    batch = {k: v.to(workload.device.torch_device) if torch.is_tensor(v) else v for k, v in workload.make_batch(3).items()}
    inner = next(m for m in workload.model.modules() if hasattr(m, "get_rope_index") and hasattr(m, "rope_deltas"))
    args = {k: batch.get(k) for k in ("input_ids", "mm_token_type_ids", "image_grid_thw", "video_grid_thw", "attention_mask")}
    if "second_per_grid_ts" in batch:
        args["second_per_grid_ts"] = batch["second_per_grid_ts"]
    own = inner.get_rope_index(**args)
    assert positions_once_per_layout(workload.model) == 1 and positions_once_per_layout(workload.model) == 0  # once
    once = inner.get_rope_index(**args)
    assert all(torch.equal(a, b) and a.is_contiguous() for a, b in zip(own, once))
    assert own[0].shape == (3, 3, 512) and int((batch["input_ids"] == workload.source.config.image_token_id).sum()) > 0
    loss = workload.model(**batch).loss  # the model runs with the wrapped loop
    assert torch.isfinite(loss)
