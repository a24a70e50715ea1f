"""Which attention implementations can run: the model class's own support flags, then what
the device, the installed packages and the dtype allow (flash-attn). The search skips a
candidate with the reason these return; the probe refuses an --attn list none of which can run.
"""

from __future__ import annotations

from ..extras import install_hint

# The class flags transformers' own dispatch checks (_sdpa_can_dispatch, _flash_attn_can_dispatch).
_MODEL_SUPPORT_FLAGS = {"sdpa": "_supports_sdpa", "flash_attention_2": "_supports_flash_attn"}


def attn_unsupported_by_model(attn: str, model_cls) -> str | None:
    """Why the model class cannot use `attn` at all (Gemma 2: no sdpa, which has no softcapping)."""
    flag = _MODEL_SUPPORT_FLAGS.get(attn)
    if model_cls is None or flag is None or getattr(model_cls, flag, True):
        return None
    return f"{model_cls.__name__} does not support {attn} (transformers sets {flag} = False for it)"


def attn_unavailable_reason(attn: str, device, dtype: str, model_cls=None) -> str | None:
    """Why `attn` cannot run for this model class (when given), device and dtype (None: it can)."""
    unsupported = attn_unsupported_by_model(attn, model_cls)
    if unsupported or attn != "flash_attention_2":
        return unsupported
    if device.kind != "cuda":
        return f"flash-attn needs a CUDA GPU; the {device.kind} device has none"
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        return "the flash-attn package (>= 2.3.3) is not installed here; " + install_hint("flash")
    if dtype not in ("bfloat16", "float16"):
        return f"flash-attn runs in bfloat16 or float16 only, not {dtype}"
    import torch

    major, minor = torch.cuda.get_device_capability(device.torch_device)
    if major < 8:
        return f"flash-attn 2 needs compute capability 8.0 (Ampere) or newer; this GPU is {major}.{minor}"
    return None
