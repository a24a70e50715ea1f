"""Third-party messages that say nothing to an autotune user, silenced by their exact text.
Each is named with where it comes from and why it does not matter; every other warning stays.
Filters attach to the emitting loggers by name, so nothing here imports those libraries."""

from __future__ import annotations

import logging
import warnings

# (logger name, start of the message, why it is noise)
LOG_MESSAGES = (
    # bitsandbytes >= 0.48, backends/cpu/ops.py, at import on CPUs with AVX512-BF16: an optional
    # faster 4-bit kernel from the `kernels` package is missing; the built-in CPU kernel runs.
    # transformers' Trainer utilities import peft, and peft imports bitsandbytes whenever it is
    # installed, so it printed on every command that runs a step.
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
    # transformers 5.x, utils/generic.py: a training step with checkpointing turns the KV cache
    # off, which is what a training step wants (the Trainer's runs print it too).
    ("transformers.utils.generic", "`use_cache=True` is incompatible with gradient checkpointing"),
    # transformers 5.x, modeling_utils.py: configs saved by older transformers (GPT-2's) carry
    # `loss_type: null`; the default causal-LM loss is used, as it should be. A real unknown
    # loss_type still warns.
    ("transformers.modeling_utils", "`loss_type=None` was set in the config but it is unrecognized"),
    # DeepSpeed, accelerator/real_accelerator.py, when transformers or accelerate imports it: on a
    # machine without CUDA it falls back to its CPU accelerator, which autotune does not use (the
    # trials run on the sim device, ZeRO's trials on gloo); on a card, its INFO line naming CUDA.
    ("DeepSpeed", "Setting accelerator to CPU. If you have GPU or other accelerator"),
    ("DeepSpeed", "Setting ds_accelerator to"),
)
# (category, regex on the message): warnings raised inside libraries, about their own calls.
WARNINGS = (
    # transformers 5.x renamed the property; peft 0.17-0.18 still reads the old name.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
)


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def silence_known_noise() -> None:
    """Idempotent; called by the CLI before a command runs."""
    by_logger: dict[str, tuple[str, ...]] = {}
    for name, prefix in LOG_MESSAGES:
        by_logger[name] = by_logger.get(name, ()) + (prefix,)
    for name, prefixes in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(prefixes))
    for category, message in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
