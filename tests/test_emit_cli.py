"""`autotune emit` end to end, and `recipe.apply(TrainingArguments)`."""

import dataclasses
import os
import stat
import warnings

import pytest
import yaml

from autotune.cli import main
from autotune.recipe.schema import load_recipe, save_recipe
from launch_recipes import variant


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    save_recipe(variant("base"), path)
    return path


@pytest.mark.parametrize("target,out", [("swift", "s.yaml"), ("swift", "train.sh"), ("hf", "args.json"),
                                        ("deepspeed", "ds.json"), ("accelerate", "acc.yaml"), ("llamafactory", "lf.yaml")])
def test_emit_writes_and_refuses_to_overwrite(recipe_file, tmp_path, capsys, target, out):
    path = tmp_path / out
    assert main(["emit", target, str(recipe_file), "-o", str(path), "--swift-version", "4.6"] if target == "swift"
                else ["emit", target, str(recipe_file), "-o", str(path)]) == 0
    text = path.read_text()
    assert text.strip()
    if out.endswith(".sh"):
        assert "swift sft \\" in text and path.stat().st_mode & 0o100
    if target == "hf":
        assert (tmp_path / "args.model.json").exists()
    path.write_text("mine")
    assert main(["emit", target, str(recipe_file), "-o", str(path)]) == 2
    assert path.read_text() == "mine" and "--force" in capsys.readouterr().err
    assert main(["emit", target, str(recipe_file), "-o", str(path), "--force"]) == 0 and path.read_text() != "mine"


@pytest.mark.parametrize("method,passed", [("planned", False), ("validation-run", False)])
def test_unvalidated_recipes_are_refused(tmp_path, capsys, method, passed):
    r = variant("base")
    r = dataclasses.replace(r, validation=dataclasses.replace(r.validation, method=method, passed=passed))
    recipe = tmp_path / "r.yaml"
    save_recipe(r, recipe)
    out = tmp_path / "s.yaml"
    assert main(["emit", "swift", str(recipe), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--allow-unvalidated" in err and not out.exists()
    assert main(["emit", "swift", str(recipe), "-o", str(out), "--allow-unvalidated"]) == 0 and out.exists()


def test_bad_recipe_and_flags(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema: [")
    assert main(["emit", "hf", str(bad), "-o", str(tmp_path / "a.json")]) == 2
    assert main(["emit", "hf", str(tmp_path / "none.yaml"), "-o", str(tmp_path / "a.json")]) == 2
    good = tmp_path / "r.yaml"
    save_recipe(variant("base"), good)
    assert main(["emit", "swift", str(good), "-o", str(tmp_path / "s.yaml"), "--swift-version", "2.6"]) == 2
    assert main(["emit", "hf", str(good), "-o", str(tmp_path / "a.json"), "--swift-version", "4.6"]) == 2
    # A flag the target has no use for was dropped without a word (--script, --dataset for hf).
    assert main(["emit", "hf", str(good), "-o", str(tmp_path / "a.json"), "--script"]) == 2
    assert main(["emit", "deepspeed", str(good), "-o", str(tmp_path / "a.json"), "--dataset", "data.jsonl"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 6 and all(line.startswith("autotune: error:") for line in lines)
    assert lines[4].startswith("autotune: error: --script:") and lines[5].startswith("autotune: error: --dataset:")
    assert not list(tmp_path.glob("a*.json")) and not (tmp_path / "s.yaml").exists()



def test_out_under_a_file_is_bad_input(recipe_file, tmp_path, capsys):
    """-o recipe.yaml/x.json: one line and exit 2, not an unexpected FileExistsError (exit 1)."""
    assert main(["emit", "hf", str(recipe_file), "-o", str(recipe_file / "x.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autotune: error: --out:") and "not a directory" in err[0]
    assert recipe_file.is_file()


def test_report_of_a_plan_says_planned_not_failed(tmp_path, capsys):
    """A plan's validation is neither passed nor failed: `report plan.yaml` printed
    'validation  failed (planned, 0 train steps) ... headroom 1.56 GiB (None%)'."""
    r = variant("base")
    plan = dataclasses.replace(r, validation=dataclasses.replace(r.validation, method="planned", passed=False, steps=0,
                                                                 headroom_pct=None, message="planned under fake tensors"))
    path = tmp_path / "plan.yaml"
    save_recipe(plan, path)
    assert main(["report", str(path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "validation none (planned): predicted peak" in out and "planned under fake tensors" in out
    assert "failed" not in out and "None%" not in out

def test_apply_round_trips(tmp_path):
    from transformers import TrainingArguments

    r = variant("eval_zero3")
    r = dataclasses.replace(r, settings=dataclasses.replace(r.settings, gradient_checkpointing=True, strategy=None))
    path = tmp_path / "r.yaml"
    save_recipe(r, path)
    import autotune

    recipe = autotune.load_recipe(path)
    user = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=64, learning_rate=3e-5, report_to=[], use_cpu=True)
    with pytest.warns(UserWarning, match="per_device_train_batch_size=64"):
        tuned = recipe.apply(user)
    assert user.per_device_train_batch_size == 64  # a copy: the user's object is untouched
    s = recipe.settings
    assert tuned.per_device_train_batch_size == s.per_device_train_batch_size
    assert tuned.gradient_accumulation_steps == s.gradient_accumulation_steps
    assert tuned.per_device_eval_batch_size == 2 and tuned.eval_accumulation_steps == 4
    assert tuned.prediction_loss_only is False and tuned.learning_rate == 3e-5
    assert tuned.gradient_checkpointing is True
    # Applying again changes nothing and warns about nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        again = recipe.apply(tuned)
    assert again.to_dict() == tuned.to_dict()


def test_probe_emit_swift_writes_beside_the_recipe(tmp_path, capsys):
    out = tmp_path / "r.yaml"
    argv = ["probe", "--model-config", "tiny-gpt2", "--device", "sim", "--gpu-memory", "8MiB", "--max-length", "32",
            "--max-batch-size", "4", "--out", str(out), "--emit", "swift", "--quiet", "--swift-version", "4.6",
            "--plot", str(tmp_path / "p.png"),
            # one candidate, no eval phase: what is tested is what gets written and said (the whole
            # search space through the CLI: test_space.test_probe_searches_the_space_and_validates)
            "--attn", "sdpa", "--gradient-checkpointing", "off", "--no-eval", "--validate-steps", "3"]
    assert main(argv) == 0
    # every file written, then what to run next
    printed = capsys.readouterr().out
    tail = printed[printed.index("wrote"):]
    for name in ("r.yaml", "r.swift.yaml", "r.swift.sh", "p.png"):
        assert str(tmp_path / name) in tail and (tmp_path / name).exists()
    assert f"swift sft {tmp_path / 'r.swift.yaml'}" in tail and f"bash {tmp_path / 'r.swift.sh'}" in tail
    assert f"python -m autotune check {out}" in tail
    assert load_recipe(out).validation.passed
    assert load_recipe(out).settings.use_cache_off_in_sub_configs is True  # the trials ran ms-swift's KV cache switches
    data = yaml.safe_load((tmp_path / "r.swift.yaml").read_text())
    assert data["per_device_train_batch_size"] == load_recipe(out).settings.per_device_train_batch_size
    assert (tmp_path / "r.swift.sh").read_text().count("swift sft \\") == 1


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_written_files_get_the_usual_mode_not_owner_only(recipe_file, tmp_path, umask_027):
    """mkstemp makes 0600 files; recipes, launch files and plots must be 0666 & ~umask (scripts 0777 & ~umask)."""
    recipe = tmp_path / "again.yaml"
    save_recipe(load_recipe(recipe_file), recipe)
    assert stat.S_IMODE(recipe.stat().st_mode) == 0o640
    assert main(["emit", "swift", str(recipe_file), "-o", str(tmp_path / "s.yaml"), "--swift-version", "4.6"]) == 0
    assert main(["emit", "swift", str(recipe_file), "-o", str(tmp_path / "t.sh"), "--swift-version", "4.6"]) == 0
    assert main(["report", str(recipe_file), "--plot", str(tmp_path / "p.png")]) == 0
    assert stat.S_IMODE((tmp_path / "s.yaml").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "p.png").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "t.sh").stat().st_mode) == 0o750
    os.umask(0o002)
    assert main(["emit", "hf", str(recipe_file), "-o", str(tmp_path / "a.json")]) == 0
    assert {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.glob("a*.json")} == {0o664}


@pytest.mark.parametrize("target,out", [("llamafactory", "lf.yaml"), ("accelerate", "acc.yaml")])
def test_a_zero_recipe_s_deepspeed_config_is_written_beside_the_file_that_names_it(tmp_path, capsys, target, out):
    """LLaMA-Factory's YAML named `deepspeed: ds_config.json` and wrote no such file, so
    llamafactory-cli failed on a missing file; like accelerate's, it now writes its own beside."""
    import json

    import yaml

    recipe = tmp_path / "r.yaml"
    save_recipe(variant("eval_zero3"), recipe)
    path = tmp_path / out
    assert main(["emit", target, str(recipe), "-o", str(path)]) == 0
    data = yaml.safe_load(path.read_text())
    named = data["deepspeed"] if target == "llamafactory" else data["deepspeed_config"]["deepspeed_config_file"]
    assert named == str(tmp_path / (path.stem + ".deepspeed.json"))
    assert json.loads(open(named).read())["zero_optimization"]["stage"] == 3
    assert f"wrote {named}" in capsys.readouterr().err


@pytest.mark.parametrize("target,out,version", [("swift", "args", "4.6"), ("swift", "args.json", "4.6"), ("swift", "args.txt", "3.12"),
                                                ("accelerate", "acc.json", None), ("llamafactory", "lf", None),
                                                ("llamafactory", "lf.json", None)])
def test_a_file_name_the_framework_would_not_read_as_yaml_is_refused(recipe_file, tmp_path, capsys, target, out, version):
    """ms-swift 4.x's `swift sft FILE` reads FILE as arguments only when it ends in .yaml/.yml
    (.json: as JSON), LLaMA-Factory's `llamafactory-cli train FILE` likewise, and accelerate
    reads a .json config as JSON: a YAML under any other name was written, and its `next:` line
    failed. (ms-swift 3.x's `--config` reads any name with OmegaConf, so 3.12 takes `args.txt`.)"""
    path = tmp_path / out
    argv = ["emit", target, str(recipe_file), "-o", str(path)] + (["--swift-version", version] if version else [])
    code = main(argv)
    err = capsys.readouterr().err
    if version == "3.12":
        assert code == 0 and path.exists() and "--config" in err
        return
    assert code == 2 and not path.exists() and list(tmp_path.iterdir()) == [recipe_file]
    assert err.count("\n") == 1 and "-o" in err and ".yaml" in err
