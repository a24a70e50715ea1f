"""ms-swift argument files: every key is an argument the target version accepts, with a value
its parser converts. Checked against the checked-in field lists always, and against ms-swift's
own parser where `import swift` works (run these tests with a venv that has ms-swift)."""

import dataclasses
import shlex

import pytest
import yaml

from autotune.emit import swift, swift_read
from autotune.errors import UsageError
from launch_recipes import VARIANTS, variant
from swift_parsing import assert_real_swift_accepts, matches

VERSIONS = ("3.12", "4.6")


def emitted(name: str, version: str) -> dict:
    return yaml.safe_load(swift.render_yaml(variant(name), version))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", VARIANTS)
def test_every_key_is_in_the_checked_in_field_list(name, version):
    if (name, version) == ("fsdp", "3.12"):
        pytest.skip("refused: ms-swift 3.12 ships no fsdp2 preset (tests/test_emit_quant_fsdp.py)")
    fields = swift.field_list(version)
    data = emitted(name, version)
    env = data.pop("ENV", None)
    assert (env is not None) == (version == "4.6" and name != "base")  # 3.x files carry no ENV block
    for key, value in data.items():
        assert key in fields, f"ms-swift {version} has no argument {key}"
        assert matches(fields[key], value), f"{key}={value!r} is not a {fields[key]}"


def test_version_specific_names_and_values():
    v4, v3 = emitted("eval_zero3", "4.6"), emitted("eval_zero3", "3.12")
    assert v4["tuner_type"] == "lora" and "train_type" not in v4
    assert v3["train_type"] == "lora" and "tuner_type" not in v3
    r = variant("eval_zero3")
    for data in (v4, v3):
        assert data["per_device_train_batch_size"] == r.settings.per_device_train_batch_size
        assert data["per_device_eval_batch_size"] == 2 and data["eval_accumulation_steps"] == 4
        assert data["deepspeed"] == "zero3_offload" and data["freeze_vit"] is True and data["freeze_llm"] is False
        assert data["lora_rank"] == r.model.lora["r"] and data["max_length"] == 32
    assert v4["ENV"]["MAX_PIXELS"] == "1003520" and v4["ENV"]["NPROC_PER_NODE"] == "2" and v4["ENV"]["NNODES"] == "2"
    assert v4["ENV"]["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    fsdp = emitted("fsdp", "4.6")
    assert fsdp["fsdp"] and "deepspeed" not in fsdp and fsdp["tuner_type"] == "full" and "lora_rank" not in fsdp
    assert fsdp["attn_impl"] == "eager" and fsdp["gradient_checkpointing"] is True


def test_script_in_ms_swift_example_style():
    text = swift.render_script(variant("eval_zero3"), "4.6")
    lines = text.splitlines()
    assert lines[0].startswith("# 4*") and "GB" in lines[0] or "iB" in lines[0]
    start = lines.index("swift sft \\")
    env_lines = [ln for ln in lines[:start] if not ln.startswith("#")]
    assert env_lines and all("=" in ln and ln.endswith(" \\") for ln in env_lines)
    flags = lines[start + 1:-1]
    assert all(ln.startswith("    --") for ln in flags)
    assert all(ln.endswith(" \\") for ln in flags) and lines[-1] == '    "$@"'  # extra flags need no edit
    assert "placeholder" in text and "--dataset YOUR_DATASET" in text
    # The flags are the YAML's arguments.
    tokens = shlex.split(" ".join(ln.rstrip("\\") for ln in flags))
    keys = [t[2:] for t in tokens if t.startswith("--")]
    assert keys == [k for k in emitted("eval_zero3", "4.6") if k != "ENV"]


def test_dataset_is_written_when_given():
    text = swift.render_script(variant("base"), "4.6", dataset="data/train.jsonl")
    assert "--dataset data/train.jsonl" in text and "YOUR_DATASET" not in text


@pytest.mark.parametrize("requested,expected", [("4.6.0", "4.6"), ("3.12.3", "3.12"), ("4", "4.0")])
def test_version_resolution(requested, expected):
    assert swift.resolve_version(requested) == expected


def test_too_old_version_is_refused():
    from autotune.errors import UsageError

    with pytest.raises(UsageError, match="--swift-version"):
        swift.resolve_version("3.9")


def test_a_version_past_the_checked_argument_lists_is_refused():
    """A file for ms-swift 5.0 would be checked against 4.6's arguments and headed "5.0"."""
    from autotune.errors import UsageError

    with pytest.raises(UsageError, match=r"^--swift-version: ms-swift 5\.0 is newer .*pass --swift-version 4\.6"):
        swift.resolve_version("5.0")


def test_read_back_into_settings(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(swift.render_yaml(variant("eval_zero3"), "4.6"))
    settings, model = swift_read.settings_from_args(swift_read.read_args(path))
    s = variant("eval_zero3").settings
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "per_device_eval_batch_size",
                "eval_accumulation_steps", "gradient_checkpointing", "attn_implementation", "max_pixels", "strategy"):
        assert settings[key] == getattr(s, key), key
    assert model["train_type"] == "lora"


def test_a_familys_own_frames_variable_replaces_qwen_vls(tmp_path):
    """An InternVL recipe carries ms-swift's VIDEO_SEGMENTS in its env (model/multimodal.py):
    the launch file writes that and not Qwen-VL's FPS_MAX_FRAMES, and reads it back as the frames."""
    r = variant("base")
    internvl = dataclasses.replace(r, settings=dataclasses.replace(r.settings, video_frames=7, env={"VIDEO_SEGMENTS": "7"}))
    text = swift.render_script(internvl, "4.6")
    assert "VIDEO_SEGMENTS=7 \\" in text and "FPS_MAX_FRAMES" not in text
    assert "FPS_MAX_FRAMES=16 \\" in swift.render_script(variant("eval_zero3"), "4.6")  # no family env: Qwen-VL's names
    path = tmp_path / "s.yaml"
    path.write_text(swift.render_yaml(internvl, "4.6"))
    assert swift_read.settings_from_args(swift_read.read_args(path))[0]["video_frames"] == 7


@pytest.mark.parametrize("args,expected", [
    ({"torch_dtype": "float32"}, "fp16"),  # ms-swift turns fp16 on for float32 weights when the file is silent
    ({"torch_dtype": "float32", "fp16": False, "bf16": False}, "no"),  # what emit writes for a float32 probe
    ({"torch_dtype": "bfloat16"}, "bf16"),
    ({"torch_dtype": "bfloat16", "bf16": "false"}, "no"),
    ({"torch_dtype": "float16"}, "fp16"),
    ({}, None),  # the model's own dtype decides; the recipe's stands
])
def test_mixed_precision_read_back_follows_ms_swift(args, expected):
    assert swift_read.settings_from_args(args)[0].get("mixed_precision") == expected


def test_mixed_precision_is_written_as_probed():
    for dtype, precision in (("bfloat16", "bf16"), ("float32", "no")):
        recipe = variant("eval_zero3")
        recipe = dataclasses.replace(recipe, settings=dataclasses.replace(recipe.settings, torch_dtype=dtype, mixed_precision=None))
        args = yaml.safe_load(swift.render_yaml(recipe, "4.6"))
        assert (args["bf16"], args["fp16"]) == (precision == "bf16", False)
        assert swift_read.settings_from_args(args)[0]["mixed_precision"] == precision
    with pytest.raises(UsageError, match="bf16 and fp16 are both on"):
        swift_read.settings_from_args({"bf16": True, "fp16": True})


# ---------------------------------------------------------------- the real ms-swift, where installed


def _installed_major():
    version = swift.installed_version()
    return version and version.split(".")[0]


@pytest.mark.parametrize("name", VARIANTS)
def test_real_ms_swift_parses_the_file(name, tmp_path):
    """ms-swift's own YAML loader (swift.cli.main.parse_yaml_args) turns the file into argv, and
    its own HfArgumentParser over the real SftArguments/TrainArguments converts every value."""
    pytest.importorskip("swift")
    version = swift.resolve_version(None)
    if name == "fsdp" and version.startswith("3."):
        pytest.skip("refused: ms-swift 3.12 ships no fsdp2 preset (tests/test_emit_quant_fsdp.py)")
    path = tmp_path / "args.yaml"
    path.write_text(swift.render_yaml(variant(name), version))
    assert_real_swift_accepts(path, "sft", _installed_major())


def test_script_passes_extra_flags_and_runs_with_bash(tmp_path):
    """`bash FILE.sh --num_train_epochs 3` hands the flag to swift sft (a stub here)."""
    import os
    import subprocess

    script = tmp_path / "train.sh"
    script.write_text(swift.render_script(variant("base"), "4.6"))
    (tmp_path / "bin").mkdir()
    stub = tmp_path / "bin" / "swift"
    stub.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(script), "--num_train_epochs", "3"], capture_output=True, text=True, env=env, timeout=30)
    args = done.stdout.splitlines()
    assert done.returncode == 0 and args[0] == "sft" and args[-2:] == ["--num_train_epochs", "3"]


def test_relative_model_path_is_written_absolute(tmp_path, monkeypatch):
    import dataclasses
    import os

    r = variant("base")
    r = dataclasses.replace(r, model=dataclasses.replace(r.model, source="config", path="models/qwen/config.json"))
    monkeypatch.chdir(tmp_path)
    args = yaml.safe_load(swift.render_yaml(r, "4.6"))
    assert args["model"] == os.path.join(str(tmp_path), "models/qwen")
    assert "model_type" in swift.render_yaml(r, "4.6")  # the comment on how to set it


@pytest.mark.parametrize("method,device,capacity,says,never", [
    ("planned", "plan", 80 * 10**9, "predicted", "measured"),
    ("validation-run", "sim", 64 * 2**20, "simulated", "86GB"),
    ("validation-run", "cuda", 85_520_809_984, "measured", "86GB"),  # an H100 80GB: 79.6 GiB
])
def test_memory_comment_is_honest_and_in_gib(method, device, capacity, says, never):
    import dataclasses

    r = variant("base")
    r = dataclasses.replace(r, hardware=dataclasses.replace(r.hardware, device=device, capacity_bytes=capacity),
                            validation=dataclasses.replace(r.validation, method=method))
    line = swift.render_script(r, "4.6").splitlines()[0]
    assert says in line and never not in line
    if device == "cuda":
        assert line.startswith("# 1*80GiB")
