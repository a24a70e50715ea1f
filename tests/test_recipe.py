import dataclasses
from pathlib import Path

import pytest
import yaml

from autotune.errors import UsageError
from autotune.recipe.schema import (SCHEMA, Hardware, ModelInfo, Recipe, SearchRecord, Settings, TrialResult, Validation,
                             check_writable, load_recipe, save_recipe)


def sample_recipe() -> Recipe:
    trials = [TrialResult("train", {"per_device_train_batch_size": b, "gradient_checkpointing": False, "attn_implementation": "sdpa"},
                          "fit" if b < 8 else "oom", 100 * b if b < 8 else None, 0.1, 1000.0, 3, 0.5) for b in (1, 2, 7, 8)]
    return Recipe(
        schema=SCHEMA,
        model=ModelInfo("builtin", "tiny-llama", "llama", "LlamaForCausalLM", "bfloat16", "lora", 1000, 10, 256,
                        {"r": 8, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}),
        hardware=Hardware("sim", "simulated GPU", 2**30, 1, 1, "2.13.0", "5.23.0", "0.21.2"),
        settings=Settings(per_device_train_batch_size=7, gradient_accumulation_steps=2, env={"A": "1"}),
        search=SearchRecord(0.1, 2**30, int(0.9 * 2**30), 256, 3, {"train": 7}, 14, 14, True, None, trials, 2.0),
        validation=Validation(True, "search-trial", 3, 700, 100, 12.5, 1000.0),
        created="2026-11-23T00:00:00+00:00", autotune_version="0.1.0",
    )


def test_round_trip(tmp_path):
    recipe = sample_recipe()
    path = tmp_path / "r.yaml"
    save_recipe(recipe, path)
    loaded = load_recipe(path)
    assert loaded == recipe
    assert isinstance(loaded.search.trials[0], TrialResult) and loaded.search.trials[2].batch_size == 7
    top = list(yaml.safe_load(path.read_text()))
    assert top[:6] == ["schema", "model", "hardware", "settings", "search", "validation"]


def test_a_recipe_named_json_is_written_as_json(tmp_path):
    """--out recipe.json held YAML, which json.load (the reason to name it .json) could not read."""
    import json

    recipe = sample_recipe()
    path = tmp_path / "r.json"
    save_recipe(recipe, path)
    assert list(json.loads(path.read_text()))[:4] == ["schema", "model", "hardware", "settings"]
    assert load_recipe(path) == recipe


@pytest.mark.parametrize("text,needle", [
    ("schema: [", "not valid YAML"),
    ("just a string", "not an autotune recipe"),
    ("schema: 99\n", "schema 99 is not supported (this autotune reads schema 1); a newer autotune wrote it: upgrade autotune"),
    ("schema: 0\n", "schema 0 is not supported (this autotune reads schema 1); probe again"),
    ("schema: 1\nmodel: {}\n", "missing key(s) hardware, settings, search, validation; is the file cut short?"),
])
def test_malformed_recipes_name_the_problem(tmp_path, text, needle):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        load_recipe(path)
    assert needle in str(info.value)


def test_unknown_and_missing_keys(tmp_path):
    data = dataclasses.asdict(sample_recipe())
    data["settings"]["per_device_train_batchsize"] = 3
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UsageError, match="unknown key"):
        load_recipe(path)
    del data["settings"]["per_device_train_batchsize"], data["settings"]["per_device_train_batch_size"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UsageError, match="missing key"):
        load_recipe(path)


def test_missing_recipe(tmp_path):
    with pytest.raises(UsageError, match="no recipe"):
        load_recipe(tmp_path / "nope.yaml")


def test_check_writable_refuses_to_overwrite(tmp_path):
    target = tmp_path / "mine.yaml"
    target.write_text("precious")
    with pytest.raises(UsageError, match="already exists"):
        check_writable(target, force=False)
    check_writable(target, force=True)
    assert target.read_text() == "precious"
    with pytest.raises(UsageError) as info:  # `report --plot p.png` said "choose another --out"
        check_writable(target, force=False, flag="--plot")
    assert str(info.value) == f"--plot: {target} already exists; choose another --plot, or add --force to overwrite it"


def test_out_dash_is_refused_not_written_as_a_file_named_dash(tmp_path, capsys, monkeypatch):
    """`probe --out -` and `plan --out -` wrote a recipe file named '-' in the working directory."""
    from autotune.cli import main

    monkeypatch.chdir(tmp_path)
    for argv in (["probe", "--model-config", "tiny-llama", "--device", "sim", "--gpu-memory", "64MiB", "--max-length", "16", "--out", "-"],
                 ["plan", "--model-config", "tiny-llama", "--max-length", "16", "--gpu-memory", "64MiB", "--out", "-"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("autotune: error: --out: '-' (stdout)") and "--format json" in err[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("edit,key", [
    (("per_device_train_batch_size: ", "sixteen"), "settings.per_device_train_batch_size"),
    (("gradient_checkpointing: ", "'yes please'"), "settings.gradient_checkpointing"),
    (("per_device_train_batch_size: ", "true"), "settings.per_device_train_batch_size"),
    (("attn_implementation: ", "[sdpa]"), "settings.attn_implementation"),
])
def test_hand_edited_values_of_the_wrong_type_are_refused_naming_the_key(tmp_path, capsys, edit, key):
    """`check` and `emit` used to crash (exit 1), or write `sixteen` into the swift file."""
    import re

    from autotune.cli import main
    from launch_recipes import variant

    path = tmp_path / "r.yaml"
    save_recipe(variant("base"), path)
    prefix, value = edit
    path.write_text(re.sub(rf"(?m)^(\s*){re.escape(prefix)}.*$", rf"\g<1>{prefix}{value}", path.read_text(), count=1))
    for argv in (["check", str(path)], ["emit", "swift", str(path), "-o", str(tmp_path / "s.yaml")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("autotune: error: RECIPE") and key in err[0], err
    assert not (tmp_path / "s.yaml").exists()


def test_check_writable_refuses_a_path_under_a_file(tmp_path):
    """`--out recipe.yaml/x.yaml` used to pass the check and fail after the whole probe (FileExistsError)."""
    (tmp_path / "recipe.yaml").write_text("precious")
    with pytest.raises(UsageError, match="is a file, not a directory"):
        check_writable(tmp_path / "recipe.yaml" / "sub" / "x.yaml", force=True)
    assert (tmp_path / "recipe.yaml").read_text() == "precious"


def test_check_writable_tries_the_directory(tmp_path):
    """Asked of the directory itself: /proc takes no new files, even for root (os.access says yes)."""
    if not Path("/proc").is_dir():
        pytest.skip("no /proc here")
    with pytest.raises(UsageError, match="cannot write into /proc"):
        check_writable("/proc/nope/x.yaml", force=False)
    check_writable(tmp_path / "new" / "deeper" / "x.yaml", force=False)  # missing folders are made later
    assert list(tmp_path.iterdir()) == []  # the trial file is gone
