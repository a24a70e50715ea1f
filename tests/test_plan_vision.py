"""`autotune plan` on vision-language models and on the code paths that read tensor values:
the plan's peak against the sim device, and frozen-ViT rows against closed-form counts."""

import pytest
import torch

from autotune.devices.fake import FakeDevice
from autotune.devices.sim import _rounded
from autotune.plan.measure import build_plan_workload, measure_candidate, plan_source
from autotune.spec import ProbeSpec
from plan_oracle import check_plan_against_sim


def _plan(spec, checkpointing=False):
    workload = build_plan_workload(plan_source(spec), spec, FakeDevice())
    return workload, measure_candidate(workload, "sdpa", checkpointing)


@pytest.mark.parametrize("name,length,extra", [
    # Qwen2-VL: the grid's .tolist(), mrope positions built per sample, boolean-mask scatter.
    ("tiny-qwen2-vl", 96, {"max_pixels": 56 * 56 * 4}),
    # Qwen2.5-VL: window attention's index over the grid.
    ("tiny-qwen2.5-vl", 96, {"max_pixels": 56 * 56 * 4}),
    # LLaVA-NeXT: anyres patches and the image-token count check (.item()).
    ("tiny-llava-next", 128, {}),
    # Qwen3-VL: deepstack features added at a boolean mask of the visual positions.
    ("tiny-qwen3-vl", 128, {"max_pixels": 65536, "image_resize": "qwen-vl-utils"}),  # the largest grid, not the 128-token strip
    # Qwen3-VL video: a temporal patch of 256 tokens between its timestamp and vision start/end
    # (qwen-vl-utils' worst frame at the per-frame floor), the grid split per frame in get_rope_index.
    ("tiny-qwen3-vl", 280, {"images_per_sample": 0, "video_frames": 2, "video_max_pixels": 131072, "eval_steps": 2}),
    # A text model at a length where an explicit L x L attention mask (what transformers builds
    # for tensors it takes for traced ones) would cost more than 2%.
    ("tiny-llama", 384, {}),
])
def test_plan_reads_values_where_the_model_does_and_matches_the_sim_device(name, length, extra):
# LLaVA: the Trainer's padding of kept outputs fails on a None among them (transformers 5), as
    # a user's run would; its evaluations keep the loss only. The others keep every output the
    # Trainer keeps, the image encoder's with the logits.
    check_plan_against_sim(ProbeSpec(max_length=length, model_config=name, **extra), keep_logits="llava" not in name)


def test_a_plan_for_an_ms_swift_launch_matches_the_sim_probe_for_ms_swift():
    """ms-swift switches use_cache off in the language model's config too (model/kv_cache.py): the
    planned eval step builds no KV cache, as the sim Trainer trials for that target do not; with
    ms-swift's loss-only evaluation the cache is inside the eval peak."""
    spec = ProbeSpec(max_length=96, model_config="tiny-qwen2-vl", max_pixels=56 * 56 * 4, use_cache_off_in_sub_configs=True)
    check_plan_against_sim(spec, keep_logits=False, loss_exact=True)


def _bytes(numels, itemsize=2):
    return sum(_rounded(n * itemsize) for n in numels)


def _llama_numels(c) -> list[int]:
    h, i, v = c.hidden_size, c.intermediate_size, c.vocab_size
    kv = c.num_key_value_heads * h // c.num_attention_heads
    per_layer = [h * h, h * kv, h * kv, h * h, h * i, h * i, i * h, h, h]  # q k v o gate up down, two norms
    return [v * h] + per_layer * c.num_hidden_layers + [h, v * h]  # embeddings, layers, final norm, lm_head


def _clip_numels(c) -> list[int]:
    h, i = c.hidden_size, c.intermediate_size
    positions = (c.image_size // c.patch_size) ** 2 + 1  # the patches and the class token
    embeddings = [h, 3 * c.patch_size**2 * h, positions * h, h, h]  # class, patch conv, positions, pre-norm
    attention = [h * h, h] * 4  # q k v o with biases
    per_layer = attention + [h, h, h * i, i, i * h, h, h, h]  # norm1, fc1, fc2, norm2
    return embeddings + per_layer * c.num_hidden_layers + [h, h]  # post-norm


def _projector_numels(c) -> list[int]:
    vision, text = c.vision_config.hidden_size, c.text_config.hidden_size
    return [vision * text, text, text * text, text]  # linear_1 and linear_2 with biases


@pytest.fixture(scope="module")
def llava_frozen_vit():
    return _plan(ProbeSpec(max_length=64, model_config="tiny-llava"))


def test_frozen_vit_rows_match_closed_form(llava_frozen_vit):
    """LLaVA, full fine-tune with ms-swift's defaults (vision tower and projector frozen): the
    weights row holds all three parts; gradients and AdamW's state (two moments in the
    parameter dtype plus the fused step's float32 counter) only the language model's."""
    workload, m = llava_frozen_vit
    c = workload.source.config
    llm, vit, projector = _llama_numels(c.text_config), _clip_numels(c.vision_config), _projector_numels(c)
    assert workload.trainable_params == sum(llm)
    assert workload.total_params == sum(llm) + sum(vit) + sum(projector)
    head_dim = c.text_config.hidden_size // c.text_config.num_attention_heads
    buffers = 2 * _rounded(head_dim // 2 * 4) + _rounded(((c.vision_config.image_size // 14) ** 2 + 1) * 8)
    assert m.weights == _bytes(llm + vit + projector) + buffers  # + rotary inv_freq twice, CLIP's position ids
    assert m.gradients == _bytes(llm)
    assert m.optimizer_state == 2 * _bytes(llm) + len(llm) * _rounded(4)


def test_unfrozen_aligner_and_lora_rows_match_closed_form():
    """Unfreezing the projector adds exactly its parameters to the trained rows; LoRA on a
    frozen-ViT model puts adapters on the language model's linear layers only."""
    spec = ProbeSpec(max_length=64, model_config="tiny-llava", freeze_aligner=False)
    workload, m = _plan(spec)
    c = workload.source.config
    trained = _llama_numels(c.text_config) + _projector_numels(c)
    assert workload.trainable_params == sum(trained)
    assert m.gradients == _bytes(trained)
    assert m.optimizer_state == 2 * _bytes(trained) + len(trained) * _rounded(4)

    r = 4
    workload, m = _plan(spec.replace(freeze_aligner=None, train_type="lora", lora_r=r))
    t = c.text_config
    h, i = t.hidden_size, t.intermediate_size
    kv = t.num_key_value_heads * h // t.num_attention_heads
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]  # (in, out)
    lora = [n for fan_in, fan_out in shapes for n in (r * fan_in, fan_out * r)] * t.num_hidden_layers
    assert workload.trainable_params == sum(lora)
    assert m.gradients == _bytes(lora, 4)  # peft keeps adapters in float32
    assert m.optimizer_state == 2 * _bytes(lora, 4) + len(lora) * _rounded(4)


def test_known_values_follow_in_place_writes_and_forget_unknown_ones():
    """The plan's value tracking: an in-place write with known values updates them; one with an
    unknown input makes the written tensor unknown, so a later read fails as it should."""
    device = FakeDevice()
    with device.tracking():
        ids = torch.zeros(2, 8, dtype=torch.long)
        ids[:, 2:5] = 7
        assert (ids == 7).sum().item() == 6
        assert torch.tensor([ids.max(), ids.min()]).tolist() == [7, 0]
        assert ids[ids == 7].shape == (6,)
        big = torch.empty(8, 2**16)  # past the float limit: no value is kept
        ids.copy_(big[:2, :8].long())
        with pytest.raises(Exception, match="local_scalar_dense|data-dependent|DataDependent"):
            ids.sum().item()


@pytest.mark.parametrize("name,extra,keeps", [
    ("tiny-qwen2.5-vl", {"max_pixels": 56 * 56 * 4}, "logits"),  # logits and the image encoder's outputs kept
    ("tiny-llama", {}, "logits"),
    ("tiny-llama", {}, "argmax"),
])
def test_replayed_eval_forwards_equal_running_every_forward(name, extra, keeps):
    """A plan runs an evaluation's first forward and replays it for the later steps (each the
    same forward again), with outputs made alike: the peak and the live-bytes timeline are those
    of running every forward, byte for byte (4 steps, the outputs concatenated on the device)."""
    from autotune.trials import step_model

    spec = ProbeSpec(max_length=96, model_config=name, eval_outputs=keeps, **extra)
    settings = {**spec.eval_keep_settings(), "eval_accumulation_steps": 3}  # flushed once inside the 4 steps
    results = []
    for first_forward in (True, False):
        workload = build_plan_workload(plan_source(spec), spec, FakeDevice())
        with workload.device.timeline():
            peak = step_model.evaluate(workload, 2, 4, settings, first_forward=first_forward)
            results.append((peak, max(workload.device.counter.timeline)))
    assert results[0] == results[1], results


def test_a_planned_vision_language_recipe_carries_its_media_limits_into_the_launch_files(tmp_path):
    """`plan --out` for a vision-language model writes what the probe's recipe does: the image
    limit it planned at, the freezing, ms-swift's MAX_PIXELS. Without them `emit swift` wrote a
    file that trains at the processor's default limit (16384 image tokens for Qwen2-VL), not the
    planned 16."""
    import yaml

    from autotune.cli import main
    from autotune.emit import swift
    from autotune.recipe.schema import load_recipe

    out = tmp_path / "plan.yaml"
    assert main(["plan", "--model-config", "tiny-qwen2-vl", "--max-length", "96", "--max-pixels", "12544", "--attn", "sdpa",
                 "--gradient-checkpointing", "off", "--gpu-memory", "24MiB", "--cuda-context", "0", "--workspaces", "0",
                 "--out", str(out)]) == 0
    recipe = load_recipe(out)
    s = recipe.settings
    assert (s.max_pixels, s.freeze_vit, s.freeze_aligner, s.freeze_llm, s.env.get("MAX_PIXELS")) == (12544, True, True, False, "12544")
    # A plan knows no launch: the processor's rule, whose worst image at 16 tokens' pixels is a 56-token strip.
    assert recipe.multimodal["image_tokens"] == 56 and recipe.multimodal["images_per_sample"] == 1 and s.image_resize == "processor"
    args = yaml.safe_load(swift.render_yaml(recipe, "4.6"))
    assert args["ENV"]["MAX_PIXELS"] == "12544" and args["freeze_vit"] is True and "image_resize" not in args
    assert main(["plan", "--model-config", "tiny-qwen2-vl", "--max-length", "96", "--max-pixels", "12544", "--attn", "sdpa",
                 "--gradient-checkpointing", "off", "--gpu-memory", "24MiB", "--cuda-context", "0", "--workspaces", "0",
                 "--image-resize", "qwen-vl-utils", "--out", str(out), "--force"]) == 0
    swift_plan = load_recipe(out)
    assert swift_plan.multimodal["image_tokens"] == 16 and swift_plan.settings.image_resize == "qwen-vl-utils"
