"""--lora-target-modules (module names or all-linear, ms-swift's --target_modules) and
--lora-target-regex (ms-swift's --target_regex): a probe adapts exactly the modules named, the
targets reach every launch file in that file's own form, come back through `check --swift-args`
and the re-probe command, and targets that match nothing are one line, exit 2, before the load."""

import pytest

from autotune.cli import main
from autotune.recipe.lora import from_record, parse_names
from autotune.recipe.schema import load_recipe

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
