"""--dataset: an ms-swift JSONL measured with a local tokenizer and the family's image rule."""

import json

import pytest
import yaml
from PIL import Image

from autotune.cli import main
from autotune.model.dataset import from_dataset, percentile
from autotune.errors import UsageError
from autotune.model.families import family_for
from autotune.model.source import resolve
from autotune.recipe.schema import load_recipe
from autotune.spec import ProbeSpec

# The template writes "role content" per message, split on whitespace by the tokenizer below:
# a message is 1 + len(content.split()) tokens, an oracle independent of the code under test.
# With the generation prompt (GRPO's prompts) it ends on "assistant": one token more.
TEMPLATE = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}assistant {% endif %}"


def make_tokenizer(directory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"[UNK]": 0, "user": 1, "assistant": 2}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(directory)
    return str(directory)


def text_tokens(*contents):
    return sum(1 + len(c.replace("<image>", "").split()) for c in contents)


def chat(user, assistant="ok"):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


@pytest.fixture
def data(tmp_path):
    Image.new("RGB", (112, 112)).save(tmp_path / "small.png")  # 4 x 4 merged patches = 16 tokens
    Image.new("RGB", (300, 200)).save(tmp_path / "wide.png")  # rounds to 308 x 196: 11 x 7 = 77 tokens
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    long_text = " ".join(["word"] * 150)
    lines = [
        json.dumps(chat("hi there")),                                             # 1: short
        json.dumps(chat(long_text)),                                              # 2: long
        json.dumps({**chat("<image> what is this", "a cat"), "images": ["small.png"]}),  # 3: one image
        '{"messages": [{"role": "user", "content": "unterminated"',               # 4: broken JSON
        json.dumps({**chat("<image> and"), "images": ["missing.png"]}),           # 5: missing image
        json.dumps({**chat("<image> and"), "images": ["broken.png"]}),            # 6: unreadable image
        json.dumps({"conversation": []}),                                          # 7: no messages
        "",                                                                        # blank: skipped
        json.dumps({**chat("<image> <image> compare"), "images": ["small.png", "wide.png"]}),  # 9: two images
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    tokenizer = make_tokenizer(tmp_path / "tok")
    expected = sorted([
        text_tokens("hi there", "ok"),
        text_tokens(long_text, "ok"),
        text_tokens("what is this", "a cat") + 16 + 2,        # + <|vision_start|> <|vision_end|>
        text_tokens("compare", "ok") + (16 + 2) + (77 + 2),
    ])
    return tmp_path, tokenizer, expected


def test_distribution_and_problem_lines(data):
    tmp_path, tokenizer, expected = data
    spec = ProbeSpec(max_length=None, model_config="tiny-qwen2-vl", dataset=str(tmp_path / "train.jsonl"), tokenizer=tokenizer)
    new_spec, profile, record = from_dataset(spec, resolve(None, "tiny-qwen2-vl"))
    assert profile.token_counts() == expected
    assert [(file, line) for file, line, _ in profile.issues] == [(str(tmp_path / "train.jsonl"), n) for n in (4, 5, 6, 7)]
    problems = {line: problem for _, line, problem in profile.issues}
    assert "not valid JSON" in problems[4] and "missing.png" in problems[5] and "broken.png" in problems[6] and "messages" in problems[7]
    assert record["tokens"] == {"p50": expected[1], "p95": expected[3], "max": expected[3], "count": 4}
    assert record["image_pixels"]["max"] == 308 * 196 and record["image_pixels"]["count"] == 3
    # the max: nothing truncated, the largest image's pixels; two such images (2 x 79 tokens) would
    # not fit in 153 tokens, so the worst case takes one
    assert (new_spec.max_length, new_spec.images_per_sample, new_spec.max_pixels) == (expected[3], 1, 308 * 196)
    assert record["truncated_samples"] == 0 and record["downscaled_images"] == 0


def test_percentile_truncates_and_counts(data):
    tmp_path, tokenizer, expected = data
    spec = ProbeSpec(max_length=None, model_config="tiny-qwen2-vl", dataset=str(tmp_path / "train.jsonl"), tokenizer=tokenizer,
                     length_percentile=50)
    new_spec, _, record = from_dataset(spec, resolve(None, "tiny-qwen2-vl"))
    assert new_spec.max_length == expected[1] == percentile(expected, 50)
    assert record["truncated_samples"] == 2
    assert new_spec.max_pixels == 112 * 112 and record["downscaled_images"] == 1  # the 308 x 196 image


def test_without_a_tokenizer_says_so(data):
    tmp_path, _, _ = data
    spec = ProbeSpec(max_length=None, model_config="tiny-qwen2-vl", dataset=str(tmp_path / "train.jsonl"))
    with pytest.raises(UsageError, match="needs the model's tokenizer.*--tokenizer DIR"):
        from_dataset(spec, resolve(None, "tiny-qwen2-vl"))


def test_probe_with_a_dataset_records_limits_and_env(data, tmp_path, capsys):
    data_dir, tokenizer, expected = data
    out = tmp_path / "r.yaml"
    argv = ["probe", "--model-config", "tiny-qwen2-vl", "--device", "sim", "--gpu-memory", "16MiB", "--dataset",
            str(data_dir / "train.jsonl"), "--tokenizer", tokenizer, "--length-percentile", "75", "--max-batch-size", "4",
            "--out", str(out),
            # one candidate, no eval phase: what is tested is what the dataset sets
            "--attn", "sdpa", "--gradient-checkpointing", "off", "--no-eval", "--validate-steps", "3"]
    assert main(argv) == 0
    recipe = yaml.safe_load(out.read_text())
    assert load_recipe(out).settings.max_pixels == 308 * 196  # the recipe loads back with its new fields
    s = recipe["settings"]
    assert s["max_length"] == percentile(expected, 75) and recipe["dataset"]["truncated_samples"] == 1
    assert (s["freeze_vit"], s["freeze_aligner"], s["freeze_llm"]) == (True, True, False)  # ms-swift's defaults
    assert s["max_pixels"] == 308 * 196 and s["env"] == {"MAX_PIXELS": str(308 * 196)}
    assert s["image_resize"] == "qwen-vl-utils"  # no image of the data is one the processor makes more of: the largest grid
    # two 77-token images do not fit in the 75th percentile's length: the probe takes one
    assert recipe["multimodal"]["images_per_sample"] == 1 and recipe["multimodal"]["image_tokens"] == 77
    err = capsys.readouterr()
    assert "train.jsonl:4" in err.err and "p95" in err.err
    # the ms-swift launch file carries the limits and the freezing
    swift = tmp_path / "swift.yaml"
    assert main(["emit", "swift", str(out), "-o", str(swift), "--swift-version", "4.6"]) == 0
    launch = yaml.safe_load(swift.read_text())
    assert launch["ENV"]["MAX_PIXELS"] == str(308 * 196) and launch["freeze_vit"] is True and launch["max_length"] == s["max_length"]


def test_a_model_directory_supplies_weights_and_tokenizer(data, tmp_path):
    """--model DIR: the family's class loads the saved weights, and the directory's tokenizer counts the data."""
    import torch

    from autotune.devices import SimDevice
    from autotune.model.families import family_for
    from autotune.trials.trial import run_train_trial
    from autotune.model.workload import load_workload

    data_dir, tokenizer, expected = data
    source = resolve(None, "tiny-qwen2-vl")
    model_dir = tmp_path / "model"
    family_for(source.config).model_cls()._from_config(source.config, dtype=torch.bfloat16).save_pretrained(model_dir)
    make_tokenizer(model_dir)
    spec = ProbeSpec(max_length=None, model=str(model_dir), dataset=str(data_dir / "train.jsonl"), device="sim", gpu_memory=1 << 30)
    weights = resolve(str(model_dir), None)
    new_spec, profile, _ = from_dataset(spec, weights)
    assert profile.tokenizer == str(model_dir) and profile.token_counts() == expected
    workload = load_workload(weights, new_spec, SimDevice(1 << 30))
    assert workload.source.kind == "weights" and run_train_trial(workload, 1, 3, 1 << 30).fits


@pytest.mark.parametrize("text,needle", [
    ("", "empty.jsonl holds no sample; write one ms-swift sample per line: a JSON object with a 'messages' list"),
    ('{"foo": 1}\n', "(1 problem line(s); first: {path}:1: no 'messages' list); fix that line and the others like it"),
])
def test_no_usable_sample_says_what_to_fix(tmp_path, text, needle):
    """Raised before any problem line is printed: the hint used to say 'fix the lines named above'."""
    (tmp_path / "empty.jsonl").write_text(text)
    spec = ProbeSpec(max_length=None, model_config="tiny-llama", dataset=str(tmp_path / "empty.jsonl"),
                     tokenizer=make_tokenizer(tmp_path / "tok"))
    with pytest.raises(UsageError) as info:
        from_dataset(spec, resolve(None, "tiny-llama"))
    needle = needle.format(path=tmp_path / "empty.jsonl")
    assert info.value.flag == "--dataset" and needle in str(info.value) and "named above" not in str(info.value)


def test_the_data_decides_the_image_rule_at_the_chosen_limit():
    """With --dataset the images are the data's: at the chosen limit the worst case is the largest
    grid (qwen-vl-utils') unless transformers' processor makes more of one of them, a thin image
    it clamps one factor high past the limit (2000 x 20 at 12544 pixels: 40 tokens against 16)."""
    from autotune.model.dataset import DatasetProfile, Sample, image_rule

    source = resolve(None, "tiny-qwen2-vl")
    family = family_for(source.config)
    assert family.image_tokens_for_size(source.config, 2000, 20, 12544) == 40 > 16
    square = DatasetProfile("d.jsonl", 1, [Sample(1, 40, 1, [12544], [(300, 200)])], [], None)
    thin = DatasetProfile("d.jsonl", 2, [*square.samples, Sample(2, 40, 1, [12544], [(2000, 20)])], [], None)
    assert image_rule(square, family, source.config, 12544) == "qwen-vl-utils"
    assert image_rule(thin, family, source.config, 12544) == "processor"
    assert image_rule(thin, family, source.config, 2000 * 28) == "qwen-vl-utils"  # under a larger limit it is no strip


def test_images_are_found_where_ms_swift_looks(tmp_path, monkeypatch):
    """ms-swift opens a relative image path from the launch directory, then under $ROOT_IMAGE_DIR; a
    sample whose image autotune missed would be left out of the worst case."""
    (tmp_path / "data").mkdir()
    (tmp_path / "pics").mkdir()
    (tmp_path / "root").mkdir()
    Image.new("RGB", (112, 112)).save(tmp_path / "pics" / "a.png")
    Image.new("RGB", (112, 112)).save(tmp_path / "root" / "b.png")
    (tmp_path / "data" / "train.jsonl").write_text(json.dumps({**chat("<image> one"), "images": ["pics/a.png"]}) + "\n"
                                                   + json.dumps({**chat("<image> two"), "images": ["b.png"]}) + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROOT_IMAGE_DIR", str(tmp_path / "root"))
    spec = ProbeSpec(max_length=None, model_config="tiny-qwen2-vl", dataset="data/train.jsonl", tokenizer=make_tokenizer(tmp_path / "tok"))
    _, profile, _ = from_dataset(spec, resolve(None, "tiny-qwen2-vl"))
    assert profile.issues == [] and len(profile.samples) == 2
