"""The workload: the model as the user trains it, the optimizer the real trainer would build,
and the worst-case batch (every sample exactly max_length tokens, labels = input ids)."""

from __future__ import annotations

import gc
import tempfile
from dataclasses import dataclass

import torch

from .errors import UsageError
from .model_source import ModelSource, check_max_length
from .spec import ProbeSpec

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def count_parameters(model) -> tuple[int, int]:
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return total, trainable


def build_model(source: ModelSource, spec: ProbeSpec, device):
    """Build on the target device directly: random init runs there (fast on a GPU), and real
    weights go straight to it."""
    from transformers import AutoModelForCausalLM

    dtype = TORCH_DTYPES[spec.dtype]
    kwargs = dict(dtype=dtype, attn_implementation=spec.attn_implementation)
    torch.manual_seed(spec.seed)
    try:
        if source.kind == "weights":
            model = AutoModelForCausalLM.from_pretrained(source.path, device_map={"": device.torch_device}, **kwargs)
        else:
            with torch.device(device.torch_device):
                model = AutoModelForCausalLM.from_config(source.config, **kwargs)
    except ImportError as exc:  # e.g. flash_attention_2 without flash-attn
        raise UsageError("--attn", f"cannot build the model with {spec.attn_implementation}: {exc}", "choose --attn sdpa or eager") from None
    return model


def apply_lora(model, spec: ProbeSpec):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.lora_r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=spec.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def trainer_optimizer(model, learning_rate: float = 1e-4):
    """The optimizer the Hugging Face Trainer creates for these parameters, on this torch:
    same class and kwargs (adamw_torch_fused on torch >= 2.8), built by the Trainer's own code."""
    from transformers import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, report_to=[], learning_rate=learning_rate,
                                 use_cpu=not torch.cuda.is_available())
        optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    params = [p for p in model.parameters() if p.requires_grad]
    return optimizer_cls(params, **kwargs)


@dataclass
class Workload:
    model: object
    source: ModelSource
    spec: ProbeSpec
    device: object
    total_params: int
    trainable_params: int
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"

    @property
    def vocab_size(self) -> int:
        config = self.source.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        return text.vocab_size

    def configure(self, attn_implementation: str | None = None, gradient_checkpointing: bool | None = None) -> None:
        """Switch attention and checkpointing in place, without reloading the model."""
        if attn_implementation and attn_implementation != self.attn_implementation:
            self.model.set_attn_implementation(attn_implementation)
            self.attn_implementation = attn_implementation
        if gradient_checkpointing is not None and gradient_checkpointing != self.gradient_checkpointing:
            if gradient_checkpointing:
                # Non-reentrant: works with frozen inputs (LoRA) and is what current trainers use.
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_disable()
            self.gradient_checkpointing = gradient_checkpointing

    def make_optimizer(self):
        return trainer_optimizer(self.model)

    def backward(self, loss) -> None:
        loss.backward()  # a sharding engine (DeepSpeed) substitutes its own

    def release_grads(self) -> None:
        self.model.zero_grad(set_to_none=True)

    def make_batch(self, batch_size: int) -> dict:
        """Worst case: every sample exactly max_length tokens, nothing padded away."""
        length = self.spec.max_length
        device = self.device.torch_device
        input_ids = torch.randint(0, self.vocab_size, (batch_size, length), device=device)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "labels": input_ids,
        }

    def tokens_per_batch(self, batch_size: int) -> int:
        return batch_size * self.spec.max_length


def load_workload(source: ModelSource, spec: ProbeSpec, device) -> Workload:
    check_max_length(source.config, spec.max_length)
    model = build_model(source, spec, device)
    if spec.train_type == "lora":
        model = apply_lora(model, spec)
    model.train()
    device.adopt(list(model.parameters()) + list(model.buffers()))
    total, trainable = count_parameters(model)
    workload = Workload(model, source, spec, device, total, trainable, attn_implementation=spec.attn_implementation)
    workload.configure(gradient_checkpointing=spec.gradient_checkpointing)
    # Move the loaded model's objects out of the collector's reach: a full collection between
    # trials then scans only what the trials made (0.3 s -> milliseconds with transformers loaded).
    gc.collect()
    gc.freeze()
    return workload
