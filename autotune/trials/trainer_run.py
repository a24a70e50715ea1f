"""Build the Trainer a trial runs, and put the model back the way it was afterwards.

The `TrainingArguments` are the launch files' (training_args.arguments) plus what only a
short probe needs: `max_steps`, evaluation every `eval_every` steps, no saving, no logging,
no reports. The datasets are worst-case samples made by the workload (every sample at the
worst case the spec names); the collator builds each batch on the host, where a DataLoader
builds it, and the Trainer (accelerate's DataLoader wrapper) moves it to the device.

How the eval phase keeps its outputs (training_args.EVAL_OUTPUTS) is decided by what the
Trainer is given, as in the user's run: no `compute_metrics` (loss only), a `compute_metrics`
(logits kept), `preprocess_logits_for_metrics` returning argmax ids, or a `Seq2SeqTrainer`
with `predict_with_generate`.
"""

from __future__ import annotations


import torch

from ..recipe.training_args import arguments, eval_outputs_of
from .scratch import scratch_dir
from ..model import kv_cache
from ..model.workload import input_grad_hooked


class WorstCase(torch.utils.data.Dataset):
    """`length` samples; their content is made by the collator at the worst case."""

    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        return index


def _no_metrics(prediction) -> dict:
    return {}  # the outputs were kept, as a real compute_metrics makes the Trainer keep them


def _argmax(logits, labels):
    """What ms-swift's `acc` metric keeps (and HF's usual preprocess). A vision-language model's
    outputs come as a tuple (logits first, then e.g. image outputs)."""
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits.argmax(dim=-1)


def trainer_arguments(workload, settings: dict, train_steps: int, eval_every: int | None, outputs: str) -> dict:
    """The launch files' TrainingArguments values for `settings`, and the probe's run control."""
    spec, device = workload.spec, workload.device
    values = {"torch_dtype": spec.dtype, "optim": spec.optim, **settings}
    args = arguments(values)
    args.update(
        output_dir=scratch_dir(), max_steps=train_steps, save_strategy="no", logging_strategy="no", report_to="none",
        disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0, seed=spec.seed,
        use_cpu=device.kind != "cuda", dataloader_pin_memory=device.kind == "cuda",
        eval_strategy="steps" if eval_every else "no",
    )
    if eval_every:
        args["eval_steps"] = eval_every
    if outputs == "generate":
        args["predict_with_generate"] = True
    return args


def build_trainer(workload, settings: dict, train_steps: int, eval_every: int | None, eval_steps: int, meter):
    """The Trainer for one run, and what `restore_model` needs to undo its changes to the model."""
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments

    if workload.spec.rlhf is not None:
        return _rlhf_trainer(workload, settings, train_steps, eval_every, eval_steps, meter)
    outputs = eval_outputs_of(settings) if eval_every else "loss"
    generate = outputs == "generate"
    args = (Seq2SeqTrainingArguments if generate else TrainingArguments)(**trainer_arguments(workload, settings, train_steps, eval_every, outputs))
    if workload.device.kind == "cuda":
        _ = args.device  # sets up the devices; then one card only (no DataParallel over the host's cards)
        args._n_gpu = 1
    world = max(1, args.world_size)
    train_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * world
    eval_batch = int(settings.get("per_device_eval_batch_size") or 1)
    saved = _model_state(workload, settings, generate)
    kwargs = {}
    if eval_every and outputs != "loss":
        kwargs["compute_metrics"] = _no_metrics
        if outputs == "argmax":
            kwargs["preprocess_logits_for_metrics"] = _argmax
    trainer_cls = Seq2SeqTrainer if generate else Trainer
    trainer = trainer_cls(
        model=workload.model, args=args, train_dataset=WorstCase(train_batch * train_steps),
        eval_dataset=WorstCase(eval_batch * world * eval_steps) if eval_every else None,
        data_collator=_Collator(workload, batch_layout(settings)), callbacks=[meter], **kwargs,
    )
    _quiet(trainer)
    _cache_as_launched(workload, saved)
    return trainer, saved


def _cache_as_launched(workload, saved: dict) -> None:
    """The Trainer has switched `use_cache` off in the model's top config; an ms-swift launch
    switches it off in the language model's configs too before training (model/kv_cache.py),
    so a vision-language model's evaluation builds no KV cache there."""
    if workload.spec.use_cache_off_in_sub_configs:
        saved["use_cache"] = kv_cache.switch_off_sub_configs(workload.model)


def _quiet(trainer) -> None:
    from transformers import PrinterCallback, ProgressCallback

    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)


def _rlhf_trainer(workload, settings: dict, train_steps: int, eval_every: int | None, eval_steps: int, meter):
    """TRL's GRPOTrainer / DPOTrainer (issue #12): the same run control, TRL's own data handling."""
    from . import rlhf_run

    values = trainer_arguments(workload, settings, train_steps, eval_every, "loss")
    strategy = settings.get("strategy")
    if strategy and strategy.startswith("zero"):
        values["deepspeed"] = rlhf_run.deepspeed_config(workload, settings, strategy)
    saved = _model_state(workload, settings, False)
    saved["rlhf"] = True
    try:
        trainer, during = rlhf_run.build_rlhf_trainer(workload, settings, values, train_steps, eval_every, eval_steps, meter)
    except BaseException:
        restore_model(workload, saved)  # TRL may have added its "ref" adapter copy before failing
        raise
    saved["during"] = during
    _quiet(trainer)
    _cache_as_launched(workload, saved)  # `swift rlhf` trains the policy through the same mixin
    return trainer, saved


def batch_layout(settings: dict) -> str | None:
    """How the rows of a batch are laid out: "packing", "padding_free" or None (one sample a row)."""
    return next((k for k in ("packing", "padding_free") if settings.get(k)), None)


class _Collator:
    """Builds each batch on the host, as a DataLoader's collator does; the Trainer moves it."""

    def __init__(self, workload, layout: str | None = None):
        self.workload = workload
        self.layout = layout

    def __call__(self, features: list) -> dict:
        with self.workload.device.host():
            return self.workload.make_batch(len(features), device=torch.device("cpu"), layout=self.layout)


# What accelerate's prepare leaves on the model: its mixed-precision forward wrapper, and a flag
# that makes the next prepare skip the model (the next trial would then run without autocast).
_PREPARED = ("forward", "_original_forward", "_is_accelerate_prepared")


def _model_state(workload, settings: dict, generate: bool) -> dict:
    """What the Trainer (and accelerate) change on the model, to put back after the run."""
    model = workload.model
    saved = {"dict": {k: model.__dict__[k] for k in _PREPARED if k in model.__dict__},
             "hooked": input_grad_hooked(model), "checkpointing": bool(settings.get("gradient_checkpointing"))}
    if generate:
        config = model.generation_config
        saved["generation"] = (config.max_new_tokens, config.min_new_tokens)
        if not settings.get("max_new_tokens"):
            raise ValueError("evaluation with generate() needs max_new_tokens (probe with --max-new-tokens N)")
        tokens = int(settings["max_new_tokens"])
        config.max_new_tokens = config.min_new_tokens = tokens  # the worst case: every sample generates all of them
    return saved


def restore_model(workload, saved: dict | None) -> None:
    """Undo the run's changes to the model: accelerate's mixed-precision forward wrapper, the
    checkpointing the Trainer enabled (and the embedding hook it added), the generation limits,
    ms-swift's KV cache switches, and the gradients an interrupted step left."""
    model = workload.model
    if saved is not None:
        for key in _PREPARED:
            model.__dict__.pop(key, None)
        if saved.get("rlhf"):
            from .rlhf_run import restore_reference

            restore_reference(workload, _PREPARED)
        model.__dict__.update(saved["dict"])
        if saved["checkpointing"]:
            disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
            disable()
            if not saved["hooked"] and input_grad_hooked(model):
                model.disable_input_require_grads()
        if "generation" in saved:
            model.generation_config.max_new_tokens, model.generation_config.min_new_tokens = saved["generation"]
        kv_cache.put_back(saved.get("use_cache"))
    workload.gradient_checkpointing = False
    workload.release_grads()
    model.train()  # a run that ends in an evaluation leaves the model in eval mode
