"""Where the launched trainer switches the language model's KV cache off (issue #11 item 2).

The Hugging Face Trainer sets `model.config.use_cache = args.use_cache` (False) in its
constructor: the top config only. A vision-language model's language model reads its own
(text) config, which keeps `use_cache: true`, so under the HF Trainer every eval forward of such
a model builds a KV cache (layers x 2 x KV heads x head size x tokens x batch, in the model's
dtype). ms-swift switches the cache off in the language model's configs too, before training:
4.6 `SwiftMixin._prepare_gradient_checkpointing` calls
`HfConfigFactory.set_config_attr(model.config, 'use_cache', False)` (the top config and every
`language_config` / `llm_config` / `text_config` below it, through any `*_config` but
`talker_config`; vision and audio configs are left); 3.12 calls `set_model_config_attr(model, ...)`,
every module's config, which reaches the same language-model configs (the vision tower's
config has no cache to build). A text model's top config is its language model's, so the two
targets differ only for models with a language-model sub-config.

The trials run the Trainer, which does its own part; `switch_off_sub_configs` then does ms-swift's
on the loaded model, where ms-swift does it (before `train()`). Where the Trainer cannot run
(the plan's fake tensors, engine-wrapped models: trials/step_model.py) `as_launched` does both.
"""

from __future__ import annotations

import contextlib

# ms-swift's HfConfigFactory.llm_keys: the sub-configs it takes for the language model's.
LANGUAGE_MODEL_KEYS = ("language_config", "llm_config", "text_config")
_NOT_FOLLOWED = ("talker_config",)  # ms-swift's walk skips Qwen2.5-Omni's speech generator
_MISSING = object()


def language_model_configs(config) -> list:
    """The configs below `config` that ms-swift 4.6's `set_config_attr(config, 'use_cache', False)`
    sets: each language-model sub-config (LANGUAGE_MODEL_KEYS) holding `use_cache`, at any depth."""
    found = []
    for key, value in vars(config).items():
        if not key.endswith("_config") or key in _NOT_FOLLOWED or not hasattr(value, "to_dict"):
            continue
        if key in LANGUAGE_MODEL_KEYS and hasattr(value, "use_cache"):
            found.append(value)
        found += language_model_configs(value)
    return found


def model_config(model):
    """The transformers model's config under a peft or engine wrapper (peft forwards `.config`)."""
    while not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module
    return model.config


def _switched_off(configs: list) -> list:
    """Set `use_cache` False in each config; returns what puts them back."""
    saved = [(config, config.__dict__.get("use_cache", _MISSING)) for config in configs]
    for config in configs:
        config.use_cache = False
    return saved


def put_back(saved: list | None) -> None:
    for config, value in reversed(saved or ()):
        if value is _MISSING:
            config.__dict__.pop("use_cache", None)
        else:
            config.use_cache = value


def switch_off_sub_configs(model) -> list:
    """ms-swift's part, on a model the Trainer has already taken (it set the top config): the
    language model's configs too. Returns what `put_back` restores."""
    config = model_config(model)
    return _switched_off([config, *language_model_configs(config)])


@contextlib.contextmanager
def as_launched(model, off_in_sub_configs: bool):
    """The cache switches a launched run has, for code that runs the step without the Trainer:
    the Trainer's top config, and with `off_in_sub_configs` (ms-swift) the language model's."""
    config = model_config(model)
    saved = _switched_off([config, *(language_model_configs(config) if off_in_sub_configs else ())])
    try:
        yield
    finally:
        put_back(saved)
