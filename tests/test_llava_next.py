"""LLaVA-NeXT (anyres tiling) on the tiny config: the worst-case batch is what the model and the
processor themselves count, and a pixel limit is refused."""

from types import SimpleNamespace

import pytest
import torch
from transformers import LlavaNextProcessor

from autotune.errors import UsageError
from autotune.model.families import Media, family_for
from autotune.model.source import resolve


def _processor_count(config, height: int, width: int) -> int:
    """LlavaNextProcessor's own count for one image (it needs a tokenizer only for the string):
    its _get_number_of_features, minus the CLS for the "default" strategy, as replace_image_token does."""
    vision = config.vision_config
    proc = SimpleNamespace(image_processor=SimpleNamespace(image_grid_pinpoints=config.image_grid_pinpoints),
                           patch_size=vision.patch_size, num_additional_image_tokens=1)
    proc._get_unpadded_features = lambda *a: LlavaNextProcessor._get_unpadded_features(proc, *a)
    return LlavaNextProcessor._get_number_of_features(proc, height, width, vision.image_size, vision.image_size) - 1


def test_token_count_agrees_with_the_processor_and_the_worst_case_is_the_most():
    config = resolve(None, "tiny-llava-next").config
    family = family_for(config)
    vplan = family.plan(config, Media(images=1))
    sizes = [(h, w) for h in range(8, 130, 5) for w in range(8, 130, 9)]
    counts = {(h, w): family.image_tokens_for_size(config, w, h, None) for h, w in sizes}
    assert all(counts[s] == _processor_count(config, *s) for s in sizes)
    assert vplan.image_tokens == _processor_count(config, *vplan.image_grid) == max(counts.values())


def test_worst_case_batch_is_what_the_model_expects(make_workload):
    workload = make_workload("tiny-llava-next", 1 << 30, max_length=64, images_per_sample=2)
    config, vplan = workload.source.config, workload.setup.vision
    batch = workload.make_batch(3)
    assert vplan.image_grid == (56, 56) and vplan.image_tokens == 4 + 4 * (4 + 1)  # base tile + 4 rows of 4 + newline
    assert batch["pixel_values"].shape == (6, 5, 3, 28, 28)  # 2x2 tiles + the base tile
    assert batch["image_sizes"].tolist() == [[56, 56]] * 6
    assert (batch["input_ids"] == config.image_token_id).sum() == 3 * 2 * vplan.image_tokens
    # The model's own rules: get_image_features packs exactly as many features as there are placeholders.
    with torch.no_grad():
        features = workload.model.model.get_image_features(batch["pixel_values"], batch["image_sizes"]).pooler_output
    assert [f.shape[0] for f in features] == [vplan.image_tokens] * 6
    assert torch.isfinite(workload.model(**batch).loss)


def test_max_pixels_is_refused_for_llava_next():
    config = resolve(None, "tiny-llava-next").config
    with pytest.raises(UsageError, match="image_grid_pinpoints"):
        family_for(config).plan(config, Media(max_pixels=3136))
