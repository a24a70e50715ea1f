"""Vision-language families added for model coverage (Qwen3-VL; LLaVA with a CLIP-L/336 tower and
an MoE language model, the MoE-LLaVA shape): the worst case agrees with the processor's own rule,
the batch is what the model reads, freezing follows ms-swift's split, and the plan's peaks equal
the sim device's."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from autotune.devices import SimDevice
from autotune.errors import UsageError
from autotune.model.families import Media, family_for
from autotune.model.source import resolve
from autotune.spec import ProbeSpec
from autotune.trials.trial import run_train_trial
from autotune.model.workload import load_workload
from plan_oracle import check_plan_against_sim

GiB = 2**30
# Qwen3-VL's published preprocessor_config.json (Qwen/Qwen3-VL-*-Instruct).
QWEN3_VL_PROCESSOR = {"size": {"shortest_edge": 65536, "longest_edge": 16777216}, "patch_size": 16,
                      "temporal_patch_size": 2, "merge_size": 2}


def _qwen3_vl_processor(**size):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    config = {**QWEN3_VL_PROCESSOR, "size": {**QWEN3_VL_PROCESSOR["size"], **size}}
    return Qwen2VLImageProcessorPil(**config)


# (Not at the minimum itself: there smart_resize's upscaling of a small image rounds up past it.)
@pytest.mark.parametrize("rule", ["processor", "qwen-vl-utils"])
@pytest.mark.parametrize("max_pixels", [None, 131072, 1003520, 300000])
def test_qwen3_vl_worst_case_is_the_processors_largest_image(max_pixels, rule):
    config = resolve(None, "tiny-qwen3-vl").config
    family = family_for(config)
    processor = _qwen3_vl_processor(**({"longest_edge": max_pixels} if max_pixels else {}))
    vplan = family.plan(config, Media(images=1, max_pixels=max_pixels, image_resize=rule))
    limit = max_pixels or 16777216
    # 32x32 pixels per token; through the processor at 128 tokens a thin strip clamped one factor high makes 160
    strip = {131072: 160}.get(limit, 0) if rule == "processor" else 0
    assert vplan.max_pixels == limit and vplan.image_tokens == max(limit // 1024, strip)
    _, h, w = vplan.image_grid
    # The worst image goes through the processor to exactly the planned grid: tokens = patches / merge^2.
    assert processor.get_number_of_image_patches(*vplan.image_source) == h * w == 4 * vplan.image_tokens
    sizes = [(hh, ww) for hh in (200, 640, 1333, 4000) for ww in (300, 999, 2048)]
    for hh, ww in sizes:
        tokens = family.image_tokens_for_size(config, ww, hh, limit)
        assert tokens == processor.get_number_of_image_patches(hh, ww) // 4 <= vplan.image_tokens


def test_qwen3_vl_batch_freezing_and_sim_trials(make_workload):
    media = {"max_pixels": 65536 * 2, "images_per_sample": 1, "image_resize": "qwen-vl-utils"}  # the 512 x 256 grid
    workload = make_workload("tiny-qwen3-vl", GiB, max_length=160, **media)
    config, vplan = workload.source.config, workload.setup.vision
    batch = workload.make_batch(2)
    processor = _qwen3_vl_processor(longest_edge=65536 * 2)
    pixels = processor(images=[Image.new("RGB", (512, 256))] * 2, return_tensors="pt")  # exactly the worst grid
    assert batch["image_grid_thw"].tolist() == pixels["image_grid_thw"].tolist() == [list(vplan.image_grid)] * 2
    assert batch["pixel_values"].shape == pixels["pixel_values"].shape
    assert (batch["input_ids"] == config.image_token_id).sum() == 2 * vplan.image_tokens == 2 * 128
    assert torch.isfinite(workload.model(**batch).loss)  # get_placeholder_mask checks the feature count
    # ms-swift's defaults freeze the ViT and the aligner (merger and DeepStack mergers).
    trainable = {n for n, p in workload.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.language_model.", "lm_head.")) for n in trainable)
    unfrozen = make_workload("tiny-qwen3-vl", GiB, max_length=160, freeze_aligner=False, **media)
    trainable = {n for n, p in unfrozen.model.named_parameters() if p.requires_grad}
    assert any(".deepstack_merger_list." in n for n in trainable) and any(".visual.merger." in n for n in trainable)
    assert not any(".visual.blocks." in n for n in trainable)

    # On the sim device the step runs and its peak grows with the batch (the plan against the
    # sim device: tests/test_plan_vision.py).
    peaks = [run_train_trial(workload, b, 3, GiB) for b in (1, 2)]
    assert all(t.fits for t in peaks) and peaks[1].peak_bytes > peaks[0].peak_bytes


def test_qwen3_vl_refuses_tiny_limits():
    """(Video: tests/test_qwen3_vl_video.py.)"""
    config = resolve(None, "tiny-qwen3-vl").config
    family = family_for(config)
    with pytest.raises(UsageError, match=r"^--max-pixels: 50000 is below the processor's minimum of 65536 pixels \(256x256\)"):
        family.plan(config, Media(max_pixels=50000))


def _llava_processor_count(config) -> int:
    """LlavaProcessor's own count (its _get_number_of_features path for a CLIP crop), with the
    published llava-1.5 processor settings: the crop size, num_additional_image_tokens 1 (CLS)."""
    from transformers import LlavaProcessor

    vision = config.vision_config
    proc = SimpleNamespace(image_processor=SimpleNamespace(crop_size={"height": vision.image_size, "width": vision.image_size}),
                           patch_size=vision.patch_size, num_additional_image_tokens=1,
                           vision_feature_select_strategy=config.vision_feature_select_strategy,
                           _merge_kwargs=lambda **kw: {"images_kwargs": {}})
    return LlavaProcessor._get_num_multimodal_tokens(proc, image_sizes=[(480, 640)])["num_image_tokens"][0]


def test_llava_clip336_moe_worst_case_and_plan():
    """CLIP-L/336's geometry (336 px, patch 14: 576 tokens) on tiny widths, with a Qwen3-MoE LM."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    name = "tiny-llava-clip336-moe"
    config = resolve(None, name).config
    vplan = family_for(config).plan(config, Media(images=1))
    assert vplan.image_tokens == 576 == _llava_processor_count(config)
    clip = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    pixels = clip(images=Image.fromarray(np.zeros((480, 640, 3), dtype=np.uint8)), return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape[-2:]) == vplan.image_grid

    spec = ProbeSpec(max_length=640, model_config=name)
    real = load_workload(resolve(None, name), spec.replace(device="sim", gpu_memory=GiB), SimDevice(GiB))
    assert type(real.model.model.language_model).__name__ == "Qwen3MoeModel"
    assert (real.make_batch(1)["input_ids"] == config.image_token_id).sum() == 576
    check_plan_against_sim(spec, keep_logits=False)  # the plan's frontiers are the sim Trainer's


def test_an_evaluation_that_fails_for_another_reason_than_memory_says_so():
    """transformers 5's LLaVA outputs carry an image_outputs record with None fields; a Trainer that
    keeps logits (a compute_metrics) cannot pad them and raises TypeError, in the user's run as in the
    trial. The probe must say that, not "eval batch 1 does not fit"."""
    from autotune.errors import AutotuneError
    from autotune.probe import probe

    spec = ProbeSpec(max_length=700, model_config="tiny-llava", device="sim", gpu_memory=256 * 2**20, max_batch_size=1,
                     attn_candidates=("sdpa",), gradient_checkpointing_candidates=(False,), eval_outputs="logits", validate_steps=3)
    with pytest.raises(AutotuneError) as info:
        probe(spec)
    assert "not for memory" in str(info.value) and "TypeError" in str(info.value) and "--eval-outputs argmax" in str(info.value)
