"""QLoRA: the language model's linear layers in 4-bit with bitsandbytes (nf4, double
quantisation, compute dtype = --dtype), as `BitsAndBytesConfig(load_in_4bit=True,
bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)` loads them; the vision tower, the
aligner and the output head stay in --dtype.

transformers quantizes only inside `from_pretrained`, and a weights-free probe has no
checkpoint, so each linear layer is swapped for a `bitsandbytes.nn.Linear4bit` holding its
current weight, which bitsandbytes quantizes when it moves to the device (one layer at a time:
the transient is one layer's bf16 weight). bitsandbytes >= 0.48 has CPU kernels for this, so
the sim device runs QLoRA too; where bitsandbytes cannot quantize on the device, a UsageError."""

from __future__ import annotations

import torch

from ..errors import UsageError

QUANT = {"quant_type": "nf4", "double_quant": True, "bits": 4}


def quantization_record(dtype: str) -> dict:
    return {"method": "bnb", **QUANT, "compute_dtype": dtype}


def check_4bit(device, compute_dtype: torch.dtype) -> None:
    """Quantize and run one tiny layer on the device: the cheapest honest answer to 'can 4-bit
    run here?'."""
    try:
        import bitsandbytes as bnb

        layer = _to_4bit(torch.nn.Linear(64, 64, bias=False, device=device.torch_device, dtype=compute_dtype), compute_dtype, device)
        x = torch.ones(1, 64, dtype=compute_dtype, device=device.torch_device, requires_grad=True)
        layer(x).sum().backward()
        del bnb
    except Exception as exc:  # noqa: BLE001 - any failure means: not here
        raise UsageError("--train-type", f"4-bit QLoRA cannot run on the {device.kind} device here ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                         "install bitsandbytes >= 0.48 (CPU kernels) or probe on a CUDA card; --train-type lora probes without quantization") from None


def _to_4bit(linear: torch.nn.Linear, compute_dtype: torch.dtype, device):
    import bitsandbytes as bnb

    q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                          compute_dtype=compute_dtype, compress_statistics=QUANT["double_quant"],
                          quant_type=QUANT["quant_type"], device="meta")
    q.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, compress_statistics=QUANT["double_quant"],
                                 quant_type=QUANT["quant_type"], bnb_quantized=False)
    if linear.bias is not None:
        q.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
    return q.to(device.torch_device)


def quantize_language_model(model, in_language_model, compute_dtype: torch.dtype, device) -> int:
    """Swap every linear layer for which `in_language_model(name)` holds (output head excluded)
    for a 4-bit one; returns how many were swapped."""
    names = [name for name, m in model.named_modules()
             if type(m) is torch.nn.Linear and in_language_model(name) and name.split(".")[-1] != "lm_head"]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _to_4bit(getattr(parent, child), compute_dtype, device))
    return len(names)


def quant_state_tensors(model) -> list[torch.Tensor]:
    """The quantization statistics (absmax, nested absmax, code) live outside parameters and
    buffers; the sim device must be charged for them too."""
    import bitsandbytes as bnb

    tensors = []
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(module.weight, "quant_state", None) is not None:
            state = module.weight.quant_state
            for value in (state.absmax, state.code, getattr(state, "offset", None)):
                if isinstance(value, torch.Tensor):
                    tensors.append(value)
            if state.state2 is not None:
                tensors += [state.state2.absmax, state.state2.code]
    return tensors
