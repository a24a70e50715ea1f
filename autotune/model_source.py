"""Where the model comes from: real weights in a local directory, a config.json alone (random
init: same memory and speed, no weights needed), or a tiny config shipped with the package.
Nothing is ever downloaded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

BUILTIN_DIR = Path(__file__).parent / "configs"
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
    from transformers import AutoConfig

    model_type = data.get("model_type")
    if not model_type:
        raise UsageError(flag, f"{where} has no 'model_type'", "use a Hugging Face config.json")
    try:
        return AutoConfig.for_model(**data)
    except ValueError as exc:
        raise UsageError(flag, f"{where}: transformers does not know model_type {model_type!r} ({exc})",
                         "upgrade transformers or check the file") from None


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


def resolve(model: str | None, model_config: str | None) -> ModelSource:
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
    _require_causal_lm(source)
    return source


def _require_causal_lm(source: ModelSource) -> None:
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    from .families import family_for

    if type(source.config) not in MODEL_FOR_CAUSAL_LM_MAPPING and family_for(source.config) is None:
        flag = "--model" if source.kind == "weights" else "--model-config"
        raise UsageError(flag, f"model_type {source.model_type!r} is not a causal language model",
                         "autotune probes models that AutoModelForCausalLM can build, and the vision-language families in autotune/families/")


def position_limit(config) -> int | None:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attr in _POSITION_ATTRS:
        value = getattr(text_config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_max_length(config, max_length: int) -> None:
    limit = position_limit(config)
    if limit is not None and max_length > limit:
        raise UsageError("--max-length", f"{max_length} exceeds the model's position limit of {limit} tokens",
                         f"use --max-length {limit} or less")
