"""`probe --swift-args FILE`: the user's ms-swift arguments become the probe's flags, and
`--emit swift` writes the same file back with the tuned settings, the rest of it kept."""

import dataclasses
import json
import shutil
from argparse import Namespace
from pathlib import Path

import pytest
import yaml

from autotune.cli import main
from autotune.cli.swift_probe_args import flags_from_file, given_dests
from autotune.emit import files, swift
from autotune.errors import UsageError
from autotune.model.source import BUILTIN_DIR
from autotune.recipe.schema import load_recipe
from launch_recipes import variant

NO_CLUSTER = Namespace(nproc_per_node=None, nnodes=None, model=None, model_config=None)


@pytest.fixture
def model_dir(tmp_path):
    """A model directory with its config alone (as a user's copy without the weights)."""
    directory = tmp_path / "tiny"
    directory.mkdir()
    shutil.copy(BUILTIN_DIR / "tiny-llama.json", directory / "config.json")
    return directory


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False) if name.endswith((".yaml", ".yml")) else data)
    return str(path)


def test_a_probe_of_the_users_file_runs_its_workload_and_writes_it_back_tuned(tmp_path, model_dir, capsys):
    mine = write(tmp_path, "mine.yaml", {
        "model": str(model_dir), "tuner_type": "lora", "lora_rank": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
        "dataset": ["my-data.jsonl"], "split_dataset_ratio": 0.05, "max_length": 32, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 3,
        "learning_rate": 2e-5, "num_train_epochs": 2, "gradient_checkpointing": True,
        "gradient_checkpointing_kwargs": json.dumps({"use_reentrant": True}), "output_dir": "runs/mine", "system": "Be brief."})
    out = tmp_path / "r.yaml"
    assert main(["probe", "--swift-args", mine, "--device", "sim", "--gpu-memory", "48MiB", "--attn", "sdpa",
                 "--gradient-checkpointing", "off", "--max-batch-size", "8", "--validate-steps", "3", "--quiet",
                 "--out", str(out), "--emit", "swift", "--swift-version", "4.6"]) == 0
    recipe = load_recipe(out)
    assert recipe.model.source == "config" and recipe.model.train_type == "lora"
    assert recipe.model.lora["r"] == 4 and recipe.model.lora["alpha"] == 8 and recipe.model.lora["target_modules"] == ["q_proj"]
    s = recipe.settings
    assert s.max_length == 32 and s.per_device_train_batch_size * s.gradient_accumulation_steps == 6
    assert s.eval_outputs == "loss"  # ms-swift's evaluation without a metric keeps no logits
    tuned = yaml.safe_load((tmp_path / "r.swift.yaml").read_text())
    for key in ("model", "dataset", "learning_rate", "num_train_epochs", "output_dir", "system"):
        assert tuned[key] == yaml.safe_load(Path(mine).read_text())[key], key
    assert tuned["per_device_train_batch_size"] == s.per_device_train_batch_size and tuned["gradient_checkpointing"] is False
    assert "gradient_checkpointing_kwargs" not in tuned  # a checkpointing setting of a run without checkpointing
    head = (tmp_path / "r.swift.yaml").read_text()
    assert "removed from" in head and "gradient_checkpointing_kwargs" in head.split("model:")[0]
    assert set(tuned) - {"learning_rate", "num_train_epochs", "system"} <= set(swift.field_list("4.6"))
    script = (tmp_path / "r.swift.sh").read_text()
    assert "--learning_rate 2e-05" in script and "--system 'Be brief.'" in script
    capsys.readouterr()
    assert main(["check", str(out), "--swift-args", str(tmp_path / "r.swift.yaml")]) == 0, capsys.readouterr().err  # the file as launched fits
    assert recipe.swift_args == str(Path(mine).resolve())  # so a later `emit swift` can say how to write it back
    capsys.readouterr()
    assert main(["emit", "swift", str(out), "-o", str(tmp_path / "later.yaml")]) == 0
    assert f"--swift-args {mine}" in capsys.readouterr().err


def test_a_flag_on_the_command_line_wins_over_the_file(tmp_path, model_dir):
    mine = write(tmp_path, "mine.yaml", {"model": str(model_dir), "max_length": 32, "lora_rank": 4, "tuner_type": "lora"})
    argv = ["probe", "--swift-args", mine, "--max-len", "16", "--lora-r=2"]  # argparse's prefixes count as given
    from autotune.cli import build_parser

    args = build_parser().parse_args(argv)
    flags, _ = flags_from_file(mine, args, given_dests(argv, args.option_dests))
    assert "max_length" not in flags and "lora_r" not in flags and flags["train_type"] == "lora"
    assert flags["model_config"] == str(model_dir)  # no weights there: random init


def test_an_unset_max_length_is_the_models_full_length_and_said(tmp_path, model_dir):
    """The Ovis2 report: max_length left out means ms-swift trains at the model's full length."""
    mine = write(tmp_path, "mine.yaml", {"model": str(model_dir)})
    flags, notes = flags_from_file(mine, NO_CLUSTER, set())
    full = json.loads((BUILTIN_DIR / "tiny-llama.json").read_text())["max_position_embeddings"]
    assert flags["max_length"] == full and any(f"full length, {full} tokens" in n for n in notes)


@pytest.mark.parametrize("data,global_batch", [
    ({"per_device_train_batch_size": 2}, 16),           # ms-swift: accumulation ceil(16 / 2 / 1) = 8
    ({"per_device_train_batch_size": 3}, 18),           # ceil(16 / 3) = 6
    ({}, 16),                                           # batch 1, accumulation 16
    ({"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}, 8),
    ({"rlhf_type": "grpo", "per_device_train_batch_size": 4}, 4),  # GRPO's accumulation defaults to 1
])
def test_the_global_batch_follows_ms_swifts_defaults(tmp_path, model_dir, data, global_batch):
    mine = write(tmp_path, "mine.yaml", {"model": str(model_dir), "max_length": 32, **data})
    flags, notes = flags_from_file(mine, NO_CLUSTER, set())
    assert flags["global_batch_size"] == global_batch
    assert any("gradient_accumulation_steps" in n for n in notes) == ("gradient_accumulation_steps" not in data)


def test_what_cannot_be_probed_is_one_line_naming_the_file(tmp_path, model_dir, capsys):
    cases = [
        ({"model": "Qwen/Qwen2.5-7B-Instruct", "max_length": 32}, "autotune downloads nothing"),
        ({"model": str(model_dir), "max_length": 32, "ENV": {"NPROC_PER_NODE": 8}}, "--nproc-per-node 8"),
        ({"model": str(model_dir), "max_length": 32, "tuner_type": "adalora"}, "adalora"),
        ({"model": str(model_dir), "max_length": 32, "deepspeed": "ds/my_zero3.json"}, "--strategy"),
    ]
    for data, needle in cases:
        mine = write(tmp_path, "mine.yaml", data)
        out = tmp_path / "r.yaml"
        assert main(["probe", "--swift-args", mine, "--device", "sim", "--gpu-memory", "48MiB", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--swift-args" in err and needle in err, err
        assert not out.exists()


def test_a_script_is_read_with_its_environment(tmp_path, model_dir):
    script = write(tmp_path, "train.sh", f"NPROC_PER_NODE=2 MAX_PIXELS=200704 swift sft \\\n    --model {model_dir} \\\n"
                                         "    --max_length 64 --per_device_train_batch_size 2 --gradient_accumulation_steps 4 \\\n"
                                         "    --padding_free true --eval_metric acc --split_dataset_ratio 0.01\n")
    vision = Namespace(nproc_per_node=2, nnodes=None, model=None, model_config="tiny-qwen2.5-vl")  # a model that reads MAX_PIXELS
    flags, _ = flags_from_file(script, vision, {"model_config"})
    assert flags["global_batch_size"] == 16 and flags["max_pixels"] == 200704 and flags["padding_free"] == "on"
    assert flags["eval_outputs"] == "argmax" and flags["max_length"] == 64


def test_emit_writes_a_3x_file_back_in_its_own_spelling(tmp_path, monkeypatch):
    """A file with train_type is a 3.x file: written back for 3.12 (no --swift-version, none installed)."""
    monkeypatch.setattr(swift, "installed_version", lambda: None)
    mine = write(tmp_path, "mine.yaml", {"model": "/data/qwen", "train_type": "full", "dataset": ["d.jsonl"], "metric": "acc",
                                         "deepspeed": "zero3", "warmup_ratio": 0.05, "model_type": "qwen2", "template": "qwen2_5"})
    r = variant("base")
    r = dataclasses.replace(r, model=dataclasses.replace(r.model, source="config"))  # a local model: ms-swift needs its type named
    text = files("swift", r, str(tmp_path / "out.yaml"), swift_args=mine)[str(tmp_path / "out.yaml")]
    assert "add model_type and template" not in text  # the file names both already
    tuned = yaml.safe_load(text)
    assert "ms-swift 3.12" in text and tuned["train_type"] == r.model.train_type and "tuner_type" not in tuned
    assert tuned["model"] == "/data/qwen" and tuned["warmup_ratio"] == 0.05
    assert "deepspeed" not in tuned and "deepspeed" in text.split("\n" + "model:")[0]  # the recipe ran without it: removed, said
    assert set(tuned) - {"warmup_ratio"} <= set(swift.field_list("3.12"))


def test_emit_refuses_swift_args_for_another_target(tmp_path, capsys):
    from autotune.recipe.schema import save_recipe

    recipe = tmp_path / "r.yaml"
    save_recipe(variant("base"), recipe)
    mine = write(tmp_path, "mine.yaml", {"model": "x"})
    assert main(["emit", "hf", str(recipe), "-o", str(tmp_path / "a.json"), "--swift-args", mine]) == 2
    assert "--swift-args" in capsys.readouterr().err and not (tmp_path / "a.json").exists()


def test_a_bad_file_is_refused(tmp_path):
    with pytest.raises(UsageError, match="no file at"):
        flags_from_file(str(tmp_path / "none.yaml"), NO_CLUSTER, set())


def test_plan_reads_the_users_file_too(tmp_path, model_dir, capsys):
    """`plan --swift-args`: the laptop answer for the same file (the length, LoRA and batch from it)."""
    mine = write(tmp_path, "mine.yaml", {"model": str(model_dir), "tuner_type": "lora", "lora_rank": 4, "max_length": 32,
                                         "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2})
    assert main(["plan", "--swift-args", mine, "--gpu-memory", "64MiB", "--cuda-context", "0", "--workspaces", "0",
                 "--attn", "sdpa", "--gradient-checkpointing", "off", "--quiet", "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["max_length"] == 32 and plan["model"]["train_type"] == "lora" and plan["model"]["lora"]["r"] == 4
    chosen = plan["candidates"][0]["predictions"][0]
    assert chosen["per_device_train_batch_size"] * chosen["gradient_accumulation_steps"] == 4  # the file's 2 x 2, kept


@pytest.mark.parametrize("tuner", ["tuner_type", "train_type"])
def test_real_ms_swift_parses_the_file_written_back(tmp_path, tuner):
    """The user's file with the recipe's settings in: ms-swift's own loader and parser take it
    (run in a venv with ms-swift, README: ms-swift's real parsers)."""
    pytest.importorskip("swift")
    from swift_parsing import assert_real_swift_accepts

    major = swift.resolve_version(None).split(".")[0]
    if (tuner == "tuner_type") != (major == "4"):
        pytest.skip(f"a {tuner} file is written for the other ms-swift major than the installed {major}.x")
    mine = write(tmp_path, "mine.yaml", {"model": "/data/qwen", tuner: "lora", "lora_rank": 16, "dataset": ["d.jsonl"],
                                         "learning_rate": 1e-4, "num_train_epochs": 2, "warmup_ratio": 0.05,
                                         "deepspeed": "zero3", "output_dir": "runs/x", "system": "Be brief."})
    out = tmp_path / "tuned.yaml"
    out.write_text(files("swift", variant("base"), str(out), swift_args=mine)[str(out)])
    assert_real_swift_accepts(out, "sft", major)


def test_a_file_launching_another_world_size_keeps_it_and_says_the_global_batch(tmp_path):
    mine = write(tmp_path, "mine.yaml", {"model": "/data/qwen", "tuner_type": "full", "ENV": {"NPROC_PER_NODE": 8}})
    r = variant("base")
    text = files("swift", r, str(tmp_path / "out.yaml"), swift_version="4.6", swift_args=mine)[str(tmp_path / "out.yaml")]
    tuned = yaml.safe_load(text)
    per_step = r.settings.per_device_train_batch_size * r.settings.gradient_accumulation_steps
    assert str(tuned["ENV"]["NPROC_PER_NODE"]) == "8" and f"= {per_step * 8} (the recipe's: {per_step})" in text


def test_what_the_file_leaves_unset_is_ms_swifts_default(tmp_path, model_dir):
    """ms-swift trains LoRA unless told (tuner_type defaults to lora; quant_method bnb with
    quant_bits 4 makes it QLoRA) and loads the model in its config's dtype: autotune's defaults (full, bfloat16) differ."""
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "torch_dtype": "float16"}))
    flags, _ = flags_from_file(write(tmp_path, "a.yaml", {"model": str(model_dir), "max_length": 32}), NO_CLUSTER, set())
    assert flags["train_type"] == "lora" and flags["dtype"] == "float16"
    flags, _ = flags_from_file(write(tmp_path, "b.yaml", {"model": str(model_dir), "max_length": 32, "quant_method": "bnb",
                                                          "quant_bits": 4, "torch_dtype": "bfloat16"}), NO_CLUSTER, set())
    assert flags["train_type"] == "qlora" and flags["dtype"] == "bfloat16"
    flags, _ = flags_from_file(write(tmp_path, "c.yaml", {"model": str(model_dir), "max_length": 32, "quant_bits": 4}), NO_CLUSTER, set())
    assert flags["train_type"] == "lora"  # ms-swift quantizes only with a quant_method


@pytest.mark.parametrize("data,needle", [
    ({"quant_method": "hqq", "quant_bits": 4}, "bitsandbytes 4-bit"),
    ({"quant_method": "bnb", "quant_bits": 8}, "bitsandbytes 4-bit"),
    ({"quant_method": "bnb", "quant_bits": 4, "tuner_type": "full"}, "tuner_type: lora"),
    ({"quant_method": "bnb", "quant_bits": 4, "bnb_4bit_quant_type": "fp4"}, "nf4"),
])
def test_a_quantization_autotune_does_not_probe_is_refused_naming_it(tmp_path, model_dir, data, needle):
    with pytest.raises(UsageError, match=needle):
        flags_from_file(write(tmp_path, "q.yaml", {"model": str(model_dir), "max_length": 32, **data}), NO_CLUSTER, set())


@pytest.mark.parametrize("model,kept,dropped", [
    ("tiny-llama", [], ["max_pixels", "video_frames"]),          # a text model reads no media limit
    ("tiny-llava", [], ["max_pixels", "video_frames"]),          # LLaVA: its own image size, no video
    ("tiny-qwen2.5-vl", ["max_pixels", "video_frames"], []),
])
def test_media_limits_count_only_for_a_model_that_reads_them(tmp_path, model, kept, dropped):
    """MAX_PIXELS / FPS_MAX_FRAMES exported for another model stopped the probe of this one
    ('this model is text-only', 'llava takes no video'); ms-swift's templates ignore them."""
    mine = write(tmp_path, "mine.yaml", {"max_length": 4096, "freeze_vit": True})
    args = Namespace(nproc_per_node=None, nnodes=None, model=None, model_config=model)
    flags, notes = flags_from_file(mine, args, {"model_config"}, environ={"MAX_PIXELS": "200704", "FPS_MAX_FRAMES": "8"})
    assert all(k in flags for k in kept) and not any(k in flags for k in dropped)
    assert any("not read for" in n for n in notes) == bool(dropped)
    assert any("--video-frames 0" in n for n in notes) == ("video_frames" in kept)


def test_the_launch_environment_is_ms_swifts(tmp_path, model_dir):
    """A YAML's ENV block gives way to the shell's exports (ms-swift sets only what the shell has
    not); a script's assignments win over them; `--key=value` flags of a script are read."""
    vision = Namespace(nproc_per_node=None, nnodes=None, model=None, model_config="tiny-qwen2.5-vl")
    mine = write(tmp_path, "mine.yaml", {"max_length": 4096, "ENV": {"MAX_PIXELS": "100352"}})
    assert flags_from_file(mine, vision, {"model_config"}, environ={"MAX_PIXELS": "200704"})[0]["max_pixels"] == 200704
    assert flags_from_file(mine, vision, {"model_config"}, environ={})[0]["max_pixels"] == 100352
    script = write(tmp_path, "train.sh", "MAX_PIXELS=100352 swift sft --max_length=4096 --per_device_train_batch_size=2 "
                                         "--gradient_accumulation_steps 4\n")
    flags, _ = flags_from_file(script, vision, {"model_config"}, environ={"MAX_PIXELS": "200704"})
    assert flags["max_pixels"] == 100352 and flags["max_length"] == 4096 and flags["global_batch_size"] == 8
    # a 3.x YAML has no ENV block: the processes its launch starts are the shell's NPROC_PER_NODE
    three = write(tmp_path, "three.yaml", {"model": str(model_dir), "max_length": 32, "per_device_train_batch_size": 2})
    with pytest.raises(UsageError, match="launches 4 process"):
        flags_from_file(three, NO_CLUSTER, set(), environ={"NPROC_PER_NODE": "4"})
    assert flags_from_file(three, Namespace(**{**vars(NO_CLUSTER), "nproc_per_node": 4}), set(),
                           environ={"NPROC_PER_NODE": "4"})[0]["global_batch_size"] == 16  # 2 x ceil(16 / 2 / 4) x 4


@pytest.mark.parametrize("data,needle", [
    ({"freeze_parameters_ratio": 0.5}, "freeze_parameters_ratio"),
    ({"modules_to_save": ["embed_tokens"]}, "modules_to_save"),
    ({"use_dora": True}, "use_dora"),
    ({"packing": True, "packing_length": 8192}, "packing_length"),
])
def test_a_memory_setting_autotune_does_not_probe_is_refused_by_probe_and_check(tmp_path, model_dir, data, needle, capsys):
    from autotune.recipe.schema import save_recipe

    mine = write(tmp_path, "mine.yaml", {"model": str(model_dir), "max_length": 32, **data})
    with pytest.raises(UsageError, match=needle):
        flags_from_file(mine, NO_CLUSTER, set())
    recipe = tmp_path / "r.yaml"
    save_recipe(variant("base"), recipe)
    assert main(["check", str(recipe), "--swift-args", mine]) == 2 and needle in capsys.readouterr().err


def test_a_grpo_files_completion_length_is_ms_swifts(tmp_path, model_dir):
    """swift rlhf takes response_length, then max_new_tokens, before max_completion_length; kept in
    the file written back, max_new_tokens would override the tuned length, so it is removed."""
    mine = write(tmp_path, "grpo.yaml", {"model": str(model_dir), "rlhf_type": "grpo", "max_length": 32, "max_new_tokens": 24,
                                         "max_completion_length": 8, "num_generations": 2})
    flags, _ = flags_from_file(mine, NO_CLUSTER, set())
    assert flags["max_completion_length"] == 24
    from autotune.emit.swift_base import merge

    merged, removed = merge({"rlhf_type": "grpo", "max_completion_length": 16}, yaml.safe_load(Path(mine).read_text()), False)
    assert merged["max_completion_length"] == 16 and "max_new_tokens" not in merged and "max_new_tokens" in removed


@pytest.mark.parametrize("data,fits", [
    ({"torch_dtype": "bfloat16"}, True),
    ({"torch_dtype": "bfloat16", "bf16": True}, True),
    ({"torch_dtype": "float32"}, False),                    # ms-swift: fp16 AMP for float32 weights with fp16 unset
    ({"torch_dtype": "float32", "fp16": False}, True),
    ({"torch_dtype": "bfloat16", "bf16": False}, False),    # bf16 weights trained without AMP
])
def test_a_mixed_precision_other_than_the_probes_is_refused(tmp_path, model_dir, data, fits):
    mine = write(tmp_path, "mine.yaml", {"model": str(model_dir), "max_length": 32, **data})
    if fits:
        assert flags_from_file(mine, NO_CLUSTER, set())[0]["dtype"] == data["torch_dtype"]
    else:
        with pytest.raises(UsageError, match="mixed precision"):
            flags_from_file(mine, NO_CLUSTER, set())


def test_the_max_pixels_argument_caps_images_as_the_template_rescales_them(tmp_path):
    """ms-swift's `max_pixels` argument rescales every image before the processor (whose
    MAX_PIXELS then applies too): the smaller of the two is the worst image."""
    vision = Namespace(nproc_per_node=None, nnodes=None, model=None, model_config="tiny-qwen2.5-vl")
    mine = write(tmp_path, "mine.yaml", {"max_length": 4096, "max_pixels": 50176})
    assert flags_from_file(mine, vision, {"model_config"}, environ={})[0]["max_pixels"] == 50176
    assert flags_from_file(mine, vision, {"model_config"}, environ={"MAX_PIXELS": "25088"})[0]["max_pixels"] == 25088


def test_one_process_on_several_cards_is_said(tmp_path, model_dir):
    """Without NPROC_PER_NODE ms-swift runs one process and splits the model over the visible cards."""
    mine = write(tmp_path, "mine.yaml", {"model": str(model_dir), "max_length": 32, "ENV": {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}})
    _, notes = flags_from_file(mine, NO_CLUSTER, set(), environ={})
    assert any("splits the model over them" in n for n in notes)
    _, notes = flags_from_file(mine, NO_CLUSTER, set(), environ={"CUDA_VISIBLE_DEVICES": "0"})  # the shell's wins
    assert not any("splits the model" in n for n in notes)


def test_packing_with_padding_free_is_packing(tmp_path, model_dir):
    """ms-swift turns padding_free on with packing: a file setting both packs (autotune refuses the two levers together)."""
    mine = write(tmp_path, "mine.yaml", {"model": str(model_dir), "max_length": 32, "packing": True, "padding_free": True})
    flags, _ = flags_from_file(mine, NO_CLUSTER, set())
    assert flags["packing"] == "on" and "padding_free" not in flags and flags["attn"] == "flash_attention_2"


def test_a_qlora_file_written_back_from_a_lora_recipe_loses_its_quantization(tmp_path):
    """probe --swift-args qlora.yaml --train-type lora probes LoRA: the file written back must not
    quantize (its quant keys kept would launch QLoRA, not the run probed)."""
    from autotune.emit.swift_base import merge

    base = {"model": "/m", "tuner_type": "lora", "quant_method": "bnb", "quant_bits": 4, "bnb_4bit_compute_dtype": "bfloat16"}
    merged, removed = merge({"tuner_type": "lora", "lora_rank": 8}, base, False)
    assert not {"quant_method", "quant_bits", "bnb_4bit_compute_dtype"} & set(merged) and "quant_method" in removed
