"""HF Trainer, DeepSpeed, accelerate and LLaMA-Factory files, each loaded by its real consumer
where it is installable here."""

import json
from pathlib import Path

import pytest
import yaml

from autotune.emit import accelerate, deepspeed, hf, llamafactory
from launch_recipes import variant


@pytest.mark.parametrize("name", ["base", "fsdp"])
def test_hf_training_arguments_load_with_hf_argument_parser(name, tmp_path):
    from transformers import HfArgumentParser, TrainingArguments

    import torch

    r = variant(name)
    path = tmp_path / "args.json"
    path.write_text(hf.render(r))
    if not torch.cuda.is_available():  # bf16 without a GPU is refused unless use_cpu: the one key a CPU test adds
        path.write_text(json.dumps({**json.loads(path.read_text()), "use_cpu": True}))
    (args,) = HfArgumentParser(TrainingArguments).parse_json_file(str(path), allow_extra_keys=False)
    s = r.settings
    assert args.per_device_train_batch_size == s.per_device_train_batch_size
    assert args.gradient_accumulation_steps == s.gradient_accumulation_steps
    assert args.bf16 is True and args.optim == s.optim
    if name == "fsdp":
        assert args.fsdp_config["activation_checkpointing"] is True
    else:
        assert bool(args.gradient_checkpointing) is s.gradient_checkpointing


def test_hf_eval_and_deepspeed_keys_are_training_arguments():
    """With a DeepSpeed strategy the Trainer needs deepspeed installed to build the arguments;
    the keys and the embedded config are still checked."""
    import dataclasses

    from transformers import TrainingArguments

    r = variant("eval_zero3")
    data = json.loads(hf.render(r))
    assert set(data) <= {f.name for f in dataclasses.fields(TrainingArguments)}
    assert data["per_device_eval_batch_size"] == 2 and data["eval_accumulation_steps"] == 4
    assert data["prediction_loss_only"] is False
    assert data["deepspeed"]["zero_optimization"]["stage"] == 3


def test_hf_model_settings_sidecar():
    r = variant("eval_zero3")
    side = json.loads(hf.render_model(r))
    assert side["from_pretrained"] == {"attn_implementation": "sdpa", "dtype": "bfloat16"}
    assert side["max_length"] == 32 and side["lora"]["r"] == r.model.lora["r"] and side["max_pixels"] == 1003520
    assert hf.sidecar_path("out/train_args.json") == "out/train_args.model.json"


@pytest.mark.parametrize("name", ["base", "eval_zero3"])
def test_deepspeed_batch_arithmetic(name):
    r = variant(name)
    config = json.loads(deepspeed.render(r))
    world = r.hardware.world_size
    s = r.settings
    assert config["train_micro_batch_size_per_gpu"] == s.per_device_train_batch_size
    assert config["gradient_accumulation_steps"] == s.gradient_accumulation_steps
    assert deepspeed.batch_consistent(config, world)
    assert not deepspeed.batch_consistent({**config, "train_batch_size": config["train_batch_size"] + 1}, world)
    assert config["zero_optimization"]["stage"] == (3 if name == "eval_zero3" else 0)
    if name == "eval_zero3":
        assert config["zero_optimization"]["offload_param"]["device"] == "cpu"


def test_deepspeed_own_config_class_accepts_it():
    """DeepSpeed's own DeepSpeedConfig runs the batch assertion (world size 1 without a
    process group). Skipped where deepspeed is not installed."""
    ds_config = pytest.importorskip("deepspeed.runtime.config")
    import dataclasses

    base = variant("base")
    zero3 = json.loads(deepspeed.render(dataclasses.replace(base, settings=dataclasses.replace(base.settings, strategy="zero3"))))
    parsed = ds_config.DeepSpeedConfig(zero3)  # no "auto" left: a plain deepspeed.initialize reads it
    assert parsed.zero_config.prefetch_bucket_size == zero3["zero_optimization"]["stage3_prefetch_bucket_size"] > 0
    config = json.loads(deepspeed.render(variant("base")))
    parsed = ds_config.DeepSpeedConfig(config)
    assert parsed.train_batch_size == config["train_batch_size"]
    with pytest.raises(AssertionError):
        ds_config.DeepSpeedConfig({**config, "train_batch_size": config["train_batch_size"] + 1})


def test_deepspeed_refuses_an_fsdp_recipe():
    from autotune.errors import UsageError

    with pytest.raises(UsageError, match="FSDP"):
        deepspeed.render(variant("fsdp"))


@pytest.mark.parametrize("name,distributed", [("base", "NO"), ("eval_zero3", "DEEPSPEED"), ("fsdp", "FSDP")])
def test_accelerate_config_loads_with_accelerate(name, distributed, tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    r = variant(name)
    path = tmp_path / "accelerate.yaml"
    path.write_text(accelerate.render(r))
    config = load_config_from_file(str(path))  # refuses unknown keys
    assert config.distributed_type == distributed and config.num_processes == r.hardware.world_size
    assert config.mixed_precision == "bf16"
    if name == "eval_zero3":
        assert config.num_machines == 2 and config.deepspeed_config["deepspeed_config_file"] == "ds_config.json"
    if name == "fsdp":
        assert config.fsdp_config["fsdp_version"] == 2 and config.fsdp_config["fsdp_activation_checkpointing"] is True


@pytest.mark.parametrize("name", ["base", "eval_zero3"])
def test_llamafactory_yaml(name):
    r = variant(name)
    text = llamafactory.render(r)
    data = yaml.safe_load(text)
    s = r.settings
    assert data["per_device_train_batch_size"] == s.per_device_train_batch_size
    assert data["gradient_accumulation_steps"] == s.gradient_accumulation_steps
    assert data["cutoff_len"] == 32 and data["flash_attn"] in {"auto", "disabled", "sdpa", "fa2", "fa3"}
    assert data["disable_gradient_checkpointing"] is (not s.gradient_checkpointing)
    assert data["finetuning_type"] == "lora" and data["lora_rank"] == r.model.lora["r"]
    assert "### train" in text and "YOUR_DATASET" in text
    if name == "eval_zero3":
        assert data["per_device_eval_batch_size"] == 2 and data["deepspeed"] == "ds_config.json"
        assert data["freeze_vision_tower"] is True and data["image_max_pixels"] == 1003520


SWIFT_ZERO = ("zero2", "zero3", "zero2_offload", "zero3_offload")


def swift_zero_sections() -> dict:
    """ms-swift's shipped ZeRO sections: from the installed ms-swift where there is one, else the
    snapshot tests/data/ms-swift-zero.json, written from ms-swift 4.6 with
    python -c "import json,pathlib,swift; d=pathlib.Path(swift.__file__).parent/'config';
    print(json.dumps({n: json.loads((d/f'{n}.json').read_text())['zero_optimization'] for n in
    ['zero2','zero3','zero2_offload','zero3_offload']}, indent=1))"."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("swift")
    folder = Path(spec.origin).parent / "config" if spec and spec.origin else None
    if folder and (folder / "zero3.json").exists():
        return {n: json.loads((folder / f"{n}.json").read_text())["zero_optimization"] for n in SWIFT_ZERO}
    return json.loads((Path(__file__).parent / "data/ms-swift-zero.json").read_text())


@pytest.mark.parametrize("strategy", SWIFT_ZERO)
def test_zero_sections_are_ms_swifts(strategy):
    """`swift sft --deepspeed zero3` runs with ms-swift's own file; the probe and the other launch
    files use deepspeed.zero_optimization, which must be the same settings, "auto" included."""
    theirs = swift_zero_sections()[strategy]
    ours = deepspeed.zero_optimization(strategy)
    assert json.loads(json.dumps(ours)) == {k: int(v) if isinstance(v, float) else v for k, v in theirs.items()}


def test_hidden_size_fill_is_the_trainers(tmp_path):
    """The "auto" entries become what the Trainer would fill them with (transformers'
    HfTrainerDeepSpeedConfig.trainer_config_finalize, the real function, as the oracle; it is a
    stub where deepspeed is not installed)."""
    import types

    pytest.importorskip("deepspeed")
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    model = types.SimpleNamespace(config=types.SimpleNamespace(hidden_size=3584))
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    try:
        for strategy in SWIFT_ZERO:
            trainer = HfTrainerDeepSpeedConfig({"zero_optimization": deepspeed.zero_optimization(strategy)})
            trainer.trainer_config_finalize(args, model, 10)
            assert deepspeed.zero_optimization(strategy, 3584) == trainer.config["zero_optimization"]
    finally:
        unset_hf_deepspeed_config()  # the constructor registers itself globally (ZeRO-3 init for later models)


def test_accelerate_and_hf_carry_the_probes_deepspeed_config(tmp_path):
    """The accelerate YAML points at the DeepSpeed JSON written beside it; accelerate's plugin
    reads the stage, offload and buckets from it; the HF arguments embed the same config."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin

    from autotune.emit import files

    r = variant("eval_zero3")
    outputs = files("accelerate", r, str(tmp_path / "acc.yaml"))
    for path, text in outputs.items():
        Path(path).write_text(text)
    loaded = load_config_from_file(str(tmp_path / "acc.yaml"))
    ds_file = loaded.deepspeed_config["deepspeed_config_file"]
    assert ds_file == str(tmp_path / "acc.deepspeed.json") and loaded.deepspeed_config["zero3_init_flag"] is True
    plugin = DeepSpeedPlugin(hf_ds_config=ds_file)
    assert plugin.zero_stage == 3 and plugin.offload_param_device == "cpu"
    assert plugin.gradient_accumulation_steps == r.settings.gradient_accumulation_steps
    h = r.model.hidden_size
    assert h and plugin.deepspeed_config["zero_optimization"]["reduce_bucket_size"] == h * h
    assert json.loads(hf.render(r))["deepspeed"] == json.loads(outputs[ds_file])
