"""--dataset with --rlhf-type: a sample is measured as the RLHF run feeds it (ms-swift's
TemplateInputs and GRPO's remove_response): DPO's length is the longer of the chosen and the
rejected conversation, GRPO's the prompt without its last assistant reply, with the generation
prompt. The template of test_dataset.py makes a message 1 + its words, an independent oracle."""

import shutil

import pytest
import yaml
from PIL import Image

from autotune.cli import main
from autotune.model.dataset import from_dataset
from autotune.model.source import BUILTIN_DIR, resolve
from autotune.recipe.rlhf import RLHFSpec
from autotune.recipe.schema import load_recipe
from autotune.spec import ProbeSpec
from test_dataset import chat, make_tokenizer, text_tokens
import test_swift_probe_dataset
from test_swift_probe_dataset import jsonl

pytest.importorskip("trl")
model_dir = test_swift_probe_dataset.model_dir  # the fixture: a config-only model directory with its tokenizer

WORDS = " ".join(["word"] * 30)


def measured(tmp_path, model_dir, rlhf_type, *records, **changes):
    data = jsonl(tmp_path / "data.jsonl", *records)
    spec = ProbeSpec(model=str(model_dir), max_length=changes.pop("max_length", 4096), device="sim", gpu_memory=1 << 30,
                     dataset=data, rlhf=RLHFSpec(rlhf_type), **changes)
    return from_dataset(spec, resolve(spec.model, None))


def test_dpo_counts_the_longer_of_chosen_and_a_rejected_response(tmp_path, model_dir):
    short_chosen = {**chat("hi", "yes"), "rejected_response": WORDS}                 # the rejected reply is the longer
    long_chosen = {**chat("hello there", WORDS + " more"), "rejected_response": "no"}
    spec, profile, data = measured(tmp_path, model_dir, "dpo", short_chosen, long_chosen)
    assert [s.tokens for s in profile.samples] == [text_tokens("hi", WORDS), text_tokens("hello there", WORDS + " more")]
    assert spec.max_length == text_tokens("hello there", WORDS + " more") and not profile.issues


def test_dpo_rejected_response_replaces_everything_after_the_last_user_turn(tmp_path, model_dir):
    turns = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": WORDS},
                          {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}],
             "rejected_response": [{"role": "assistant", "content": WORDS + " " + WORDS}]}
    _, profile, _ = measured(tmp_path, model_dir, "dpo", turns)
    assert profile.samples[0].tokens == text_tokens("a", WORDS, "b", WORDS + " " + WORDS)


def test_dpo_rejected_messages_are_their_own_conversation_with_their_own_images(tmp_path):
    model = tmp_path / "vl"
    model.mkdir()
    shutil.copy(BUILTIN_DIR / "tiny-qwen2-vl.json", model / "config.json")
    make_tokenizer(model)
    Image.new("RGB", (112, 112)).save(tmp_path / "small.png")  # 16 tokens + the 2 wrapper tokens
    pair = {**chat("<image> what", "a cat"), "images": [str(tmp_path / "small.png")],
            "rejected_messages": [{"role": "user", "content": "what"}, {"role": "assistant", "content": WORDS}]}
    _, profile, _ = measured(tmp_path, model, "dpo", pair)
    sample = profile.samples[0]
    assert sample.tokens == max(text_tokens("what", "a cat") + 18, text_tokens("what", WORDS))
    assert sample.images == 1 and len(sample.image_pixels) == 1


@pytest.mark.parametrize("record, problem", [
    (chat("hi"), "has no rejected_response or rejected_messages, which DPO needs"),
    ({"messages": [{"role": "user", "content": "hi"}], "rejected_response": "no"}, "ends without an assistant reply"),
    ({**chat("hi"), "rejected_response": [{"role": "user", "content": "x"}]}, "rejected_response[0] has the role 'user'"),
    ({**chat("hi"), "rejected_response": 3}, "rejected_response must be a string or a list of messages"),
    ({**chat("hi"), "rejected_messages": [{"role": "user"}]}, "rejected_messages: messages[0] needs a string"),
])
def test_a_pair_dpo_cannot_train_on_is_a_problem_line(tmp_path, model_dir, record, problem):
    _, profile, _ = measured(tmp_path, model_dir, "dpo", {**chat("fine"), "rejected_response": "no"}, record)
    assert [(line, p.startswith(problem)) for _, line, p in profile.issues] == [(2, True)], profile.issues


def test_grpo_counts_the_prompt_without_the_reply_and_with_the_generation_prompt(tmp_path, model_dir):
    solved = {**chat(WORDS, WORDS + " " + WORDS), "solution": "42"}      # the reply is the reference: not in the prompt
    open_prompt = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}
    spec, profile, _ = measured(tmp_path, model_dir, "grpo", solved, open_prompt)
    assert [s.tokens for s in profile.samples] == [text_tokens(WORDS) + 1, text_tokens("be brief", "hi") + 1]
    assert spec.max_length == text_tokens(WORDS) + 1


def test_grpo_needs_a_user_turn(tmp_path, model_dir):
    _, profile, _ = measured(tmp_path, model_dir, "grpo", chat("ok"), {"messages": [{"role": "assistant", "content": "x"}]})
    assert [(line, p) for _, line, p in profile.issues] == [(2, "has no user turn for GRPO to prompt with")]


def test_a_grpo_probe_runs_at_the_datas_longest_prompt(tmp_path, model_dir):
    data = jsonl(tmp_path / "prompts.jsonl", chat("hi"), chat(WORDS, "a long reference answer that is not the prompt"))
    out = tmp_path / "r.yaml"
    assert main(["probe", "--model-config", str(model_dir), "--device", "sim", "--gpu-memory", "64MiB", "--train-type", "lora",
                 "--rlhf-type", "grpo", "--num-generations", "2", "--max-completion-length", "8", "--global-batch-size", "4",
                 "--dataset", data, "--attn", "sdpa", "--gradient-checkpointing", "off", "--max-batch-size", "4",
                 "--validate-steps", "3", "--quiet", "--out", str(out)]) == 0
    recipe = load_recipe(out)
    assert recipe.settings.max_length == text_tokens(WORDS) + 1 and recipe.settings.max_completion_length == 8
    assert recipe.dataset["tokens"]["max"] == text_tokens(WORDS) + 1


def test_an_rlhf_files_own_data_is_measured_as_its_type(tmp_path, model_dir):
    from autotune.cli import build_parser
    from autotune.cli.swift_probe_args import flags_from_file, given_dests

    train = jsonl(tmp_path / "train.jsonl", {**chat("hi"), "rejected_response": WORDS})
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({"model": str(model_dir), "rlhf_type": "dpo", "dataset": [train], "max_length": 256}))
    args = build_parser().parse_args(["probe", "--swift-args", str(mine)])
    flags, notes = flags_from_file(str(mine), args, given_dests([], args.option_dests))
    assert flags["dataset"] == train and flags["dataset_whole"] and flags["rlhf_type"] == "dpo"
