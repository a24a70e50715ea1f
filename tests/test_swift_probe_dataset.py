"""`probe --swift-args FILE`: the file's own local data is measured, as `--dataset` measures it,
so the probe runs at the longest sample ms-swift will meet (capped by the file's max_length), and
where it cannot be measured the probe runs at max_length and says why."""

import json
import shutil

import pytest
import yaml

from autotune.cli import build_parser, main
from autotune.cli.swift_probe_args import flags_from_file, given_dests
from autotune.model.dataset import from_dataset
from autotune.model.source import BUILTIN_DIR, resolve
from autotune.recipe.schema import load_recipe
from autotune.spec import ProbeSpec
from test_dataset import chat, make_tokenizer, text_tokens

LONG = " ".join(["word"] * 20)


@pytest.fixture
def model_dir(tmp_path):
    """A config-only model directory with its tokenizer, as a user's copy without the weights."""
    directory = tmp_path / "tiny"
    directory.mkdir()
    shutil.copy(BUILTIN_DIR / "tiny-llama.json", directory / "config.json")
    make_tokenizer(directory)
    return directory


def jsonl(path, *records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def swift_file(tmp_path, **keys):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(keys, sort_keys=False))
    return str(path)


def read(path, argv=()):
    args = build_parser().parse_args(["probe", "--swift-args", path, *argv])
    return flags_from_file(path, args, given_dests(list(argv), args.option_dests))


def test_the_files_local_data_sets_the_probed_length_and_the_file_written_back(tmp_path, model_dir, capsys):
    train = jsonl(tmp_path / "train.jsonl", chat("hi"), chat(LONG))
    mine = swift_file(tmp_path, model=str(model_dir), dataset=[train], max_length=64, per_device_train_batch_size=1,
                      gradient_accumulation_steps=2, output_dir="runs/mine")
    out = tmp_path / "r.yaml"
    assert main(["probe", "--swift-args", mine, "--device", "sim", "--gpu-memory", "64MiB", "--attn", "sdpa",
                 "--gradient-checkpointing", "off", "--max-batch-size", "4", "--validate-steps", "3", "--quiet",
                 "--out", str(out), "--emit", "swift", "--swift-version", "4.6"]) == 0
    recipe = load_recipe(out)
    longest = text_tokens(LONG, "ok")
    assert recipe.settings.max_length == longest < 64
    assert recipe.dataset["path"] == train and recipe.dataset["tokens"]["max"] == longest
    tuned = yaml.safe_load((tmp_path / "r.swift.yaml").read_text())
    assert tuned["dataset"] == [train] and tuned["max_length"] == longest
    assert f"# max_length 64 -> {longest}: the longest sample of {train}" in (tmp_path / "r.swift.yaml").read_text()
    # the recipe written onto a file that trains on other data: said, loudly
    other = jsonl(tmp_path / "other.jsonl", chat(LONG + " " + LONG))
    theirs = tmp_path / "theirs.yaml"
    theirs.write_text(yaml.safe_dump({"model": str(model_dir), "dataset": [other], "max_length": 64}))
    assert main(["emit", "swift", str(out), "--swift-args", str(theirs), "-o", str(tmp_path / "t.yaml"), "--swift-version", "4.6"]) == 0
    assert f"WARNING: the recipe's max_length {longest} is the longest sample of {train}" in (tmp_path / "t.yaml").read_text()
    # check of the file as the user wrote it: at its own max_length, and says what the recipe was probed at
    capsys.readouterr()
    main(["check", str(out), "--swift-args", mine])
    assert f"the recipe was probed at {longest} tokens, the longest sample of {train}" in capsys.readouterr().out


def test_the_files_max_length_caps_the_data_and_val_dataset_counts(tmp_path, model_dir):
    train = jsonl(tmp_path / "train.jsonl", chat("hi"))
    val = jsonl(tmp_path / "val.jsonl", chat(LONG))  # the mid-training evaluation meets the longest sample
    mine = swift_file(tmp_path, model=str(model_dir), dataset=train, val_dataset=[val], max_length=12)
    flags, notes = read(mine)
    assert flags["dataset"] == [train, val] and flags["max_length"] == 12
    assert any("measuring" in n and "--dataset none" in n for n in notes)
    spec, _, record = from_dataset(ProbeSpec(max_length=flags["max_length"], model_config=str(model_dir), dataset=flags["dataset"]),
                                   resolve(None, str(model_dir)))
    assert spec.max_length == 12 and record["truncated_samples"] == 1 and record["tokens"]["max"] == text_tokens(LONG, "ok")


def test_an_unset_max_length_probes_the_longest_sample_up_to_the_models_length(tmp_path, model_dir):
    """The Ovis2 report with the data at hand: ms-swift keeps samples up to the model's length, the
    data's longest is what the run meets."""
    train = jsonl(tmp_path / "train.jsonl", chat(LONG))
    flags, notes = read(swift_file(tmp_path, model=str(model_dir), dataset=[train]))
    full = json.loads((BUILTIN_DIR / "tiny-llama.json").read_text())["max_position_embeddings"]
    assert flags["dataset"] == train and flags["max_length"] == full
    assert any(f"full length, {full} tokens, its longest sample up to that" in n for n in notes)


@pytest.mark.parametrize("entry,kind", [
    ("AI-ModelScope/alpaca-gpt4-data-en#500", "hub"),
    ("alpaca.jsonl", "format"),
    ("train.csv", "format"),
])
def test_data_that_cannot_be_measured_is_said_and_the_probe_runs_at_max_length(tmp_path, model_dir, monkeypatch, entry, kind):
    monkeypatch.chdir(tmp_path)  # ms-swift finds a relative dataset path from where it is launched
    jsonl(tmp_path / "alpaca.jsonl", {"instruction": "say hi", "output": "hi"})
    (tmp_path / "train.csv").write_text("query,response\nhi,ok\n")
    jsonl(tmp_path / "ok.jsonl", chat("hi"))
    flags, notes = read(swift_file(tmp_path, model=str(model_dir), dataset=["ok.jsonl", entry], max_length=32))
    assert "dataset" not in flags and flags["max_length"] == 32
    needle = "is not a local file here" if kind == "hub" else "is not an ms-swift `messages` JSONL"
    assert any(needle in n and entry.split("#")[0] in n and "probing at max_length" in n for n in notes), notes


def test_a_sampled_local_file_is_measured_whole(tmp_path, model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jsonl(tmp_path / "train.jsonl", chat("hi"))
    flags, _ = read(swift_file(tmp_path, model=str(model_dir), dataset=["train.jsonl#100"], max_length=32))
    assert flags["dataset"] == "train.jsonl"  # ms-swift samples 100 of it: which ones is not known, so all count


@pytest.mark.parametrize("argv,needle", [
    (["--dataset", "none"], None),                                     # the user's choice: probe at max_length
    (["--max-length", "auto"], "--max-length auto searches the limit"),
])
def test_the_command_line_can_leave_the_data_out(tmp_path, model_dir, argv, needle):
    train = jsonl(tmp_path / "train.jsonl", chat("hi"))
    flags, notes = read(swift_file(tmp_path, model=str(model_dir), dataset=[train], max_length=32), argv)
    assert not flags.get("dataset")
    assert needle is None or any(needle in n for n in notes), notes


def test_a_model_without_a_tokenizer_probes_at_max_length_and_names_the_fix(tmp_path, model_dir):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model_dir / name).unlink(missing_ok=True)
    train = jsonl(tmp_path / "train.jsonl", chat("hi"))
    mine = swift_file(tmp_path, model=str(model_dir), dataset=[train], max_length=32)
    flags, notes = read(mine)
    assert "dataset" not in flags and any("no tokenizer" in n and "--tokenizer DIR" in n for n in notes)
    flags, _ = read(mine, ["--tokenizer", str(make_tokenizer(tmp_path / "tok"))])
    assert flags["dataset"] == train


def test_probe_dataset_takes_several_files(tmp_path, model_dir, capsys):
    """`--dataset A B` as ms-swift's --dataset takes them: the worst case is over both, and a problem
    line names its own file."""
    a = jsonl(tmp_path / "a.jsonl", chat("hi"))
    b = tmp_path / "b.jsonl"
    b.write_text(json.dumps(chat(LONG)) + "\nnot json\n")
    out = tmp_path / "r.yaml"
    assert main(["probe", "--model-config", str(model_dir), "--dataset", a, str(b), "--device", "sim", "--gpu-memory", "64MiB",
                 "--attn", "sdpa", "--gradient-checkpointing", "off", "--max-batch-size", "2", "--no-eval", "--validate-steps", "3",
                 "--out", str(out)]) == 0
    recipe = load_recipe(out)
    assert recipe.settings.max_length == text_tokens(LONG, "ok") and recipe.dataset["samples"] == 2
    assert recipe.dataset["issues"] == [{"file": str(b), "line": 2, "problem": recipe.dataset["issues"][0]["problem"]}]
    assert f"{b}:2: not valid JSON" in capsys.readouterr().err


def test_plan_says_it_does_not_measure_the_files_data(tmp_path, model_dir, capsys):
    train = jsonl(tmp_path / "train.jsonl", chat("hi"))
    mine = swift_file(tmp_path, model=str(model_dir), dataset=[train], max_length=32)
    assert main(["plan", "--swift-args", mine, "--gpu-memory", "64MiB", "--attn", "sdpa", "--gradient-checkpointing", "off",
                 "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["max_length"] == 32
    assert f"`autotune probe --swift-args {mine}` measures it" in captured.err


@pytest.mark.parametrize("keys,argv,evaluates", [
    ({}, [], False),                                       # ms-swift's split_dataset_ratio 0: no evaluation set
    ({"split_dataset_ratio": 0.01}, [], True),
    ({"val_dataset": ["hub/val"]}, [], True),
    ({"val_dataset": ["hub/val"], "eval_strategy": "no"}, [], False),
    ({}, ["--eval-outputs", "argmax"], True),              # asked for on the command line
])
def test_the_eval_phase_is_probed_only_where_ms_swift_evaluates(tmp_path, model_dir, keys, argv, evaluates):
    flags, notes = read(swift_file(tmp_path, model=str(model_dir), max_length=32, **keys), argv)
    assert flags.get("no_eval", False) is (not evaluates)
    assert evaluates or any("no eval batch is probed" in n for n in notes)


def test_a_run_without_evaluation_probes_no_eval_batch_and_writes_none(tmp_path, model_dir):
    mine = swift_file(tmp_path, model=str(model_dir), max_length=16, per_device_train_batch_size=1, gradient_accumulation_steps=2,
                      per_device_eval_batch_size=4)
    out = tmp_path / "r.yaml"
    assert main(["probe", "--swift-args", mine, "--device", "sim", "--gpu-memory", "64MiB", "--attn", "sdpa",
                 "--gradient-checkpointing", "off", "--max-batch-size", "2", "--validate-steps", "3", "--quiet",
                 "--out", str(out), "--emit", "swift", "--swift-version", "4.6"]) == 0
    recipe = load_recipe(out)
    assert recipe.settings.per_device_eval_batch_size is None
    assert not any(t.phase == "eval" for t in recipe.search.trials)
    assert "per_device_eval_batch_size" not in yaml.safe_load((tmp_path / "r.swift.yaml").read_text())


def test_the_files_system_prompt_counts_in_a_sample_without_its_own(tmp_path, model_dir):
    """ms-swift gives `system` to every sample without a system message; the sample's own wins."""
    train = jsonl(tmp_path / "train.jsonl", chat("hi"),
                  {"messages": [{"role": "system", "content": "short"}, *chat("hi")["messages"]]})
    system = " ".join(["rule"] * 30)
    flags, _ = read(swift_file(tmp_path, model=str(model_dir), dataset=[train], max_length=256, system=system))
    assert flags["system"] == system
    spec = ProbeSpec(max_length=256, model_config=str(model_dir), dataset=flags["dataset"], system=flags["system"])
    _, profile, _ = from_dataset(spec, resolve(None, str(model_dir)))
    assert profile.token_counts() == sorted([text_tokens(system, "hi", "ok"), text_tokens("short", "hi", "ok")])


def test_probe_system_reads_a_txt_file_as_ms_swift_does(tmp_path, model_dir, capsys):
    (tmp_path / "system.txt").write_text("one two three")
    train = jsonl(tmp_path / "train.jsonl", chat("hi"))
    out = tmp_path / "r.yaml"
    assert main(["probe", "--model-config", str(model_dir), "--dataset", train, "--system", str(tmp_path / "system.txt"),
                 "--device", "sim", "--gpu-memory", "64MiB", "--attn", "sdpa", "--gradient-checkpointing", "off",
                 "--max-batch-size", "1", "--no-eval", "--validate-steps", "3", "--quiet", "--out", str(out)]) == 0
    assert load_recipe(out).settings.max_length == text_tokens("one two three", "hi", "ok")
    assert main(["probe", "--model-config", str(model_dir), "--system", "be brief", "--max-length", "16", "--device", "sim"]) == 2
    assert "--system: counts in each --dataset sample's length" in capsys.readouterr().err


def test_a_tokenizer_without_a_chat_template_is_not_guessed_at(tmp_path, model_dir):
    (model_dir / "chat_template.jinja").unlink()
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    train = jsonl(tmp_path / "train.jsonl", chat("hi"))
    flags, notes = read(swift_file(tmp_path, model=str(model_dir), dataset=[train], max_length=32))
    assert "dataset" not in flags and any("has no chat template" in n for n in notes), notes


def measured(flags, model):
    """The probe's measurement of the data flags_from_file took, as spec_from_args passes it on."""
    spec = ProbeSpec(max_length=flags["max_length"], model_config=str(model), dataset=flags["dataset"], system=flags.get("system"),
                     root_image_dir=flags.get("root_image_dir"), dataset_whole=flags.get("dataset_whole", False),
                     tokenizer=flags.get("tokenizer"), max_pixels=flags.get("max_pixels"), image_resize=flags.get("image_resize"))
    return from_dataset(spec, resolve(None, str(model)))


def test_a_samples_own_system_wins_over_the_files_and_sharegpt_keys_are_read(tmp_path, model_dir):
    """ms-swift's MessagesPreprocessor: `system` / `system_prompt` of the sample, `from` / `value`,
    human / gpt roles, `conversations`."""
    own = " ".join(["own"] * 40)
    train = jsonl(tmp_path / "train.jsonl", {"system_prompt": own, **chat("hi")},
                  {"conversations": [{"from": "human", "value": "hi there"}, {"from": "gpt", "value": "ok"}]})
    flags, _ = read(swift_file(tmp_path, model=str(model_dir), dataset=[train], max_length=256, system="file wide"))
    _, profile, record = measured(flags, model_dir)
    assert profile.issues == [] and record.get("used") is not False
    assert profile.token_counts() == sorted([text_tokens(own, "hi", "ok"), text_tokens("file wide", "hi there", "ok")])


def test_data_with_a_sample_autotune_cannot_count_is_probed_at_max_length(tmp_path, model_dir, capsys):
    """Tools and tool calls are laid out by ms-swift's agent template: such a sample could be the
    run's longest, so the file's data as a whole sets nothing and the probe keeps max_length."""
    tools = json.dumps([{"type": "function", "function": {"name": "f", "description": LONG, "parameters": {}}}])
    train = jsonl(tmp_path / "train.jsonl", chat("hi"), {"tools": tools, **chat("hi")})
    mine = swift_file(tmp_path, model=str(model_dir), dataset=[train], max_length=48, per_device_train_batch_size=1,
                      gradient_accumulation_steps=1)
    out = tmp_path / "r.yaml"
    assert main(["probe", "--swift-args", mine, "--device", "sim", "--gpu-memory", "64MiB", "--attn", "sdpa",
                 "--gradient-checkpointing", "off", "--max-batch-size", "2", "--validate-steps", "3", "--out", str(out)]) == 0
    recipe = load_recipe(out)
    assert recipe.settings.max_length == 48 and recipe.dataset["used"] is False and recipe.dataset["issue_count"] == 1
    err = capsys.readouterr().err
    assert f"{train}:2: has tools" in err and "probe runs at max_length 48" in err
    # the same data given as --dataset: the sample is left out, as the lines above it say
    spec = ProbeSpec(max_length=48, model_config=str(model_dir), dataset=train)
    new_spec, profile, _ = from_dataset(spec, resolve(None, str(model_dir)))
    assert new_spec.max_length == text_tokens("hi", "ok") and len(profile.issues) == 1


def test_the_files_root_image_dir_finds_the_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ROOT_IMAGE_DIR", raising=False)
    from PIL import Image

    (tmp_path / "root").mkdir()
    (tmp_path / "data").mkdir()
    Image.new("RGB", (112, 112)).save(tmp_path / "root" / "b.png")
    train = jsonl(tmp_path / "data" / "train.jsonl", {**chat("<image> two"), "images": ["b.png"]})
    tokenizer = make_tokenizer(tmp_path / "tok")
    mine = swift_file(tmp_path, model_config="tiny-qwen2-vl", dataset=[train], max_length=2048, ENV={"ROOT_IMAGE_DIR": str(tmp_path / "root")})
    flags, _ = read(mine, ["--model-config", "tiny-qwen2-vl", "--tokenizer", tokenizer])
    assert flags["root_image_dir"] == str(tmp_path / "root")
    _, profile, _ = measured({**flags, "tokenizer": tokenizer}, "tiny-qwen2-vl")
    assert profile.issues == [] and profile.samples[0].images == 1


def test_renamed_columns_are_not_guessed_at(tmp_path, model_dir):
    train = jsonl(tmp_path / "train.jsonl", chat("hi"))
    flags, notes = read(swift_file(tmp_path, model=str(model_dir), dataset=[train], max_length=32, columns={"img": "images"}))
    assert "dataset" not in flags and any("(columns)" in n for n in notes)


def test_swift_rlhf_without_a_type_is_ms_swifts_dpo(tmp_path, model_dir):
    train = jsonl(tmp_path / "train.jsonl", {**chat("hi"), "rejected_response": LONG})
    script = tmp_path / "run.sh"
    script.write_text(f"swift rlhf --model {model_dir} --dataset {train} --max_length 256\n")
    flags, notes = read(str(script))
    assert flags["rlhf_type"] == "dpo" and flags["dataset"] == train  # measured as DPO's pairs (test_dataset_rlhf.py)


@pytest.mark.parametrize("keys", [
    {"streaming": True, "split_dataset_ratio": 0.01},       # ms-swift cannot split a stream: no evaluation set
    {"save_strategy": "no", "split_dataset_ratio": 0.01},   # an unset eval_strategy follows save_strategy
    {"eval_dataset": ["gsm8k"]},                            # EvalScope's benchmark generates: no eval batch
])
def test_more_runs_that_evaluate_no_batch(tmp_path, model_dir, keys):
    flags, notes = read(swift_file(tmp_path, model=str(model_dir), max_length=32, **keys))
    assert flags["no_eval"] is True and any("no eval batch is probed" in n for n in notes)


def test_no_eval_on_the_command_line_beside_a_file_that_evaluates(tmp_path, model_dir):
    mine = swift_file(tmp_path, model=str(model_dir), max_length=16, per_device_train_batch_size=1, gradient_accumulation_steps=2,
                      split_dataset_ratio=0.01)
    assert main(["probe", "--swift-args", mine, "--no-eval", "--device", "sim", "--gpu-memory", "64MiB", "--attn", "sdpa",
                 "--gradient-checkpointing", "off", "--max-batch-size", "2", "--validate-steps", "3", "--quiet",
                 "--out", str(tmp_path / "r.yaml")]) == 0


def test_a_rank_torchrun_started_reads_the_world_size_from_torchrun(tmp_path, model_dir):
    """A relaunched rank's command line has lost --nproc-per-node: WORLD_SIZE says it."""
    mine = swift_file(tmp_path, model=str(model_dir), max_length=32, per_device_train_batch_size=2, gradient_accumulation_steps=1,
                      ENV={"NPROC_PER_NODE": "2"})
    args = build_parser().parse_args(["probe", "--swift-args", mine])
    flags, _ = flags_from_file(mine, args, set(), environ={"WORLD_SIZE": "2"})
    assert flags["global_batch_size"] == 4


def test_a_line_that_is_not_utf8_is_that_lines_problem(tmp_path, model_dir):
    path = tmp_path / "train.jsonl"
    path.write_bytes((json.dumps(chat("hi")) + "\n").encode() * 400 + b'{"messages": "\xff"}\n')
    flags, _ = read(swift_file(tmp_path, model=str(model_dir), dataset=[str(path)], max_length=32))
    _, profile, record = measured(flags, model_dir)
    assert profile.issues == [(str(path), 401, "not UTF-8 (byte 15)")] and record["used"] is False


def vision_data(tmp_path, *records):
    from PIL import Image

    Image.new("RGB", (112, 112)).save(tmp_path / "small.png")
    Image.new("RGB", (1000, 1000)).save(tmp_path / "big.png")
    return jsonl(tmp_path / "train.jsonl", *records)


def test_vision_data_under_the_files_max_pixels_probes_the_datas_largest_image(tmp_path, monkeypatch):
    """The file's MAX_PIXELS caps the images; the probe's image is the data's largest under it, not
    the largest grid the cap allows (which would not fit in the data's longest sample)."""
    monkeypatch.chdir(tmp_path)
    train = vision_data(tmp_path, {**chat("<image> a"), "images": ["big.png"]}, {**chat("<image> b"), "images": ["small.png"]})
    tokenizer = make_tokenizer(tmp_path / "tok")
    mine = swift_file(tmp_path, model_config="tiny-qwen2-vl", dataset=[train], max_length=4096, ENV={"MAX_PIXELS": "401408"})
    flags, _ = read(mine, ["--model-config", "tiny-qwen2-vl", "--tokenizer", tokenizer])
    spec, profile, record = measured({**flags, "tokenizer": tokenizer}, "tiny-qwen2-vl")
    assert spec.max_pixels == max(profile.pixel_counts()) <= 401408 and record.get("used") is not False
    from autotune.model.families import Media, family_for
    from autotune.spec import PROCESSOR

    config = resolve(None, "tiny-qwen2-vl").config
    plan = family_for(config).plan(config, Media(images=1, max_pixels=spec.max_pixels, image_resize=spec.image_resize or PROCESSOR))
    assert plan.tokens < spec.max_length  # the worst case fits in the data's longest sample


@pytest.mark.parametrize("record,env,needle", [
    ({"videos": ["clip.mp4"]}, {}, "no frame limit is set"),
    ({"audios": ["a.wav"]}, {}, "has audio"),
    ({"objects": {"ref": ["cat"], "bbox": [[0, 0, 1, 1]]}}, {}, "grounding objects"),
])
def test_media_autotune_cannot_count_keeps_the_probe_at_max_length(tmp_path, monkeypatch, record, env, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "clip.mp4").write_bytes(b"")
    train = vision_data(tmp_path, {**chat("<image> a"), "images": ["small.png"]}, {**chat("b"), **record})
    tokenizer = make_tokenizer(tmp_path / "tok")
    flags, _ = read(swift_file(tmp_path, model_config="tiny-qwen2-vl", dataset=[train], max_length=512, ENV=env),
                    ["--model-config", "tiny-qwen2-vl", "--tokenizer", tokenizer])
    spec, profile, record_ = measured({**flags, "tokenizer": tokenizer}, "tiny-qwen2-vl")
    assert record_["used"] is False and spec.max_length == 512 and needle in profile.issues[0][2]


def test_min_pixels_is_not_guessed_at(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train = vision_data(tmp_path, {**chat("<image> a"), "images": ["small.png"]})
    flags, notes = read(swift_file(tmp_path, model_config="tiny-qwen2-vl", dataset=[train], max_length=512, ENV={"MIN_PIXELS": "200704"}),
                        ["--model-config", "tiny-qwen2-vl", "--tokenizer", make_tokenizer(tmp_path / "tok")])
    assert "dataset" not in flags and any("MIN_PIXELS" in n for n in notes)


def test_the_runs_images_must_be_where_ms_swift_looks(tmp_path, monkeypatch):
    """Beside the JSONL is not where ms-swift looks: the run would fail on that sample."""
    (tmp_path / "data").mkdir()
    train = vision_data(tmp_path / "data", {**chat("<image> a"), "images": ["small.png"]})
    monkeypatch.chdir(tmp_path)
    tokenizer = make_tokenizer(tmp_path / "tok")
    flags, _ = read(swift_file(tmp_path, model_config="tiny-qwen2-vl", dataset=[train], max_length=512),
                    ["--model-config", "tiny-qwen2-vl", "--tokenizer", tokenizer])
    _, profile, record = measured({**flags, "tokenizer": tokenizer}, "tiny-qwen2-vl")
    assert record["used"] is False and "ms-swift looks from the launch directory" in profile.issues[0][2]


def test_a_conversations_file_is_measured(tmp_path, model_dir):
    train = jsonl(tmp_path / "train.jsonl", {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "ok"}]})
    flags, _ = read(swift_file(tmp_path, model=str(model_dir), dataset=[train], max_length=32))
    assert flags["dataset"] == train


def test_data_given_on_the_command_line_counts_the_files_system_prompt(tmp_path, model_dir):
    train = jsonl(tmp_path / "train.jsonl", chat("hi"))
    mine = swift_file(tmp_path, model=str(model_dir), max_length=32, system="be brief")
    flags, _ = read(mine, ["--dataset", train])
    assert flags["system"] == "be brief" and "dataset" not in flags and not flags.get("dataset_whole")
    flags, _ = read(mine, ["--dataset", "none"])
    assert "system" not in flags
