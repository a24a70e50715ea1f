"""A QLoRA recipe in each launch file (LoRA plus the 4-bit quantization it was probed with):
every target wrote `qlora` as its tuner (ms-swift: 'Unknown tuner_type'; LLaMA-Factory knows no
finetuning_type qlora) and no quantization at all. And an FSDP recipe in ms-swift's file."""

import dataclasses
import json

import yaml

from autotune.emit import files, swift
from autotune.model.quantize import quantization_record
from launch_recipes import variant


def qlora():
    r = variant("base")  # a LoRA recipe of tiny-llama
    return dataclasses.replace(r, model=dataclasses.replace(r.model, train_type="qlora", quantization=quantization_record("bfloat16")))


def test_swift_writes_lora_with_bnb_4bit(tmp_path):
    for version in ("4.6", "3.12"):
        out = str(tmp_path / f"s{version}.yaml")
        args = yaml.safe_load(files("swift", qlora(), out, swift_version=version)[out])
        tuner = "tuner_type" if version == "4.6" else "train_type"
        assert args[tuner] == "lora" and args["lora_rank"] == qlora().model.lora["r"]
        assert (args["quant_method"], args["quant_bits"], args["bnb_4bit_quant_type"], args["bnb_4bit_use_double_quant"],
                args["bnb_4bit_compute_dtype"]) == ("bnb", 4, "nf4", True, "bfloat16")
        assert set(args) <= set(swift.field_list(version))


def test_llamafactory_writes_lora_with_4bit_quantization(tmp_path):
    out = str(tmp_path / "lf.yaml")
    data = yaml.safe_load(files("llamafactory", qlora(), out)[out])
    assert data["finetuning_type"] == "lora" and data["quantization_bit"] == 4 and data["quantization_method"] == "bnb"
    assert data["quantization_type"] == "nf4" and data["double_quantization"] is True and "lora_rank" in data


def test_hf_sidecar_gives_the_bitsandbytes_config(tmp_path):
    import pytest

    pytest.importorskip("bitsandbytes")  # BitsAndBytesConfig reads its version
    from transformers import BitsAndBytesConfig

    out = str(tmp_path / "args.json")
    model = json.loads(files("hf", qlora(), out)[str(tmp_path / "args.model.json")])
    assert "lora" in model
    config = BitsAndBytesConfig(**model["from_pretrained"]["quantization_config"])
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant


def test_a_qlora_file_reads_back_as_qlora(tmp_path):
    """check --swift-args of a QLoRA file checked plain LoRA (the quantization was not read)."""
    from autotune.emit.swift_read import read_args, settings_from_args

    out = tmp_path / "s.yaml"
    out.write_text(files("swift", qlora(), str(out), swift_version="4.6")[str(out)])
    assert settings_from_args(read_args(out))[1]["train_type"] == "qlora"


def test_an_fsdp_recipe_says_what_ms_swifts_preset_does_and_3x_is_refused():
    """ms-swift 4's fsdp2 preset turns on FSDP's own activation checkpointing; 3.12.6 ships no preset."""
    import pytest

    from autotune.errors import UsageError

    r = variant("fsdp")
    text = swift.render_yaml(r, "4.6")
    assert yaml.safe_load(text)["fsdp"] == "fsdp2" and "checkpoints activations itself" in text
    with pytest.raises(UsageError, match="no fsdp2 preset"):
        swift.render_yaml(r, "3.12")
