"""--lora-target-modules (module names or all-linear, ms-swift's --target_modules) and
--lora-target-regex (ms-swift's --target_regex): a probe adapts exactly the modules named, the
targets reach every launch file in that file's own form, come back through `check --swift-args`
and the re-probe command, and targets that match nothing are one line, exit 2, before the load."""
import dataclasses
import json
import shlex

import pytest
import yaml

from autotune.cli import build_parser, main
from autotune.errors import UsageError
from autotune.recipe.lora import from_record, parse_names
from autotune.recipe.schema import load_recipe, save_recipe

MiB = 2**20
PROBE = ["probe", "--model-config", "tiny-qwen2", "--device", "sim", "--gpu-memory", "32MiB", "--max-length", "64",
         "--train-type", "lora", "--attn", "sdpa", "--gradient-checkpointing", "off", "--no-eval", "--validate-steps", "3"]
NAMES = ("q_proj", "v_proj")
REGEX = r".*layers\.0\..*(q_proj|v_proj)"  # layer 0's only


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """The review's probe (names, --emit swift): the recipe's path and the ms-swift file beside it."""
    where = tmp_path_factory.mktemp("lora")
    out = where / "lo.yaml"
    assert main(PROBE + ["--lora-target-modules", "q_proj,v_proj", "--out", str(out), "--emit", "swift"]) == 0
    return out, where / "lo.swift.yaml"


def adapted(model) -> set[str]:
    """The modules peft's LoRA wrapped, by their names in the base model."""
    from peft.tuners.lora import LoraLayer

    return {n.removeprefix("base_model.model.") for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def expected(layers, names=NAMES) -> set[str]:
    return {f"model.layers.{i}.self_attn.{n}" for i in layers for n in names}


def tiny_qwen2():
    from autotune.model.source import resolve
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(resolve(None, "tiny-qwen2").config)


def test_names_parse_as_ms_swift_users_write_them():
    assert parse_names("q_proj,v_proj") == parse_names("q_proj v_proj") == parse_names(["q_proj", "v_proj"]) == NAMES
    assert parse_names("self_attn.q_proj, v_proj") == ("self_attn.q_proj", "v_proj")
    assert from_record({"target_modules": "all-linear"}) == (("all-linear",), None)
    assert from_record({"target_modules": ["q_proj"]}) == (("q_proj",), None)
    assert from_record({"target_regex": REGEX}) == (("all-linear",), REGEX)
    assert from_record({"target_modules": REGEX}) == (("all-linear",), REGEX)  # an older recipe: peft read a string as a regex


def test_a_probe_with_names_adapts_exactly_those_modules(probed, make_workload):
    recipe = load_recipe(probed[0])
    assert recipe.validation.passed and recipe.search.frontier["train"] >= 1
    assert recipe.model.lora["target_modules"] == list(NAMES) and "target_regex" not in recipe.model.lora
    workload = make_workload("tiny-qwen2", 32 * MiB, max_length=64, train_type="lora", lora_target_modules=NAMES)
    layers = range(workload.source.config.num_hidden_layers)
    assert adapted(workload.model) == expected(layers)
    base = dict(workload.model.base_model.model.named_modules())
    closed_form = sum(8 * (base[n].in_features + base[n].out_features) for n in expected(layers))  # r x (in + out)
    assert recipe.model.trainable_parameters == workload.trainable_params == closed_form


def test_a_regex_adapts_what_it_full_matches(make_workload):
    workload = make_workload("tiny-qwen2", 32 * MiB, max_length=64, train_type="lora", lora_target_regex=REGEX)
    assert adapted(workload.model) == expected([0])


def test_names_on_a_vision_language_model_go_to_peft_as_they_are(make_workload):
    """As ms-swift's get_target_modules: only all-linear follows the freezing; a name adapts
    wherever it matches (qkv is the frozen vision tower's)."""
    def wrapped(names):
        workload = make_workload("tiny-qwen2-vl", 1 << 30, max_length=32, max_pixels=3136, train_type="lora", lora_target_modules=names)
        return adapted(workload.model)

    assert {n.rsplit(".", 1)[-1] for n in wrapped(("q_proj",))} == {"q_proj"}
    assert all(".language_model." in n for n in wrapped(("q_proj",)))
    assert any(".visual.blocks." in n for n in wrapped(("qkv", "q_proj")))


def test_names_round_trip_through_the_ms_swift_file(probed, capsys):
    """The file autotune wrote checks as it was probed (before: `train oom`, the check read
    all-linear whatever the file said); the file's own targets are what the check runs."""
    from autotune.emit.swift import field_list

    recipe_path, swift_path = probed
    args = yaml.safe_load(swift_path.read_text())
    assert args["target_modules"] == list(NAMES) and "target_regex" not in args
    assert {"target_modules", "lora_rank", "lora_dropout"} <= set(field_list("4.6"))
    assert main(["check", str(recipe_path), "--swift-args", str(swift_path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "fits"
    every = swift_path.with_name("all.swift.yaml")
    every.write_text(yaml.safe_dump({**args, "target_modules": ["all-linear"]}))  # every linear layer: more than probed
    assert main(["check", str(recipe_path), "--swift-args", str(every), "--format", "json"]) == 3
    assert json.loads(capsys.readouterr().out)["trials"][0]["outcome"] == "oom"


def test_the_ms_swift_files_targets_read_back(probed, tmp_path, capsys):
    from autotune.emit.swift_read import settings_from_args

    assert settings_from_args({"lora_rank": 8})[1]["lora"]["target_modules"] == "all-linear"  # ms-swift's default
    back = settings_from_args({"lora_rank": 8, "target_modules": list(NAMES), "target_regex": REGEX})[1]["lora"]
    assert back["target_regex"] == REGEX and "target_modules" not in back  # ms-swift: target_regex wins
    for items, needle in ((["q_proj,v_proj"], "one module name to ms-swift"), (["all-embedding"], "all-embedding")):
        with pytest.raises(UsageError, match=needle):
            settings_from_args({"lora_rank": 8, "target_modules": items})
    args = yaml.safe_load(probed[1].read_text())
    wrong = tmp_path / "wrong.swift.yaml"
    wrong.write_text(yaml.safe_dump({**args, "target_modules": ["q_proj", "nothere"]}))
    assert main(["check", str(probed[0]), "--swift-args", str(wrong)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["autotune: error: --swift-args: 'nothere' matches no module of Qwen2ForCausalLM; its layers LoRA can wrap are "
                   "named down_proj, embed_tokens, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj (or give all-linear)"]


def with_targets(recipe, **targets):
    lora = {k: v for k, v in recipe.model.lora.items() if k not in ("target_modules", "target_regex")} | targets
    return dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, lora=lora))


@pytest.mark.parametrize("targets,adapts", [({"target_modules": list(NAMES)}, expected(range(2))),
                                            ({"target_regex": REGEX}, expected([0]))])
def test_hf_and_trl_sidecars_are_the_lora_config_peft_takes(probed, targets, adapts):
    """LoraConfig(**sidecar['lora']) on the model adapts what the probe did: names as a list, a regex as peft's string."""
    from peft import LoraConfig, get_peft_model

    from autotune.emit import hf, trl
    from rlhf_recipes import base

    side = json.loads(hf.render_model(with_targets(load_recipe(probed[0]), **targets)))["lora"]
    assert side["target_modules"] == next(iter(targets.values()))
    assert adapted(get_peft_model(tiny_qwen2(), LoraConfig(**side))) == adapts
    assert trl.model_settings(with_targets(base(), **targets))["lora"]["target_modules"] == side["target_modules"]


def test_llamafactory_and_swift_files_carry_the_targets(probed):
    from autotune.emit import llamafactory, swift

    recipe = load_recipe(probed[0])
    assert llamafactory.flat(recipe)["lora_target"] == "q_proj,v_proj"
    assert llamafactory.flat(with_targets(recipe, target_modules="all-linear"))["lora_target"] == "all"
    regex = with_targets(recipe, target_regex=REGEX)
    args = swift.swift_args(regex, "4.6")
    assert args["target_regex"] == REGEX and "target_modules" not in args  # an item of target_modules is a module name
    assert "target_regex" in swift.field_list("4.6") and "target_regex" in swift.field_list("3.12")
    with pytest.raises(UsageError, match="LLaMA-Factory's lora_target takes module names or all"):
        llamafactory.flat(regex)


BAD = [
    (["--lora-target-modules", "nothere"], "--lora-target-modules: 'nothere' matches no module of Qwen2ForCausalLM; its layers "
     "LoRA can wrap are named down_proj, embed_tokens, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"),
    (["--lora-target-modules", "q_proj,nothere"], "'nothere' matches no module"),
    (["--lora-target-modules", "self_attn"], "'self_attn' matches model.layers.0.self_attn (Qwen2Attention), which LoRA cannot "
     "wrap; name the layers in it instead: k_proj, o_proj, q_proj, v_proj"),
    (["--lora-target-modules", ".*q_proj"], "is not a module name (letters, digits, _ and dots); give a regex with --lora-target-regex"),
    (["--lora-target-modules", "all-linear,q_proj"], "all-linear already takes every linear layer"),
    (["--lora-target-modules", "all-embedding"], "ms-swift's all-embedding is not taken here"),
    (["--lora-target-regex", ".*nothere"], "--lora-target-regex: the regex '.*nothere' matches no module"),
    (["--lora-target-regex", "(q_proj"], "is not a valid regular expression"),
    (["--lora-target-regex", REGEX, "--lora-target-modules", "q_proj"], "and --lora-target-modules both choose the LoRA targets"),
]


@pytest.mark.parametrize("flags,needle", BAD)
def test_targets_peft_would_not_adapt_are_one_line_exit_2_before_the_load(tmp_path, capsys, flags, needle):
    out = tmp_path / "r.yaml"
    assert main(PROBE + flags + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autotune: error:") and needle in err[0]  # no "· loading" line before it
    assert not out.exists()


def test_a_plan_refuses_them_too(capsys):
    argv = ["plan", "--model-config", "tiny-qwen2", "--max-length", "64", "--gpu-memory", "32MiB", "--train-type", "lora",
            "--lora-target-modules", "nothere", "--quiet"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("autotune: error: --lora-target-modules: 'nothere' matches no module")


@pytest.mark.parametrize("targets,flag,value", [({"target_modules": list(NAMES)}, "lora_target_modules", "q_proj,v_proj"),
                                                ({"target_regex": REGEX}, "lora_target_regex", REGEX)])
def test_the_reprobe_command_carries_the_targets_and_dropout(probed, tmp_path, targets, flag, value):
    from autotune.check import reprobe_command
    from autotune.cli.probe import spec_from_args

    recipe = with_targets(load_recipe(probed[0]), **targets)
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, lora={**recipe.model.lora, "dropout": 0.1}))
    args = build_parser().parse_args(shlex.split(reprobe_command(recipe))[3:])
    assert getattr(args, flag) == value and args.lora_dropout == 0.1
    spec = spec_from_args(args)
    assert (spec.lora_target_modules, spec.lora_target_regex) == from_record(recipe.model.lora)
    save_recipe(recipe, tmp_path / "r.yaml")
    assert load_recipe(tmp_path / "r.yaml").model.lora == recipe.model.lora  # the form survives the file


VL_PLAN = ["plan", "--model-config", "tiny-qwen2-vl", "--max-length", "96", "--max-pixels", "12544", "--attn", "sdpa",
           "--gradient-checkpointing", "off", "--gpu-memory", "24MiB", "--cuda-context", "0", "--workspaces", "0",
           "--train-type", "lora", "--quiet"]


@pytest.fixture(scope="module")
def vl_plan(tmp_path_factory):
    """A LoRA (all-linear) plan's recipe for tiny-qwen2-vl, the vision tower and aligner frozen (ms-swift's defaults)."""
    out = tmp_path_factory.mktemp("vl") / "plan.yaml"
    assert main(VL_PLAN + ["--out", str(out)]) == 0
    return load_recipe(out)


def tiny_vl(name: str):
    from autotune.model.source import model_class, resolve

    config = resolve(None, name).config
    return model_class(config)._from_config(config)


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def peft_adapts(recipe, name: str):
    """emit hf's and emit trl's sidecars' LoraConfig on the model built afresh: (adapted modules, trainable count)."""
    from peft import LoraConfig, get_peft_model

    from autotune.emit import hf, trl
    from rlhf_recipes import base

    side = hf.model_settings(recipe)
    rl = dataclasses.replace(base(), model=recipe.model, multimodal=recipe.multimodal, settings=recipe.settings)
    rl = dataclasses.replace(rl, settings=dataclasses.replace(rl.settings, rlhf_type="grpo", num_generations=2, max_completion_length=48))
    trl_side = trl.model_settings(rl)
    assert trl_side["lora"]["target_modules"] == side["lora"]["target_modules"] and trl_side["lora_targets"] == side["lora_targets"]
    model = get_peft_model(tiny_vl(name), LoraConfig(**side["lora"]))
    return side, adapted(model), trainable(model)


def test_a_vision_language_plan_gives_peft_the_modules_the_probe_adapts(vl_plan, make_workload):
    """all-linear on a vision-language model: the probe adapts the language model's linears
    (vision tower and aligner frozen); peft's own all-linear would take the tower's too, so the
    planned recipe keeps them as one regex and emit hf / trl write it as target_modules."""
    recipe = vl_plan
    regex = recipe.model.lora["peft_target_regex"]
    assert recipe.model.lora["target_modules"] == "all-linear" and r"\d+" in regex and len(regex) < 200
    workload = make_workload("tiny-qwen2-vl", 1 << 30, max_length=96, max_pixels=12544, train_type="lora")
    probed = adapted(workload.model)
    assert probed and all(".language_model." in n for n in probed)
    side, adapts, count = peft_adapts(recipe, "tiny-qwen2-vl")
    assert side["lora"]["target_modules"] == regex and "unfrozen parts' linear layers" in side["lora_targets"]
    assert adapts == probed and count == workload.trainable_params == recipe.model.trainable_parameters
    from peft import LoraConfig, get_peft_model

    from autotune.emit.swift import swift_args

    everything = adapted(get_peft_model(tiny_vl("tiny-qwen2-vl"), LoraConfig(target_modules="all-linear")))
    assert any(".visual." in n for n in everything - probed)  # what peft's all-linear would have added
    args = swift_args(recipe, "4.6")
    assert args["target_modules"] == ["all-linear"] and "target_regex" not in args  # ms-swift picks them itself


@pytest.mark.parametrize("name,unfrozen,inside", [("tiny-qwen2.5-vl", {"freeze_vit": False}, ".visual.blocks."),
                                                   ("tiny-qwen2-vl", {"freeze_aligner": False}, ".visual.merger.")])
def test_unfrozen_vision_parts_are_in_the_regex(make_workload, name, unfrozen, inside):
    """A probe's recipe record (describe_model) with the tower or the aligner unfrozen: the regex
    takes their linears as well (the merger's two, not the GELU between them), and peft adapts
    exactly what the probe did."""
    from peft import LoraConfig, get_peft_model

    from autotune.describe import describe_model
    from autotune.recipe.lora import peft_target_of

    workload = make_workload(name, 1 << 30, max_length=32, max_pixels=3136, train_type="lora", **unfrozen)
    probed, info = adapted(workload.model), describe_model(workload)
    assert any(inside in n for n in probed) and any(".language_model." in n for n in probed)
    model = get_peft_model(tiny_vl(name), LoraConfig(target_modules=peft_target_of(info.lora)))
    assert adapted(model) == probed and trainable(model) == workload.trainable_params


def test_a_plan_without_the_adapters_records_the_same_regex(vl_plan):
    """Where a plan leaves the adapters out of its full-depth model (shallow copies count them),
    the regex comes from that model all the same."""
    from autotune.model.source import resolve
    from autotune.devices.fake import FakeDevice
    from autotune.plan.measure import build_plan_workload
    from autotune.spec import ProbeSpec

    spec = ProbeSpec(model_config="tiny-qwen2-vl", max_length=96, max_pixels=12544, train_type="lora", device="sim", gpu_memory=1 << 30)
    workload = build_plan_workload(resolve(None, "tiny-qwen2-vl"), spec, FakeDevice(1 << 30), fake=False, adapters=False)
    assert workload.adapters_left_out and workload.setup.peft_target_regex == vl_plan.model.lora["peft_target_regex"]


def test_an_older_vision_language_recipe_says_peft_adapts_the_frozen_tower(vl_plan):
    from autotune.emit import hf

    old = dataclasses.replace(vl_plan, model=dataclasses.replace(
        vl_plan.model, lora={k: v for k, v in vl_plan.model.lora.items() if k != "peft_target_regex"}))  # from before the key
    side = hf.model_settings(old)
    assert side["lora"]["target_modules"] == "all-linear" and "frozen vision tower and aligner" in side["lora_targets"]
    assert "re-probe" in side["lora_targets"]
    unfrozen = dataclasses.replace(old, settings=dataclasses.replace(old.settings, freeze_vit=False, freeze_aligner=False))
    assert "lora_targets" not in hf.model_settings(unfrozen)  # nothing frozen: peft's all-linear is the probe's
    assert "lora_targets" not in hf.model_settings(with_targets(old, target_modules=["q_proj"]))  # names: peft's as ms-swift's
