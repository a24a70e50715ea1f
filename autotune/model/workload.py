"""The workload: the model as the user trains it, the optimizer the real trainer would build,
and the worst-case batch (every sample exactly max_length tokens, labels = input ids)."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import tempfile
from dataclasses import dataclass

import torch

from ..errors import UsageError
from . import packing
from .source import ModelSource, check_max_length
from ..recipe.lora import peft_target
from ..spec import ProbeSpec
from .training_setup import Setup, check_optimizer, plan_inputs, prepare

# Trial settings that change the worst-case input itself (the sequence and media frontier,
# issue #14), in the recipe's names; a trial without them runs at the spec's.
SHAPE_KEYS = ("max_length", "max_pixels", "video_frames")
TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def count_parameters(model) -> tuple[int, int]:
    total = trainable = 0
    for p in model.parameters():
        state = getattr(p, "quant_state", None)  # bitsandbytes 4-bit: two weights per stored byte
        n = state.shape.numel() if state is not None else p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return total, trainable


def build_model(source: ModelSource, spec: ProbeSpec, device, family=None):
    """Build on the target device directly: random init runs there (fast on a GPU), and real
    weights go straight to it. A vision-language family names its own model class."""
    from transformers import AutoModelForCausalLM

    auto = family.model_cls() if family else AutoModelForCausalLM
    build_from_config = auto._from_config if family else auto.from_config
    dtype = TORCH_DTYPES[spec.dtype]
    kwargs = dict(dtype=dtype, attn_implementation=spec.attn_implementation)
    torch.manual_seed(spec.seed)
    try:
        if source.kind == "weights":
            model = auto.from_pretrained(source.path, device_map={"": device.torch_device}, **kwargs)
        else:
            with torch.device(device.torch_device):
                model = build_from_config(source.config, **kwargs)
    except ImportError as exc:  # e.g. flash_attention_2 without flash-attn
        raise UsageError("--attn", f"cannot build the model with {spec.attn_implementation}: {exc}", "choose --attn sdpa or eager") from None
    return model


def apply_lora(model, spec: ProbeSpec, target_modules: list[str] | None = None, on_meta: bool = False):
    """`target_modules`: explicit layer names (a vision-language model's unfrozen parts);
    None: --lora-target-modules / --lora-target-regex. `on_meta`: the base model is on the meta
    device (a plan), so peft makes the adapters there too (`low_cpu_mem_usage`) instead of
    initialising each on the CPU first: the same modules, shapes and dtypes, and 70B's 560
    adapters in a fraction of the time."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.lora_r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=peft_target(spec.lora_target_modules, spec.lora_target_regex) if target_modules is None else target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config, low_cpu_mem_usage=on_meta)


def trainer_optimizer(model, learning_rate: float = 1e-4, optim: str | None = None):
    """The optimizer the Hugging Face Trainer creates for these parameters, on this torch:
    same class and kwargs (adamw_torch_fused on torch >= 2.8), built by the Trainer's own code.
    `optim`: a TrainingArguments `optim` name (bitsandbytes' 8-bit / paged AdamW...)."""
    optimizer_cls, kwargs = _trainer_optimizer_choice(model, learning_rate, optim)
    params = [p for p in model.parameters() if p.requires_grad]
    return optimizer_cls(params, **kwargs)


_CHOICES: dict = {}


def _trainer_optimizer_choice(model, learning_rate: float, optim: str | None):
    """Asked once per (optim, learning rate): building TrainingArguments takes ~2 s, and every
    trial makes a fresh optimizer. The AdamW family's choice does not depend on the model."""
    key = (optim, learning_rate)
    if key not in _CHOICES:
        from transformers import Trainer, TrainingArguments

        extra = {"optim": optim} if optim else {}
        with tempfile.TemporaryDirectory() as tmp:
            args = TrainingArguments(output_dir=tmp, report_to=[], learning_rate=learning_rate,
                                     use_cpu=not torch.cuda.is_available(), **extra)
            _CHOICES[key] = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return _CHOICES[key]


def input_grad_hooked(model) -> bool:
    """Whether the embeddings carry transformers' make-inputs-require-grad hook."""
    return bool(getattr(model, "_require_grads_hooks", None) or getattr(model, "_require_grads_hook", None))


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
    setup: Setup | None = None  # family, worst-case media, freezing (vision-language models)

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
            # transformers 5.23 renamed gradient checkpointing to activation checkpointing.
            renamed = hasattr(self.model, "activation_checkpointing_enable")
            if gradient_checkpointing:
                had_hook = input_grad_hooked(self.model)
                # Non-reentrant: works with frozen inputs (LoRA) and is what current trainers use.
                kwargs = {"use_reentrant": False}
                if renamed:
                    self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
                else:
                    self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
                self._added_input_grad_hook = not had_hook and input_grad_hooked(self.model)
            else:
                if renamed:
                    self.model.activation_checkpointing_disable()
                else:
                    self.model.gradient_checkpointing_disable()
                # Enabling made the embeddings' output require grad (for a frozen base under LoRA);
                # disabling leaves that hook on a peft wrapper, and a run without checkpointing
                # never has it: its extra activation gradient would be counted.
                if getattr(self, "_added_input_grad_hook", False):
                    self.model.disable_input_require_grads()
                    self._added_input_grad_hook = False
            self.gradient_checkpointing = gradient_checkpointing

    def make_optimizer(self):
        return trainer_optimizer(self.model, optim=self.spec.optim)

    def backward(self, loss) -> None:
        loss.backward()  # a sharding engine (DeepSpeed) substitutes its own

    def release_grads(self) -> None:
        self.model.zero_grad(set_to_none=True)

    def make_batch(self, batch_size: int, device=None, layout: str | None = None) -> dict:
        """Worst case: every sample exactly max_length tokens, nothing padded away; for a
        vision-language model, the media at their limits inside those tokens. `device`: where
        to build it (default: the workload's device; the trials' collator builds on the host).
        `layout` (issue #15, model/packing.py): "packing" -- rows of max_length tokens holding
        several samples (positions restart, no attention mask: transformers masks the packed rows
        from the position ids; a vision-language row holds as many samples at the media limits as
        fit); "padding_free" -- a text batch as one row, positions restarting every max_length
        tokens."""
        device = device or self.device.torch_device
        length = self.spec.max_length
        if self.setup is not None and self.setup.family is not None:
            config, vplan = self.source.config, self.setup.vision
            if layout == "packing":
                return packing.vision_rows(self.setup.family, config, vplan, batch_size, length, device, packing.uses_mrope(config))
            return self.setup.family.inputs(config, vplan, batch_size, length, device)
        input_ids = torch.randint(0, self.vocab_size, (batch_size, length), device=device)
        if layout == "packing":
            return packing.text_rows(input_ids)
        if layout == "padding_free":
            return packing.text_rows(input_ids.reshape(1, -1), samples=batch_size)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "labels": input_ids,
        }

    @contextlib.contextmanager
    def shaped(self, settings: dict):
        """The worst case at a trial's own max_length / max_pixels / video_frames (a frontier
        search's trial), back to the spec's afterwards."""
        changes = {k: settings[k] for k in SHAPE_KEYS if settings.get(k) is not None and settings[k] != getattr(self.spec, k)}
        if not changes:
            yield
            return
        saved = self.spec, self.setup
        self.spec = self.spec.replace(**changes)
        if self.setup is not None and self.setup.family is not None:
            from .multimodal import plan_for

            self.setup = dataclasses.replace(self.setup, vision=plan_for(self.setup.family, self.source.config, self.spec))
        try:
            yield
        finally:
            self.spec, self.setup = saved

    def tokens_per_batch(self, batch_size: int) -> int:
        """Tokens trained on per batch: GRPO's samples are completions of prompt + completion
        tokens, DPO's pairs are a chosen and a rejected sequence."""
        rlhf = self.spec.rlhf
        if rlhf is not None and rlhf.rlhf_type == "grpo":
            return batch_size * (self.spec.max_length + rlhf.completion_length)
        if rlhf is not None:
            return batch_size * 2 * self.spec.max_length
        return batch_size * self.spec.max_length


def load_workload(source: ModelSource, spec: ProbeSpec, device) -> Workload:
    check_max_length(source.config, spec.max_length)
    check_optimizer(spec.optim, device)
    setup = plan_inputs(source, spec)
    model = build_model(source, spec, device, setup.family)
    model = prepare(model, setup, spec, device, apply_lora)
    model.train()
    device.adopt(list(model.parameters()) + list(model.buffers()) + _quant_state(model, spec))
    total, trainable = count_parameters(model)
    workload = Workload(model, source, spec, device, total, trainable, attn_implementation=spec.attn_implementation, setup=setup)
    workload.configure(gradient_checkpointing=spec.gradient_checkpointing)
    # Move the loaded model's objects out of the collector's reach: a full collection between
    # trials then scans only what the trials made (0.3 s -> milliseconds with transformers loaded).
    gc.collect()
    gc.freeze()
    return workload


def _quant_state(model, spec: ProbeSpec) -> list:
    if spec.train_type != "qlora":
        return []
    from .quantize import quant_state_tensors

    return quant_state_tensors(model)
