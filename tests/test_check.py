"""`autotune check`: exit 0 when the recipe fits, 3 when the budget is shrunk, 4 on a changed
fingerprint, 2 on bad input."""

import dataclasses
import json

import pytest

from autotune.check import check, compare_fingerprints, phases
from autotune.errors import UsageError
from autotune.cli import main
from autotune.emit import hf, swift
from autotune.recipe.schema import save_recipe
from launch_recipes import variant


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    save_recipe(variant("base"), path)
    return path


def test_fits_exit_0_and_json(recipe_file, capsys):
    assert main(["check", str(recipe_file), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    r = variant("base")
    assert data["status"] == "fits" and data["exit_code"] == 0 and data["differences"] == []
    assert [t["phase"] for t in data["trials"]] == ["train"]
    assert data["trials"][0]["settings"]["per_device_train_batch_size"] == r.settings.per_device_train_batch_size
    assert 0 < data["peak_bytes"] <= data["budget_bytes"]


def test_shrunk_budget_exit_3_with_peak_and_shortfall(recipe_file, capsys):
    """A larger margin shrinks the budget below the recipe's peak without changing the fingerprint."""
    r = variant("base")
    margin = 1 - 0.8 * r.validation.peak_bytes / r.hardware.capacity_bytes  # budget = 80% of the measured peak
    assert main(["check", str(recipe_file), "--margin", f"{margin:.4f}"]) == 3
    out = capsys.readouterr().out
    assert "does not fit" in out and "over" in out and "peak" in out


def test_eval_phase_runs_when_the_recipe_has_one():
    r = variant("base")
    r = dataclasses.replace(r, settings=dataclasses.replace(r.settings, per_device_eval_batch_size=64, prediction_loss_only=False))
    assert [p for p, _ in phases(r)] == ["train", "eval"]
    result = check(r)
    # 64 samples' logits held on the device do not fit a 12 MiB card: the eval phase is what fails.
    assert result.status == "does_not_fit" and result.exit_code == 3
    assert [t.phase for t in result.trials] == ["train", "eval"]
    assert result.trials[0].fits and not result.trials[1].fits


@pytest.mark.parametrize("flags,key", [(["--gpu-memory", "8MiB"], "capacity_bytes"), (["--world-size", "2"], "world_size")])
def test_changed_fingerprint_exit_4(recipe_file, capsys, flags, key):
    assert main(["check", str(recipe_file), *flags]) == 4
    out = capsys.readouterr().out
    assert f"{key}:" in out and "python -m autotune probe" in out
    # the re-probe rebuilds the recipe at the world size here, so that check accepts it
    assert ("--nproc-per-node 2" in " ".join(out.split())) == (key == "world_size")


def test_library_versions_are_part_of_the_fingerprint():
    r = variant("base")
    other = dataclasses.replace(r.hardware, transformers="4.0.0", name="NVIDIA A100-SXM4-80GB")
    keys = {d.key for d in compare_fingerprints(other.fingerprint(), r.hardware.fingerprint())}
    assert keys == {"transformers", "name"}
    result = check(dataclasses.replace(r, hardware=other))
    assert result.exit_code == 4 and result.trials == [] and "--model-config tiny-llama" in result.reprobe_command


@pytest.mark.parametrize("text", [None, "schema: [", "schema: 1\nmodel: {}\n"])
def test_bad_recipe_exit_2(tmp_path, capsys, text):
    path = tmp_path / "r.yaml"
    if text is not None:
        path.write_text(text)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autotune: error: RECIPE")



def test_a_plan_is_refused_naming_the_recipe(tmp_path, capsys):
    """A plan (`autotune plan --out`) has hardware.device "plan": check answered '--device: unknown
    device 'plan'', a flag the user did not give."""
    r = variant("base")
    plan = dataclasses.replace(r, hardware=dataclasses.replace(r.hardware, device="plan", name="planned 64.00 MiB card"),
                               validation=dataclasses.replace(r.validation, method="planned", passed=False))
    path = tmp_path / "plan.yaml"
    save_recipe(plan, path)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autotune: error: RECIPE: this recipe is a plan") and "--from-plan" in err[0]

def test_swift_args_replace_the_recipe_settings(recipe_file, tmp_path, capsys):
    """The ms-swift file the user will launch with is what gets checked: a batch far past the
    frontier in it makes the check fail even though the recipe itself fits."""
    text = swift.render_yaml(variant("base"), "4.6").replace(
        f"per_device_train_batch_size: {variant('base').settings.per_device_train_batch_size}", "per_device_train_batch_size: 64")
    args = tmp_path / "swift.yaml"
    args.write_text(text)
    assert main(["check", str(recipe_file), "--swift-args", str(args), "--format", "json"]) == 3
    data = json.loads(capsys.readouterr().out)
    assert data["trials"][0]["settings"]["per_device_train_batch_size"] == 64 and data["trials"][0]["outcome"] == "oom"


def test_the_shell_script_emit_swift_writes_reads_back_as_its_yaml_does(tmp_path):
    """`emit swift` writes a .sh beside the .yaml (and ms-swift's examples are scripts): check
    --swift-args reads `swift sft --name value` and the variables set before it the same."""
    from autotune.cli.check import with_swift_args

    recipe = variant("base")
    script, config = tmp_path / "s.sh", tmp_path / "s.yaml"
    script.write_text("export MAX_PIXELS=1234\n" + swift.render_script(recipe, "4.6").replace("--per_device_train_batch_size "
                      f"{recipe.settings.per_device_train_batch_size}", "--per_device_train_batch_size 3"))
    config.write_text(swift.render_yaml(recipe, "4.6").replace(f"per_device_train_batch_size: {recipe.settings.per_device_train_batch_size}",
                                                               "per_device_train_batch_size: 3"))
    from_script, _ = with_swift_args(recipe, str(script), environ={})
    from_yaml, _ = with_swift_args(recipe, str(config), environ={})
    assert from_script.settings.per_device_train_batch_size == 3
    assert dataclasses.replace(from_script.settings, env={}) == dataclasses.replace(from_yaml.settings, env={})
    (tmp_path / "notes.txt").write_text("just some words\n")
    with pytest.raises(UsageError, match="a shell script that runs `swift sft`"):
        with_swift_args(recipe, str(tmp_path / "notes.txt"), environ={})


def test_a_text_models_ms_swift_file_may_carry_the_vision_flags_ms_swift_ignores(recipe_file, tmp_path, capsys, monkeypatch):
    """ms-swift defaults freeze_vit to true and scripts export MAX_PIXELS; for a text model ms-swift
    ignores both (TunerArguments._init_multimodal_full, the text template), so the check runs the
    file and says it ignored them. It refused the file ('this model is text-only')."""
    text = swift.render_yaml(variant("base"), "4.6") + "freeze_vit: true\nfreeze_aligner: true\nvit_gradient_checkpointing: true\n"
    args = tmp_path / "swift.yaml"
    args.write_text(text)
    monkeypatch.setenv("MAX_PIXELS", "1003520")
    assert main(["check", str(recipe_file), "--swift-args", str(args)]) == 0
    out = capsys.readouterr().out
    assert "note: freeze_vit, freeze_aligner, vit_gradient_checkpointing, max_pixels: ignored" in out


def test_check_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    out = capsys.readouterr().out
    for code in ("0  fits", "2  bad input", "3  does not fit", "4  fingerprint changed"):
        assert code in out


def test_a_vision_language_recipe_checks_with_its_own_media_limits(tmp_path, capsys):
    """The check rebuilds the probed worst case (pixels, images, freezing, optimizer), not the
    model's default one: Qwen2-VL's default would be 16384 image tokens, refused at 96 tokens."""
    import shlex

    from autotune.check import reprobe_command
    from autotune.cli import build_parser
    from autotune.recipe.schema import load_recipe

    out = tmp_path / "vl.yaml"
    assert main(["probe", "--model-config", "tiny-qwen2-vl", "--device", "sim", "--gpu-memory", "64MiB",
                 "--max-length", "96", "--max-pixels", "12544", "--attn", "sdpa", "--gradient-checkpointing", "off",
                 "--no-eval", "--validate-steps", "3", "--optim", "adamw_torch", "--freeze-aligner", "false",
                 "--out", str(out), "--no-journal"]) == 0
    capsys.readouterr()
    assert main(["check", str(out), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    recipe = load_recipe(out)
    assert data["status"] == "fits" and data["peak_bytes"] == recipe.validation.peak_bytes
    args = build_parser().parse_args(shlex.split(reprobe_command(recipe))[3:])
    assert (args.max_pixels, args.optim, args.images_per_sample) == (12544, "adamw_torch", 1)
    assert args.freeze_aligner is False and args.freeze_vit is True


def test_reprobe_hint_asks_for_the_levers_the_probe_was_asked_for():
    """A re-probe that forgot --gradient-checkpointing partial or --activation-offloading would
    search a smaller space than the recipe's and could find nothing that fits (issue #15)."""
    import shlex

    from autotune.check import reprobe_command
    from autotune.cli import build_parser
    base = variant("base")
    asked = {"partial_checkpointing": {"asked": "partial"}, "activation_offloading": {"asked": "search"},
             "sequence_parallel_size": {"asked": "2"}}
    recipe = dataclasses.replace(base, search=dataclasses.replace(base.search, levers={"asked": asked}))
    args = build_parser().parse_args(shlex.split(reprobe_command(recipe))[3:])
    assert (args.gradient_checkpointing, args.activation_offloading, args.sequence_parallel_size) == ("partial", "search", 2)


def test_reprobe_hint_asks_for_the_evaluation_the_recipe_was_probed_with():
    """A re-probe with the target's default eval (loss only for ms-swift, logits otherwise) would
    size another evaluation: one that keeps argmax ids, or generates, or none at all."""
    import shlex

    from autotune.check import reprobe_command
    from autotune.cli import build_parser

    base = variant("base")

    def reprobed(**settings):
        settings = {"per_device_eval_batch_size": 4, **settings}
        recipe = dataclasses.replace(base, settings=dataclasses.replace(base.settings, **settings))
        return build_parser().parse_args(shlex.split(reprobe_command(recipe))[3:])

    args = reprobed(eval_outputs="argmax", eval_accumulation_steps=3)
    assert (args.eval_outputs, args.eval_steps, args.no_eval) == ("argmax", 3, False)
    args = reprobed(eval_outputs="generate", max_new_tokens=16, eval_accumulation_steps=2)
    assert (args.eval_outputs, args.max_new_tokens, args.eval_steps) == ("generate", 16, 2)
    assert reprobed(per_device_eval_batch_size=None, eval_outputs=None).no_eval is True
    assert reprobed(task="eval", eval_outputs="logits").task == "eval"


def test_reprobe_hint_keeps_the_device_searches_everything_and_never_overwrites(recipe_file, capsys):
    """The hint is copied and run: it must probe on the device the check ran on, at its
    capacity, over the whole search space, into a new file (the user's recipe stays)."""
    import shlex

    from autotune.cli import build_parser

    r = variant("base")
    recipe_file.with_name("recipe.reprobe.yaml").write_text("taken")
    assert main(["check", str(recipe_file), "--device", "sim", "--gpu-memory", "8MiB"]) == 4
    out = capsys.readouterr().out
    hint = out.split("re-probe here:\n")[1].strip().splitlines()[0]
    argv = shlex.split(hint)[3:]
    args = build_parser().parse_args(argv)
    assert (args.device, args.gpu_memory) == ("sim", "8MiB")
    assert args.attn == build_parser().parse_args(["probe"]).attn and args.gradient_checkpointing == "search"
    assert "--force" not in argv and args.out == str(recipe_file.with_name("recipe.reprobe-2.yaml"))
    assert args.max_length == r.model.max_length and args.global_batch_size == r.search.global_batch_size


def _vision_recipe(use_cache_off_in_sub_configs):
    """The tiny recipe made a full fine-tune of tiny Qwen2-VL with ms-swift's loss-only evaluation:
    the check runs what a recipe says, so no probe is needed to say it."""
    r = variant("base")
    model = dataclasses.replace(r.model, path="tiny-qwen2-vl", max_length=96, train_type="full", lora=None)
    settings = dataclasses.replace(r.settings, per_device_train_batch_size=2, gradient_accumulation_steps=1,
                                   per_device_eval_batch_size=3, eval_outputs="loss", prediction_loss_only=True,
                                   max_length=96, max_pixels=56 * 56 * 4,
                                   use_cache_off_in_sub_configs=use_cache_off_in_sub_configs)
    return dataclasses.replace(r, model=model, settings=settings)


def test_check_runs_the_kv_cache_switches_the_recipe_was_probed_with(tmp_path):
    """A recipe probed for ms-swift is checked as ms-swift runs it (no KV cache in the language
    model's eval forwards); an older recipe, without the field, loads and is checked as before
    (the HF Trainer's: the cache is built), its eval peak higher by exactly that cache."""
    from autotune.check import spec_for
    from autotune.model.source import resolve
    from autotune.recipe.schema import load_recipe

    path = tmp_path / "old.yaml"
    save_recipe(_vision_recipe(None), path)
    path.write_text("".join(line for line in path.read_text().splitlines(True) if "use_cache_off_in_sub_configs" not in line))
    older = load_recipe(path)
    assert older.settings.use_cache_off_in_sub_configs is None
    assert spec_for(older, "sim", 2**24, 0.1).use_cache_off_in_sub_configs is False
    swift_run, hf_run = check(_vision_recipe(True)), check(older)
    assert swift_run.status == hf_run.status == "fits"
    (swift_train, swift_eval), (hf_train, hf_eval) = swift_run.trials, hf_run.trials
    text = resolve(None, "tiny-qwen2-vl").config.text_config
    head = text.hidden_size // text.num_attention_heads
    cache = text.num_hidden_layers * 2 * text.num_key_value_heads * head * 96 * 3 * 2  # bf16, eval batch 3
    assert abs((hf_eval.peak_bytes - swift_eval.peak_bytes) - cache) <= 0.02 * cache, (hf_eval.peak_bytes, swift_eval.peak_bytes, cache)
    assert swift_train.peak_bytes == hf_train.peak_bytes


def test_an_ms_swift_file_is_checked_with_ms_swifts_kv_cache_switches_and_reprobed_for_ms_swift(tmp_path):
    import shlex

    from autotune.check import reprobe_command, spec_for
    from autotune.cli import build_parser
    from autotune.cli.check import with_swift_args

    args = tmp_path / "swift.yaml"
    args.write_text(swift.render_yaml(variant("base"), "4.6"))
    assert variant("base").settings.use_cache_off_in_sub_configs is False  # probed for the HF Trainer (no --emit swift)
    recipe, _ = with_swift_args(variant("base"), str(args), environ={})
    assert recipe.settings.use_cache_off_in_sub_configs is True
    assert spec_for(recipe, "sim", 2**24, 0.1).use_cache_off_in_sub_configs is True
    assert build_parser().parse_args(shlex.split(reprobe_command(recipe))[3:]).emit == ["swift"]
    assert build_parser().parse_args(shlex.split(reprobe_command(variant("base")))[3:]).emit is None
    # The HF Trainer's sidecar tells a user of this recipe what ms-swift did that the Trainer does not.
    assert "get_text_config().use_cache = False" in hf.model_settings(recipe)["use_cache_off_in_sub_configs"]["how"]
    assert "use_cache_off_in_sub_configs" not in hf.model_settings(variant("base"))


def test_an_ms_swift_file_for_another_model_is_refused(recipe_file, tmp_path, capsys):
    """The recipe's model was checked whatever model the file trains: a file naming a local
    model of another shape is refused, naming both."""
    import shutil

    from autotune.model.source import BUILTIN_DIR

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(BUILTIN_DIR / "tiny-mistral.json", other / "config.json")
    same = tmp_path / "same"
    same.mkdir()
    shutil.copy(BUILTIN_DIR / f"{variant('base').model.path}.json", same / "config.json")
    for model, code in ((other, 2), (same, 0)):
        args = tmp_path / "swift.yaml"
        args.write_text(swift.render_yaml(variant("base"), "4.6").replace("model: ", f"model: {model}\n# was: ", 1))
        assert main(["check", str(recipe_file), "--swift-args", str(args)]) == code
        err = capsys.readouterr().err
        if code == 2:
            assert err.count("\n") == 1 and "--swift-args" in err and str(other) in err and "another model" in err


def test_an_attention_the_file_sets_that_cannot_run_here_names_the_file(recipe_file, tmp_path, capsys):
    args = tmp_path / "swift.yaml"
    text = swift.render_yaml(variant("base"), "4.6")
    args.write_text(text.replace(f"attn_impl: {swift.ATTN_IMPL.get(variant('base').settings.attn_implementation, 'sdpa')}", "attn_impl: flash_attn"))
    assert "attn_impl: flash_attn" in args.read_text()
    assert main(["check", str(recipe_file), "--swift-args", str(args)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("autotune: error: --swift-args: attn_impl flash_attn") and "--attn" not in err
