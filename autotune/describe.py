"""What a recipe records of where it was made: the libraries, the hardware and the model.
Shared by the probe, the plan, check and the cluster's workers (none of them imports another
for it)."""

from __future__ import annotations

from .emit.deepspeed import hidden_size
from .model.quantize import quantization_record
from .recipe.lora import PEFT_REGEX, record as lora_record
from .recipe.schema import Hardware, ModelInfo


def library_versions() -> dict:
    from importlib.metadata import version

    import torch
    import transformers

    # peft's version from its metadata: importing peft imports bitsandbytes, needed only for LoRA
    return {"torch": str(torch.__version__), "transformers": str(transformers.__version__), "peft": version("peft")}


def describe_hardware(device, world_size: int) -> Hardware:
    return Hardware(device=device.kind, name=device.name, capacity_bytes=device.capacity,
                    device_count=device.count, world_size=world_size, **library_versions())


def describe_model(workload) -> ModelInfo:
    spec, source = workload.spec, workload.source
    lora = None
    if spec.train_type in ("lora", "qlora"):
        lora = {"r": spec.lora_r, "alpha": spec.lora_alpha, "dropout": spec.lora_dropout,
                **lora_record(spec.lora_target_modules, spec.lora_target_regex)}
        regex = workload.setup.peft_target_regex if workload.setup is not None else None
        if regex:
            lora[PEFT_REGEX] = regex
    return ModelInfo(source=source.kind, path=source.path, model_type=source.model_type, architecture=source.architecture,
                     dtype=spec.dtype, train_type=spec.train_type, num_parameters=workload.total_params,
                     trainable_parameters=workload.trainable_params, max_length=spec.max_length, lora=lora,
                     quantization=quantization_record(spec.dtype) if spec.train_type == "qlora" else None,
                     hidden_size=hidden_size(workload.model.config))
