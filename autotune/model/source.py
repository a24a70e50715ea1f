"""Where the model comes from: real weights in a local directory, a config.json alone (random
init: same memory and speed, no weights needed), or a tiny config shipped with the package.
Nothing is ever downloaded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

BUILTIN_DIR = Path(__file__).parent.parent / "configs"
# Attributes that hold a model's position limit, in the order transformers' families use them.
_POSITION_ATTRS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.json"))


@dataclass
class ModelSource:
    kind: str  # "weights" | "config" | "builtin"
    path: str  # directory (weights), config.json path, or builtin name
    config: object  # transformers PretrainedConfig

    @property
    def model_type(self) -> str:
        return self.config.model_type

    @property
    def architecture(self) -> str:
        archs = getattr(self.config, "architectures", None) or []
        return archs[0] if archs else type(self.config).__name__.replace("Config", "ForCausalLM")


def _config_from_dict(data: dict, where: str, flag: str):
    import transformers
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = data.get("model_type")
    if not model_type:
        raise UsageError(flag, f"{where} has no 'model_type'", "use a Hugging Face config.json")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        # transformers' own message lists every model type it knows: hundreds of names on one line.
        raise UsageError(flag, f"{where}: transformers {transformers.__version__} does not know model_type {model_type!r}",
                         "upgrade transformers or check the file")
    try:
        return AutoConfig.for_model(**data)
    except (ValueError, TypeError, ArithmeticError, StrictDataclassError) as exc:  # its checks of the values
        raise UsageError(flag, f"{where}: transformers refuses this config ({' '.join(str(exc).split())})",
                         "fix that value in the file") from None


def _read_json(path: Path, flag: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(flag, f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except OSError as exc:
        raise UsageError(flag, f"cannot read {path}: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise UsageError(flag, f"{path} does not hold a JSON object")
    return data


def resolve(model: str | None, model_config: str | None, causal_lm: bool = True) -> ModelSource:
    """`causal_lm=False`: any architecture (a reward model's sequence-classification head)."""
    if model is not None:
        directory = Path(model).expanduser()
        if not directory.is_dir():
            raise UsageError("--model", f"no model directory at {model}", "give a local Hugging Face model directory, or --model-config for random init")
        if not (directory / "config.json").is_file():
            raise UsageError("--model", f"{model} has no config.json", "point at the directory that holds config.json and the weights")
        source = ModelSource("weights", str(directory), _config_from_dict(_read_json(directory / "config.json", "--model"), str(directory / "config.json"), "--model"))
    else:
        path = Path(model_config).expanduser()
        if path.is_dir():
            path = path / "config.json"
            if not path.is_file():
                raise UsageError("--model-config", f"{model_config} has no config.json")
            kind, shown = "config", str(path)
        elif path.is_file():
            kind, shown = "config", str(path)
        elif (BUILTIN_DIR / f"{model_config}.json").is_file():
            path, kind, shown = BUILTIN_DIR / f"{model_config}.json", "builtin", model_config
        else:
            raise UsageError("--model-config", f"no config file, directory or built-in config named {model_config!r}",
                             f"built-in configs: {', '.join(builtin_names())}")
        source = ModelSource(kind, shown, _config_from_dict(_read_json(path, "--model-config"), str(path), "--model-config"))
    if causal_lm:
        _require_causal_lm(source)
    return source


def _weight_names() -> tuple[str, ...]:
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

    return SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME


def has_weights(directory: str | Path) -> bool:
    """Whether `directory` holds the weight files `from_pretrained` reads."""
    return any((Path(directory) / name).is_file() for name in _weight_names())


def require_weights(source: ModelSource) -> None:
    """A probe of --model DIR loads its weights (a plan reads the config alone): the files
    `from_pretrained` reads are looked for before the model loads, where their absence was an
    OSError ('unexpected error', exit 1). A config alone is a random-init probe."""
    names = _weight_names()
    if source.kind == "weights" and not has_weights(source.path):
        raise UsageError("--model", f"{source.path} has a config.json but no weights ({', '.join(names)})",
                         f"use --model-config {source.path} to probe it at random init (same memory and speed), "
                         "or point at the directory with the weights")


def _require_causal_lm(source: ModelSource) -> None:
    problem = not_causal_reason(source.config)
    if problem:
        flag = "--model" if source.kind == "weights" else "--model-config"
        raise UsageError(flag, problem,
                         "autotune probes models that AutoModelForCausalLM can build, and the vision-language families in autotune/model/families/")


def _head_kinds() -> dict[str, str]:
    """transformers' own task mappings, read backwards: architecture class name -> task, for every
    head that is not a causal LM (masked LM, classifiers, seq2seq...). Base models are left out:
    a `Qwen2Model` config still builds its causal LM."""
    import transformers.models.auto.modeling_auto as auto

    keep = {"MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
            "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES", "MODEL_FOR_PRETRAINING_MAPPING_NAMES"}
    kinds = {}
    for name in dir(auto):
        if name.startswith("MODEL_FOR_") and name.endswith("_MAPPING_NAMES") and name not in keep:
            task = name[len("MODEL_FOR_"):-len("_MAPPING_NAMES")].lower().replace("_", " ")
            for value in getattr(auto, name).values():
                for cls in (value,) if isinstance(value, str) else value:
                    kinds.setdefault(cls, task)
    return kinds


def not_causal_reason(config) -> str | None:
    """Why this config is not a model autotune can train as a causal LM (None: it is). Decided
    by transformers' own mappings: the listed architecture's task, whether the model type has a
    causal-LM class at all, `is_encoder_decoder` (a seq2seq model's causal-LM class is its
    decoder alone), and for encoders that transformers can also run as a decoder (BERT,
    RoBERTa... : model types with both a masked-LM and a causal-LM class), `is_decoder`."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES as MASKED

    from .families import family_for

    if family_for(config) is not None:
        return None
    model_type = config.model_type
    if getattr(config, "thinker_config", None) is not None:  # Qwen2.5-Omni: thinker + talker + vocoder
        return (f"model_type {model_type!r} is a thinker + talker model; autotune probes the thinker (what ms-swift fine-tunes): "
                "save its thinker_config as a config.json of its own (model_type qwen2_5_omni_thinker)")
    archs = list(getattr(config, "architectures", None) or [])
    causal = set(CAUSAL.values())
    if archs and not any(a in causal for a in archs):
        kinds = _head_kinds()
        other = next((a for a in archs if a in kinds), None)
        if other is not None:
            return f"architecture {other} (model_type {model_type!r}) is a {kinds[other]} model, not a causal language model"
    if model_type not in CAUSAL:
        return f"model_type {model_type!r} is not a causal language model"
    if getattr(config, "is_encoder_decoder", False):
        return (f"model_type {model_type!r} is an encoder-decoder (seq2seq) model; its {CAUSAL[model_type]} "
                "is the decoder alone, not the model you train")
    # XLM names its decoder switch `causal`; the BERT-like encoders `is_decoder`.
    decoder = getattr(config, "is_decoder", None) or getattr(config, "causal", None)
    if model_type in MASKED and decoder is not True:
        return (f"model_type {model_type!r} is an encoder (a masked language model) unless is_decoder is true; "
                f"{CAUSAL[model_type]} without it attends both ways, so it is not a causal language model")
    return None


def model_class(config):
    """The transformers class a probe builds for this config: the family's, else the causal LM's."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    from .families import family_for

    family = family_for(config)
    return family.model_cls() if family else MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]


def position_limit(config) -> int | None:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attr in _POSITION_ATTRS:
        value = getattr(text_config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_max_length(config, max_length: int, new_tokens: int = 0) -> None:
    """The input (and the tokens generated after it) must fit the model's positions; the refusal
    names the overflow and what to lower."""
    limit = position_limit(config)
    if limit is None or max_length + new_tokens <= limit:
        return
    if not new_tokens:
        raise UsageError("--max-length", f"{max_length} exceeds the model's position limit of {limit} tokens",
                         f"use --max-length {limit} or less")
    fixes = ([f"--max-length {limit - new_tokens} or less"] if limit > new_tokens else []) + \
        ([f"--max-new-tokens {limit - max_length} or fewer"] if limit > max_length else [])
    raise UsageError("--max-length", f"{max_length} + --max-new-tokens {new_tokens} = {max_length + new_tokens} tokens, "
                                     f"past the model's position limit of {limit}", "use " + ", or ".join(fixes))
