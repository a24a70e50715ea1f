"""`emit trl` (issue #12): a GRPOConfig / DPOConfig JSON that TRL's own parsers load with no
extra keys, every value read back as written; its sidecar; the recipes it refuses."""

import dataclasses
import json

import pytest

from autotune.cli import main
from autotune.cli.emit import emit_paths
from autotune.cli.next_steps import launch_command
from autotune.emit import files, trl
from autotune.errors import UsageError
from autotune.recipe.schema import save_recipe
from rlhf_recipes import TRL_VARIANTS, base, rlhf_variant

pytest.importorskip("trl")


def config_file(recipe, tmp_path):
    import torch

    data = json.loads(trl.render(recipe))
    if not torch.cuda.is_available():  # bf16 without a GPU is refused unless use_cpu: the one key a CPU test adds
        data["use_cpu"] = True
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path, data


@pytest.mark.parametrize("name", TRL_VARIANTS)
def test_trl_parsers_load_the_config_and_every_value_round_trips(name, tmp_path):
    from transformers import HfArgumentParser
    from trl import TrlParser

    r = rlhf_variant(name)
    path, data = config_file(r, tmp_path)
    cls = trl.config_class(r)
    (parsed,) = HfArgumentParser(cls).parse_json_file(str(path), allow_extra_keys=False)
    (from_trl,) = TrlParser([cls]).parse_args_and_config(["--config", str(path)])  # YAML reader; JSON is YAML
    for args in (parsed, from_trl):
        assert type(args).__name__ == {"grpo": "GRPOConfig", "dpo": "DPOConfig"}[r.settings.rlhf_type]
        for key, value in data.items():
            assert getattr(args, key) == value, key


def test_grpo_values_under_trl_names(tmp_path):
    from transformers import HfArgumentParser

    r = rlhf_variant("grpo_trl")
    s = r.settings
    path, data = config_file(r, tmp_path)
    (args,) = HfArgumentParser(trl.config_class(r)).parse_json_file(str(path))
    assert (args.num_generations, args.max_completion_length, args.beta, args.steps_per_generation) == (4, 64, 0.04, 2)
    assert args.use_vllm and args.vllm_mode == "colocate" and args.vllm_gpu_memory_utilization == 0.6
    assert args.vllm_enable_sleep_mode is True and args.vllm_max_model_length == s.max_length + s.max_completion_length
    assert args.per_device_train_batch_size == 4 and args.gradient_accumulation_steps == 2 and args.per_device_eval_batch_size == 2
    assert args.gradient_checkpointing is True and args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert args.bf16 is True and args.model_init_kwargs == {"dtype": "bfloat16", "attn_implementation": "sdpa"}
    assert args.deepspeed["zero_optimization"]["stage"] == 3 and args.deepspeed["train_micro_batch_size_per_gpu"] == 4
    assert args.generation_batch_size == 4 * args.world_size * 2  # TRL derived it from the same numbers


def test_trl_defaults_are_overridden_where_they_would_change_memory(tmp_path):
    """TRL's configs default checkpointing on and bf16 on where the card has it, beta 0 and a
    0.3 share: a fp32 run without checkpointing, and a run without vLLM, say so explicitly."""
    from transformers import HfArgumentParser

    r = rlhf_variant("dpo")
    path, data = config_file(r, tmp_path)
    assert data["bf16"] is False and data["fp16"] is False and data["activation_checkpointing"] is False
    (args,) = HfArgumentParser(trl.config_class(r)).parse_json_file(str(path))
    assert args.bf16 is False and args.gradient_checkpointing is False and args.beta == 0.1 and args.max_length == 32
    assert args.precompute_ref_log_probs is False
    plain = json.loads(trl.render(rlhf_variant("grpo_plain")))
    assert plain["use_vllm"] is False and plain["beta"] == 0.0 and "vllm_mode" not in plain
    assert plain["steps_per_generation"] == 1
    fsdp = dataclasses.replace(r, settings=dataclasses.replace(r.settings, strategy="fsdp", gradient_checkpointing=True))
    data = json.loads(trl.render(fsdp))
    assert data["activation_checkpointing"] is False and data["fsdp_config"]["activation_checkpointing"] is True
    assert json.loads(trl.render(rlhf_variant("dpo_precomputed")))["precompute_ref_log_probs"] is True


def test_sidecar_holds_model_lora_prompt_length_and_the_rollout_record():
    r = rlhf_variant("grpo_trl")
    side = json.loads(trl.render_model(r))
    assert side["trainer"] == "GRPOTrainer" and side["config"] == "GRPOConfig"
    assert side["max_prompt_length"] == 32 and "max_length" not in side and side["lora"]["r"] == 8
    assert side["rlhf"]["record"] == r.rlhf
    notes = " | ".join(side["rlhf"]["notes"])
    assert "vLLM's share 0.6 of the card" in notes and "reserved, not measured: vLLM not installed where probed" in notes
    assert "reward_funcs" in notes and "no prompt limit" in notes
    dpo = json.loads(trl.render_model(rlhf_variant("dpo")))
    assert dpo["trainer"] == "DPOTrainer" and dpo["max_length"] == 32 and "reference model: loaded" in dpo["rlhf"]["notes"]


def test_refused_recipes():
    sft = dataclasses.replace(base(), settings=dataclasses.replace(base().settings, rlhf_type=None), rlhf=None)
    with pytest.raises(UsageError, match="not an RLHF run.*emit hf"):
        trl.render(sft)
    with pytest.raises(UsageError, match="offload_model and offload_optimizer with sleep_level 1"):
        trl.render(rlhf_variant("grpo_vllm"))  # ms-swift's offload: TRL would hold the model beside the woken share
    awake = rlhf_variant("grpo_vllm")
    awake = dataclasses.replace(awake, settings=dataclasses.replace(awake.settings, sleep_level=0))
    assert "offload_model" not in json.loads(trl.render(awake))  # without sleep it changes no peak: left out, said
    assert any("offload_model and offload_optimizer (ms-swift's) left out" in n for n in trl.notes(awake))
    for target in ("hf", "llamafactory"):
        with pytest.raises(UsageError, match=f"GRPO run.*`emit {target}` would write supervised training"):
            files(target, rlhf_variant("grpo_plain"), "out.json")


def test_cli_writes_both_files_and_refuses_a_supervised_recipe(tmp_path, capsys):
    recipe = tmp_path / "grpo.yaml"
    save_recipe(rlhf_variant("grpo_trl"), recipe)
    out = tmp_path / "grpo.json"
    assert main(["emit", "trl", str(recipe), "-o", str(out)]) == 0
    assert json.loads(out.read_text())["num_generations"] == 4 and (tmp_path / "grpo.model.json").exists()
    err = capsys.readouterr().err
    assert "HfArgumentParser(GRPOConfig).parse_json_file" in err and "TrlParser([GRPOConfig])" in err
    sft = tmp_path / "sft.yaml"
    save_recipe(dataclasses.replace(base(), settings=dataclasses.replace(base().settings, rlhf_type=None), rlhf=None), sft)
    assert main(["emit", "trl", str(sft), "-o", str(tmp_path / "sft.json")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "settings.rlhf_type is unset" in lines[0] and not list(tmp_path.glob("sft*.json"))
    swift = tmp_path / "grpo.sh"
    assert main(["emit", "swift", str(recipe), "-o", str(swift), "--swift-version", "4.6"]) == 0
    assert "swift rlhf \\" in swift.read_text() and "extra swift rlhf flags" in capsys.readouterr().err


def test_probe_emit_paths_and_launch_commands():
    assert emit_paths("r.yaml", ["trl"]) == ["r.trl.json", "r.trl.model.json"]
    assert launch_command("trl", "r.trl.model.json") is None
    assert "DPOConfig" in launch_command("trl", "r.trl.json", rlhf_type="dpo")
    assert launch_command("swift", "r.swift.yaml", "3.12", "grpo") == "swift rlhf --config r.swift.yaml"
    assert launch_command("swift", "r.swift.yaml", "4.6") == "swift sft r.swift.yaml"
