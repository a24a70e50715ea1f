"""Vision-language RLHF probes (issue #12): GRPO and DPO of Qwen2-VL-family models through TRL's
own trainers on the sim device, with the family's worst-case images at --max-pixels.

The oracle is TRL's trainer built here by the test at the recipe's settings, as in
tests/test_rlhf.py: the model comes from the workload, the processor from the model's family
(model/processor.py: the model's processor class, no downloads), the images at the worst case
the family's resize rule gives at --max-pixels; nothing of autotune's trial code runs in it. At
the recipe's batch the run stays in the usable budget; at batch + 1 it passes it."""

import random

from pathlib import Path

import pytest

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402
from test_rlhf import _peak_or_oom  # noqa: E402
from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer  # noqa: E402

from autotune.devices import SimDevice  # noqa: E402
from autotune.errors import UsageError  # noqa: E402
from autotune.model.source import resolve  # noqa: E402
from autotune.model.tokenizer import random_ids, text_of  # noqa: E402
from autotune.model.workload import load_workload  # noqa: E402
from autotune.probe import probe  # noqa: E402
from autotune.recipe.rlhf import RLHFSpec  # noqa: E402
from autotune.spec import ProbeSpec  # noqa: E402
from autotune.trials import rlhf_run  # noqa: E402

MiB = 2**20
CAPACITY = 48 * MiB
PROMPT, COMPLETION, GENERATIONS = 32, 8, 2
PIXELS = 28 * 28 * 8  # 8 image tokens per image (+ vision start and end)
# At 8 tokens transformers' processor makes 40 of a thin strip: these tests size the images as
# ms-swift's qwen-vl-utils does (the largest grid); the processor's rule is tested on its own below.
RULE = "qwen-vl-utils"


def vl_spec(model="tiny-qwen2.5-vl", rlhf=None, **changes) -> ProbeSpec:
    rlhf = rlhf or RLHFSpec("grpo", num_generations=GENERATIONS, max_completion_length=COMPLETION, use_vllm=True,
                            vllm_gpu_memory_utilization=0.25)
    values = dict(max_length=PROMPT, model_config=model, train_type="lora", device="sim", gpu_memory=CAPACITY, rlhf=rlhf,
                  global_batch_size=4, max_pixels=PIXELS, image_resize=RULE, attn_candidates=("sdpa",), gradient_checkpointing_candidates=(False,),
                  validate_steps=4, eval=False)  # tests/test_rlhf.py searches evaluations; the images take the same path
    values.update(changes)
    return ProbeSpec(**values)


def _oracle_workload(spec):
    device = SimDevice(CAPACITY)
    workload = load_workload(resolve(None, spec.model_config), spec, device)
    vision = workload.setup.vision
    media = workload.setup.family.processor(workload.source.config, vision)
    return device, workload, vision, media


# ---------------------------------------------------------------- oracles: TRL's trainers, built here

def launched_grpo(recipe, spec, batch, tmp):
    """TRL's GRPOTrainer at the recipe's settings, conversational prompts with the worst-case images,
    vLLM's share held on the card, the completions from a rollout_func that tokenizes with the
    processor as an external engine does (on the host). Returns the run's peak."""
    device, workload, vision, media = _oracle_workload(spec)
    s, rng, vocab, avoid = recipe.settings, random.Random(1), workload.vocab_size, media.placeholder_ids
    processor = media.processor
    accumulation = s.gradient_accumulation_steps if batch == s.per_device_train_batch_size else 1
    generated = rlhf_run.trial_generation_batch(batch, accumulation, 1, s.num_generations, None)

    def rollout(prompts, trainer):
        with device.host():
            ids = processor.apply_chat_template(conversation=list(prompts), add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"]
        return {"prompt_ids": ids, "completion_ids": [random_ids(rng, vocab, s.max_completion_length, avoid) for _ in prompts],
                "logprobs": None}

    def prompts(n):
        return {"prompt": [[{"role": "user", "content": text_of(random_ids(rng, vocab, s.max_length - vision.tokens, avoid))}]
                           for _ in range(n)], "images": [media.images(vision.images) for _ in range(n)]}

    args = GRPOConfig(output_dir=str(tmp), per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                      num_generations=s.num_generations, max_completion_length=s.max_completion_length, beta=s.beta,
                      generation_batch_size=generated, bf16=True, gradient_checkpointing=s.gradient_checkpointing, max_steps=4,
                      save_strategy="no", report_to="none", logging_strategy="no", disable_tqdm=True, use_cpu=True,
                      log_completions=False)
    train = prompts(8)
    trainer = GRPOTrainer(model=workload.model, reward_funcs=lambda completions, **kw: [rng.random() for _ in completions],
                          args=args, train_dataset=Dataset.from_dict({k: v * 8 for k, v in train.items()}),
                          processing_class=processor, rollout_func=rollout)
    with device.tracking(), device.reserved(recipe.rlhf["rollout"]["share_bytes"]):
        device.reset_peak()
        trainer.train()
    return device.peak_bytes()


def launched_dpo(recipe, spec, batch, tmp):
    """TRL's DPOTrainer at the recipe's settings with its vision collator (run on the host, where a
    DataLoader runs it); LoRA, so the reference is the policy with its adapter off."""
    device, workload, vision, media = _oracle_workload(spec)
    s, rng, vocab, avoid = recipe.settings, random.Random(1), workload.vocab_size, media.placeholder_ids
    prompt = max(s.max_length // 2, vision.tokens + 1)

    def said(role, n):
        return [{"role": role, "content": text_of(random_ids(rng, vocab, n, avoid))}]

    def pairs(n):
        return Dataset.from_dict({"prompt": [said("user", prompt - vision.tokens) for _ in range(n)],
                                  "chosen": [said("assistant", s.max_length - prompt) for _ in range(n)],
                                  "rejected": [said("assistant", s.max_length - prompt) for _ in range(n)],
                                  "images": [media.images(vision.images) for _ in range(n)]})

    args = DPOConfig(output_dir=str(tmp), per_device_train_batch_size=batch, gradient_accumulation_steps=s.gradient_accumulation_steps,
                     beta=s.beta, max_length=s.max_length, bf16=True, max_steps=4, gradient_checkpointing=s.gradient_checkpointing,
                     save_strategy="no", report_to="none", logging_strategy="no", disable_tqdm=True, use_cpu=True)
    trainer = DPOTrainer(model=workload.model, args=args, train_dataset=pairs(batch * 4 * s.gradient_accumulation_steps),
                         processing_class=media.processor)
    collate = trainer.data_collator

    def on_host(examples):
        with device.host():
            return collate(examples)

    trainer.data_collator = on_host
    with device.tracking():
        device.reset_peak()
        trainer.train()
    return device.peak_bytes()


def _exact(recipe):
    frontier = recipe.search.frontier["train"]
    train = [t for t in recipe.search.trials if t.phase == "train" and t.purpose != "throughput"]
    assert any(t.batch_size == frontier and t.fits for t in train)
    assert any(t.batch_size == frontier + 1 and not t.fits for t in train)
    return frontier


# ---------------------------------------------------------------- the probes

@pytest.mark.slow
def test_vl_grpo_lora_probe_reaches_an_exact_frontier_that_trl_confirms(tmp_path):
    spec = vl_spec()
    recipe = probe(spec)
    s, budget = recipe.settings, recipe.search.budget_bytes
    assert (s.rlhf_type, s.num_generations, s.use_vllm, s.vllm_gpu_memory_utilization) == ("grpo", GENERATIONS, True, 0.25)
    assert s.max_pixels == PIXELS and recipe.multimodal["family"] == "qwen2.5-vl"
    assert recipe.rlhf["rollout"]["how"] == "reserved" and recipe.rlhf["reference_model"].startswith("adapter")
    frontier = _exact(recipe)
    assert recipe.validation.passed
    assert launched_grpo(recipe, spec, s.per_device_train_batch_size, tmp_path) <= budget
    over = _peak_or_oom(launched_grpo, recipe, spec, frontier + 1, tmp_path)
    assert over is None or over > budget
    # The launch file carries what the supervised VL recipes carry; the check re-runs the recipe.
    from autotune.check import check, reprobe_command
    from autotune.emit import swift, trl

    script = swift.render_script(recipe, "4.6", None)
    assert "swift rlhf" in script and f"MAX_PIXELS={PIXELS}" in script and "--freeze_vit true" in script
    assert any(f"max_pixels={PIXELS}" in note for note in trl.notes(recipe))  # TRL's processor must be built at it
    assert check(recipe).exit_code == 0
    assert f"--max-pixels {PIXELS}" in reprobe_command(recipe)


@pytest.mark.slow
def test_vl_dpo_probe_runs_and_its_frontier_holds(tmp_path):
    spec = vl_spec("tiny-qwen2-vl", RLHFSpec("dpo"), max_length=48, global_batch_size=None)
    recipe = probe(spec)
    s, budget = recipe.settings, recipe.search.budget_bytes
    assert (s.rlhf_type, s.max_pixels) == ("dpo", PIXELS) and recipe.rlhf["reference_model"].startswith("adapter")
    frontier = _exact(recipe)
    assert launched_dpo(recipe, spec, s.per_device_train_batch_size, tmp_path) <= budget
    over = _peak_or_oom(launched_dpo, recipe, spec, frontier + 1, tmp_path)
    assert over is None or over > budget


# ---------------------------------------------------------------- reward models passed as models

@pytest.fixture
def wide_reward(tmp_path):
    """A reward model (config.json: random init) whose weights and scoring forward are large next
    to the tiny policy's step: one layer, a wide MLP."""
    import json

    from test_rlhf_plan import WIDE_MLP_REWARD

    path = tmp_path / "reward.json"
    path.write_text(json.dumps({**WIDE_MLP_REWARD, "intermediate_size": 24576}))
    return str(path)


def _grpo_with(rewards) -> RLHFSpec:
    return RLHFSpec("grpo", num_generations=GENERATIONS, max_completion_length=COMPLETION, use_vllm=True,
                    vllm_gpu_memory_utilization=0.25, reward_models=rewards)


def test_a_reward_model_reads_the_text_alone_and_its_weights_count(make_workload):
    """TRL's _calculate_rewards renders a conversational prompt + completion with the reward
    model's tokenizer's chat template and calls it with text alone: the reward model's forward gets
    the prompt's words and the completion (no image tokens, no pixel_values), and it is resident
    beside the policy (the trial's peak gains at least its weights)."""
    from autotune.trials.trial import run_trial

    peaks, seen = {}, []
    for rewards in ((), ("tiny-qwen2",)):
        workload = make_workload("tiny-qwen2.5-vl", CAPACITY, max_length=PROMPT, train_type="lora", rlhf=_grpo_with(rewards),
                                 global_batch_size=2, max_pixels=PIXELS, image_resize=RULE)
        if rewards:
            rlhf_run.prepare(workload)
            (reward,) = workload.reward_models
            reward.register_forward_pre_hook(lambda m, args, kwargs: seen.append((set(kwargs), tuple(kwargs["input_ids"].shape))),
                                             with_kwargs=True)
        result = run_trial(workload, "train", {"per_device_train_batch_size": 2}, 3, CAPACITY)
        assert result.fits, result.message
        peaks[rewards] = result.peak_bytes
    vision = workload.setup.vision
    assert type(reward).__name__ == "Qwen2ForSequenceClassification"
    assert seen and {shape for _, shape in seen} == {(2, PROMPT - vision.tokens + COMPLETION)}
    assert all("pixel_values" not in keys and "image_grid_thw" not in keys for keys, _ in seen)
    weights = sum(p.numel() * p.element_size() for p in reward.parameters())
    assert peaks[("tiny-qwen2",)] - peaks[()] >= weights


def test_vl_grpo_lora_probe_with_a_reward_model_reaches_its_frontier(wide_reward):
    """A VL GRPO LoRA probe with a reward model passed as a model: an exact frontier, the reward
    model resident (without it TRL's trainer fits the budget at the frontier + 1), its launch files
    pass it on."""
    from autotune.emit import swift, trl
    from autotune.trials.trial import run_trial

    small = dict(global_batch_size=2, max_batch_size=8, steps=3, validate_steps=3)  # few, short trials
    spec = vl_spec(rlhf=_grpo_with((wide_reward,)), **small)
    recipe = probe(spec)
    frontier, budget = _exact(recipe), recipe.search.budget_bytes
    assert recipe.validation.passed and recipe.settings.reward_model == [wide_reward]
    assert recipe.rlhf["reward_models"] == f"resident beside the policy, scoring every completion: {wide_reward}"
    device, workload, _, _ = _oracle_workload(vl_spec(rlhf=_grpo_with(()), **small))
    without = run_trial(workload, "train", {"per_device_train_batch_size": frontier + 1}, 3, budget)
    assert without.fits, without.message
    assert f"--reward_model {Path(wide_reward).parent}" in swift.render_script(recipe, "4.6", None)  # ms-swift loads a directory
    assert any("reward models read text alone" in note for note in trl.notes(recipe))


# ---------------------------------------------------------------- the data the trials hand TRL

@pytest.mark.parametrize("model, rule, prompt", [("tiny-qwen2-vl", RULE, PROMPT), ("tiny-qwen2.5-vl", RULE, PROMPT),
                                                 ("tiny-qwen2-vl", "processor", 4 * PROMPT), ("tiny-qwen2.5-vl", "processor", 4 * PROMPT)])
def test_the_processor_makes_the_planned_worst_case_without_downloads(make_workload, model, rule, prompt):
    """The model's processor class, built from the config: the worst-case image becomes exactly the
    planned grid, a prompt exactly --max-length tokens with its image tokens, and the stub engine's
    prompt ids expand the placeholders as the processor does (the model checks that count). Under
    the processor's own rule the worst image is a thin strip the processor clamps past the limit
    (40 tokens at 8 tokens' pixels): TRL's processor makes that grid of the image the data holds."""
    from transformers import ProcessorMixin

    from autotune.trials.rlhf_data import TrialData

    workload = make_workload(model, CAPACITY, max_length=prompt, train_type="lora", rlhf=RLHFSpec("grpo", num_generations=2,
                             max_completion_length=4, use_vllm=True, vllm_mode="server"), global_batch_size=2,
                             max_pixels=PIXELS, images_per_sample=2, image_resize=rule)
    vision, config = workload.setup.vision, workload.source.config
    data = TrialData(workload, random.Random(0))
    assert isinstance(data.processing_class, ProcessorMixin)  # what TRL's trainers take for a vision-language model
    from trl.data_utils import prepare_multimodal_messages

    prompts = data.prompts(3, prompt)
    messages = [prepare_multimodal_messages(p, images=i) for p, i in zip(prompts["prompt"], prompts["images"])]
    out = data.rollout(4, 0)(messages, None)
    for ids, completion in zip(out["prompt_ids"], out["completion_ids"]):
        assert len(ids) == prompt and ids.count(config.image_token_id) == vision.images * vision.image_tokens
        assert len(completion) == 4 and not set(completion) & data.avoid
    texts = [data.processing_class.apply_chat_template(m, tokenize=False) for m in messages]
    processed = data.processing_class(images=prompts["images"], text=texts, return_tensors="pt")
    assert processed["image_grid_thw"].tolist() == [list(vision.image_grid)] * (3 * vision.images)
    if rule == "processor":
        assert vision.image_tokens == 40 and vision.image_tokens * 28 * 28 > PIXELS  # the strip, past the limit


@pytest.mark.parametrize("use_vllm", [True, False])
def test_the_images_reach_the_trials_forwards(make_workload, use_vllm):
    """In a GRPO trial every forward of the policy (and of the reference) gets the prompts' images,
    whether the stub engine hands over the completions or the policy's generate() makes them
    (transformers encodes the images once before generating: the prefill gets the tower's output,
    the decoding steps one token each)."""
    import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl as qwen

    from autotune.trials.trial import run_trial

    share = {"vllm_gpu_memory_utilization": 0.25} if use_vllm else {}
    rlhf = RLHFSpec("grpo", num_generations=2, max_completion_length=4, use_vllm=use_vllm, **share)
    workload = make_workload("tiny-qwen2.5-vl", CAPACITY, max_length=PROMPT, train_type="lora", rlhf=rlhf, global_batch_size=2,
                             max_pixels=PIXELS, image_resize=RULE)
    vision, config = workload.setup.vision, workload.source.config
    forwards, encoded = [], []
    forward, encode = qwen.Qwen2_5_VLModel.forward, qwen.Qwen2_5_VLModel.get_image_features

    def spy(self, input_ids=None, pixel_values=None, mm_encoder_outputs=None, **kwargs):
        images = pixel_values.size(0) if pixel_values is not None else "encoded" if mm_encoder_outputs else None
        forwards.append((tuple(input_ids.shape), int((input_ids == config.image_token_id).sum()), images))
        return forward(self, input_ids=input_ids, pixel_values=pixel_values, mm_encoder_outputs=mm_encoder_outputs, **kwargs)

    def spy_encode(self, pixel_values, image_grid_thw, **kwargs):
        encoded.append((pixel_values.size(0), tuple(map(tuple, image_grid_thw.tolist()))))
        return encode(self, pixel_values, image_grid_thw, **kwargs)

    qwen.Qwen2_5_VLModel.forward, qwen.Qwen2_5_VLModel.get_image_features = spy, spy_encode
    try:
        result = run_trial(workload, "train", {"per_device_train_batch_size": 2}, 3, CAPACITY)
    finally:
        qwen.Qwen2_5_VLModel.forward, qwen.Qwen2_5_VLModel.get_image_features = forward, encode
    assert result.fits, result.message
    patches = vision.image_grid[0] * vision.image_grid[1] * vision.image_grid[2]
    tokens = 2 * vision.image_tokens
    expected = {((2, PROMPT + 4), tokens, 2 * patches)}
    if not use_vllm:
        expected |= {((2, PROMPT), tokens, "encoded"), ((2, 1), 0, None)}
    assert set(forwards) == expected
    assert set(encoded) == {(2 * patches, (tuple(vision.image_grid),) * 2)}


# ---------------------------------------------------------------- what is refused, before the model loads

@pytest.mark.parametrize("changes, flag", [
    ({"model": "tiny-internvl", "max_pixels": None, "max_length": 64}, "--rlhf-type"),
    ({"video_frames": 4}, "--video-frames"),
    ({"rlhf": RLHFSpec("dpo", precompute_ref_log_probs=True), "global_batch_size": None}, "--precompute-ref-log-probs"),
    ({"rlhf": RLHFSpec("dpo"), "global_batch_size": None, "max_length": 11}, "--max-length"),
])
def test_what_vision_rlhf_cannot_run_is_refused_naming_the_flag(changes, flag):
    with pytest.raises(UsageError) as info:
        probe(vl_spec(**changes))
    assert info.value.flag == flag
