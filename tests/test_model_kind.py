"""Which configs autotune probes: causal LMs and the vision-language families; anything else
(a masked-LM BERT, a classifier head, a seq2seq model) is refused with one line naming the flag."""

import json

import pytest

from autotune.cli import main
from autotune.errors import UsageError
from autotune.model.source import resolve

BERT = {"model_type": "bert", "vocab_size": 512, "hidden_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 64}


def _write(tmp_path, data) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("extra,needle", [
    ({"architectures": ["BertForMaskedLM"]}, "architecture BertForMaskedLM (model_type 'bert') is a masked lm model"),
    ({}, "model_type 'bert' is an encoder (a masked language model) unless is_decoder is true"),
    ({"architectures": ["BertForSequenceClassification"]}, "is a sequence classification model"),
])
def test_a_bert_config_is_refused_with_one_line_exit_2(tmp_path, capsys, extra, needle):
    out = tmp_path / "r.yaml"
    argv = ["probe", "--model-config", _write(tmp_path, {**BERT, **extra}), "--max-length", "16",
            "--device", "sim", "--gpu-memory", "1GiB", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autotune: error: --model-config: ") and needle in err[0], err
    assert not out.exists()


def test_plan_refuses_it_too(tmp_path, capsys):
    argv = ["plan", "--model-config", _write(tmp_path, {**BERT, "architectures": ["BertForMaskedLM"]}),
            "--max-length", "16", "--gpu-memory", "1GiB"]
    assert main(argv) == 2
    assert "not a causal language model" in capsys.readouterr().err


def test_weights_directory_names_the_model_flag(tmp_path):
    _write(tmp_path, {"model_type": "bart", "d_model": 32})  # BartForCausalLM exists: the decoder alone
    with pytest.raises(UsageError, match=r"^--model: .*encoder-decoder \(seq2seq\)"):
        resolve(str(tmp_path), None)


@pytest.mark.parametrize("data", [
    {**BERT, "is_decoder": True, "architectures": ["BertLMHeadModel"]},  # BERT run as a decoder is causal
    {"model_type": "qwen2", "architectures": ["Qwen2Model"]},  # a base-model architecture still builds its causal LM
    {"model_type": "llama"},
    {"model_type": "gemma3"},  # image-text-to-text, and transformers' causal-LM mapping has it
])
def test_causal_configs_still_resolve(tmp_path, data):
    assert resolve(None, _write(tmp_path, data)).model_type == data["model_type"]


@pytest.mark.parametrize("data,needle", [
    ({"model_type": "no-such-model"}, "does not know model_type 'no-such-model'; upgrade transformers"),
    ({"model_type": 5}, "does not know model_type 5"),
    ({"model_type": "llama", "hidden_size": -4}, "transformers refuses this config (Class validation error"),
    ({"model_type": "llama", "vocab_size": "many"}, "Field 'vocab_size' expected int"),
    ({"model_type": "llama", "num_attention_heads": 0}, "transformers refuses this config"),
])
def test_a_config_transformers_refuses_is_one_short_line(tmp_path, capsys, data, needle):
    """Used to be exit 1 with transformers' multi-line validation error, or a line listing every
    model type transformers knows (12 000 characters)."""
    argv = ["plan", "--model-config", _write(tmp_path, data), "--max-length", "16", "--gpu-memory", "1GiB"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autotune: error: --model-config: ") and needle in err[0], err
    assert len(err[0]) < 400
