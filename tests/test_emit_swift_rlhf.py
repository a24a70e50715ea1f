"""`swift rlhf` argument files for RLHF recipes (issue #12): every key is an argument of that
version's RLHFArguments with a value its parser converts -- checked against the checked-in
field lists always, and through ms-swift's own loader and parser where `import swift` works
(run with the python of a venv that has ms-swift; see the README's ms-swift section)."""

import dataclasses
import json
import shlex

import pytest
import yaml

from autotune.emit import swift
from autotune.errors import UsageError
from rlhf_recipes import SWIFT_VARIANTS, rlhf_variant
from swift_parsing import assert_real_swift_accepts, matches

VERSIONS = ("3.12", "4.6")
RLHF_KEYS = ("rlhf_type", "beta", "num_generations", "max_completion_length", "steps_per_generation", "use_vllm", "vllm_mode",
             "vllm_gpu_memory_utilization", "vllm_max_model_len", "sleep_level", "offload_model", "offload_optimizer")


def emitted(name: str, version: str) -> dict:
    data = yaml.safe_load(swift.render_yaml(rlhf_variant(name), version))
    data.pop("ENV", None)
    return data


def test_field_lists_are_the_rlhf_classes_and_extend_sft():
    for version in VERSIONS:
        data = json.loads((swift.FIELDS_DIR / f"{version}-rlhf.json").read_text())
        assert data["class"].endswith("RLHFArguments") and data["ms_swift"].startswith(version)
        rlhf, sft = swift.field_list(version, "rlhf"), swift.field_list(version)
        assert set(sft) <= set(rlhf) and set(RLHF_KEYS) <= set(rlhf)
        assert "precompute_ref_log_probs" not in rlhf  # why a precomputed DPO recipe is refused


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", SWIFT_VARIANTS)
def test_every_key_is_in_the_rlhf_field_list(name, version):
    fields = swift.field_list(version, "rlhf")
    data = emitted(name, version)
    for key, value in data.items():
        assert key in fields, f"ms-swift {version}'s RLHFArguments has no {key}"
        assert matches(fields[key], value), f"{key}={value!r} is not a {fields[key]}"
    sft_only = [k for k in data if k not in swift.field_list(version)]  # the RLHF keys exist only for swift rlhf
    assert sft_only and set(sft_only) <= set(RLHF_KEYS)


def test_grpo_values_and_the_sft_keys_beside_them():
    r = rlhf_variant("grpo_vllm")
    s = r.settings
    for version in VERSIONS:
        data = emitted("grpo_vllm", version)
        assert list(data)[0] == "rlhf_type" and data["rlhf_type"] == "grpo"
        assert data["tuner_type" if version == "4.6" else "train_type"] == "lora"
        for key in ("num_generations", "max_completion_length", "beta", "use_vllm", "vllm_mode", "vllm_gpu_memory_utilization",
                    "sleep_level", "offload_model", "offload_optimizer", "steps_per_generation", "per_device_train_batch_size",
                    "gradient_accumulation_steps", "per_device_eval_batch_size", "max_length", "gradient_checkpointing"):
            assert data[key] == getattr(s, key), key
        assert data["vllm_max_model_len"] == s.max_length + s.max_completion_length
        assert data["deepspeed"] == "zero3" and data["lora_rank"] == 8 and data["output_dir"] == "output"
    plain = emitted("grpo_plain", "4.6")
    assert plain["use_vllm"] is False and plain["beta"] == 0.0 and plain["tuner_type"] == "full"
    assert not {"vllm_mode", "vllm_gpu_memory_utilization", "sleep_level"} & set(plain)  # ms-swift refuses vllm_mode without vLLM
    assert plain["steps_per_generation"] == 1  # TRL's and ms-swift's default (the accumulation), written out


def test_dpo_writes_beta_and_no_generation_keys():
    data = emitted("dpo", "3.12")
    assert data["rlhf_type"] == "dpo" and data["beta"] == 0.1 and data["max_length"] == 32 and data["train_type"] == "full"
    assert not {"num_generations", "use_vllm", "steps_per_generation"} & set(data)


def test_precomputed_reference_log_probs_are_refused():
    """No ms-swift has precompute_ref_log_probs: the run would hold the reference model, which the probe did not."""
    for version in VERSIONS:
        with pytest.raises(UsageError, match="precompute_ref_log_probs.*reference model stays resident"):
            swift.render_yaml(rlhf_variant("dpo_precomputed"), version)


def test_a_memory_key_the_version_lacks_is_refused_and_others_commented(monkeypatch):
    fields = dict(swift.field_list("4.6", "rlhf"))
    del fields["sleep_level"], fields["steps_per_generation"], fields["vllm_max_model_len"]
    monkeypatch.setattr(swift, "field_list", lambda version, command="sft": fields)
    with pytest.raises(UsageError, match="no sleep_level"):
        swift.render_yaml(rlhf_variant("grpo_vllm"), "4.6")
    r = rlhf_variant("grpo_vllm")
    r = dataclasses.replace(r, settings=dataclasses.replace(r.settings, sleep_level=0))
    text = swift.render_yaml(r, "4.6")
    data = yaml.safe_load(text)
    assert "sleep_level" not in data and "# sleep_level=0: ms-swift 4.6 has no such argument" in text
    assert not {"steps_per_generation", "generation_batch_size", "vllm_max_model_len"} & set(data)  # 2: the accumulation, the default
    r = dataclasses.replace(r, settings=dataclasses.replace(r.settings, steps_per_generation=4))
    assert yaml.safe_load(swift.render_yaml(r, "4.6"))["generation_batch_size"] == 4 * 2 * 4  # said the other way


def test_the_rollout_record_is_said_in_comments():
    text = swift.render_yaml(rlhf_variant("grpo_vllm"), "4.6")
    head = [ln for ln in text.splitlines() if ln.startswith("#")]
    assert "# run: swift rlhf THIS_FILE.yaml   (flags after the file override it)" in head
    assert any("vLLM's share 0.6 of the card" in ln and "was reserved, not measured: vLLM not installed where probed" in ln
               for ln in head)
    assert any(ln.startswith("# reference model: adapter disabled (LoRA)") for ln in head)
    assert any("sleep_level 1" in ln for ln in head) and any("reward_funcs" in ln for ln in head)
    measured = rlhf_variant("grpo_vllm")
    measured = dataclasses.replace(measured, rlhf={**measured.rlhf, "rollout": {**measured.rlhf["rollout"], "how": "measured", "why": None}})
    assert "was measured: vLLM ran colocated" in swift.render_yaml(measured, "4.6")
    assert "swift rlhf --config THIS_FILE.yaml" in swift.render_yaml(rlhf_variant("dpo"), "3.12")


def test_script_form_launches_swift_rlhf():
    text = swift.render_script(rlhf_variant("grpo_vllm"), "3.12")
    lines = text.splitlines()
    start = lines.index("swift rlhf \\")
    flags = lines[start + 1:-1]
    tokens = shlex.split(" ".join(ln.rstrip("\\") for ln in flags))
    assert [t[2:] for t in tokens if t.startswith("--")] == list(emitted("grpo_vllm", "3.12"))
    assert "--rlhf_type grpo" in text and "--vllm_gpu_memory_utilization 0.6" in text and lines[-1] == '    "$@"'


def test_bad_rlhf_type_and_batch_rules():
    r = rlhf_variant("grpo_plain")
    with pytest.raises(UsageError, match="rlhf_type 'ppo'"):
        swift.render_yaml(dataclasses.replace(r, settings=dataclasses.replace(r.settings, rlhf_type="ppo")), "4.6")
    with pytest.raises(UsageError, match="not divisible by num_generations 8"):  # 6 x 1 x 1 completions per rollout
        swift.render_yaml(dataclasses.replace(r, settings=dataclasses.replace(r.settings, per_device_train_batch_size=6)), "4.6")
    with pytest.raises(UsageError, match="eval batch 2 x 1 ranks"):
        swift.render_yaml(dataclasses.replace(r, settings=dataclasses.replace(r.settings, per_device_eval_batch_size=2)), "4.6")


# ---------------------------------------------------------------- the real ms-swift, where installed


@pytest.mark.parametrize("name", SWIFT_VARIANTS)
@pytest.mark.parametrize("form", ["yaml", "script"])
def test_real_ms_swift_parses_the_rlhf_file(name, form, tmp_path):
    """`swift rlhf FILE` (4.x) / `swift rlhf --config FILE` (3.x): ms-swift's own loader and its
    HfArgumentParser over the real RLHFArguments take every key and value. The script's flags
    go through the same parser as argv."""
    pytest.importorskip("swift")
    version = swift.resolve_version(None)
    major = version.split(".")[0]
    r = rlhf_variant(name)
    path = tmp_path / "args.yaml"
    path.write_text(swift.render_yaml(r, version))
    if form == "yaml":
        assert_real_swift_accepts(path, "rlhf", major)
        return
    lines = swift.render_script(r, version).splitlines()
    flags = lines[lines.index("swift rlhf \\") + 1:-1]
    assert_real_swift_accepts(path, "rlhf", major, argv=shlex.split(" ".join(ln.rstrip("\\") for ln in flags)))


def test_check_reads_the_rlhf_keys_back_from_a_swift_rlhf_file(tmp_path):
    """`check --swift-args FILE` checks the run the user's file launches: its RLHF keys (completions,
    their length, beta, vLLM's share and sleep) override the recipe's, as its batch keys do."""
    import yaml

    from autotune.cli.check import with_swift_args

    recipe = rlhf_variant("grpo_vllm")
    args = yaml.safe_load(swift.render_yaml(recipe, "4.6"))
    args.update(num_generations=16, max_completion_length=2048, beta=0.0, vllm_gpu_memory_utilization=0.45, sleep_level=1)
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(args))
    checked, _ = with_swift_args(recipe, str(path))
    s = checked.settings
    assert (s.num_generations, s.max_completion_length, s.beta, s.vllm_gpu_memory_utilization, s.sleep_level) == (16, 2048, 0.0, 0.45, 1)
    assert s.rlhf_type == "grpo" and s.use_vllm is True


def test_a_file_that_names_its_reward_is_not_told_to_add_one():
    """--swift-args writes the user's own file back: its reward_funcs stay, so no note asks for them."""
    recipe = rlhf_variant("grpo_plain")
    asks = "# GRPO needs your reward"
    assert asks in swift.render_yaml(recipe, "4.6")
    for form in (swift.render_yaml, swift.render_script):
        written = form(recipe, "4.6", base={"rlhf_type": "grpo", "reward_funcs": ["accuracy"], "dataset": ["d.jsonl"]})
        assert asks not in written and "accuracy" in written


def test_generation_without_vllm_is_said_plainly():
    recipe = rlhf_variant("grpo_plain")
    why = "TRL without vLLM generates with the policy's generate(), inside the trials"
    recipe = dataclasses.replace(recipe, rlhf={**recipe.rlhf, "rollout": {"engine": "generate", "how": "measured", "why": why}})
    head = [ln for ln in swift.render_yaml(recipe, "4.6").splitlines() if ln.startswith("#")]
    assert f"# generation was measured as the run does it: {why}" in head and not any("None" in ln for ln in head), head


def test_reward_models_are_written_where_ms_swift_can_load_them(tmp_path):
    """ms-swift's reward_model is a hub id or a directory: a built-in tiny config's name is neither
    (a placeholder, said in the head); a probed config.json is written as its directory."""
    reward = tmp_path / "rm"
    reward.mkdir()
    (reward / "config.json").write_text("{}")
    recipe = rlhf_variant("grpo_plain")
    recipe = dataclasses.replace(recipe, settings=dataclasses.replace(
        recipe.settings, reward_model=["tiny-qwen2", str(reward / "config.json"), str(reward)]))
    text = swift.render_yaml(recipe, "4.6")
    assert yaml.safe_load(text)["reward_model"] == ["YOUR_REWARD_MODEL_ID_OR_PATH", str(reward), str(reward)]
    assert "# YOUR_REWARD_MODEL_ID_OR_PATH: the reward model was a built-in config" in text
    assert "YOUR_REWARD_MODEL_ID_OR_PATH below is a placeholder" in swift.render_script(recipe, "4.6")
    assert "GRPO needs your reward" not in text
