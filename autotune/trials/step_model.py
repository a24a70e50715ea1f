"""A model of the Trainer's step, for where the Trainer itself cannot drive.

A probe trial runs the real `Trainer` (trials/trial.py). Under fake tensors the Trainer cannot run:
it moves the model with `.to()` (which cannot swap fake parameters) and reads the loss with
`.item()` (fake tensors have no values). So `autotune plan` runs this short model of what the
Trainer does to memory, and the tests pin it against real Trainer trials on the sim device
(tests/test_plan.py, within 2%). The cluster workers run it too on a model already wrapped by
a sharding engine (DDP, FSDP2, DeepSpeed through accelerate), until the Trainer's own
DeepSpeed/FSDP path through its arguments replaces that:

- training: accelerate's own mixed-precision wrapper on the forward (autocast, outputs
  converted to fp32), backward, the Trainer's gradient clipping (`max_grad_norm` 1.0),
  `optimizer.step()`, `zero_grad(set_to_none=True)`; peak from step 2 on;
- evaluation: after one optimizer step, with the optimizer state resident; outputs kept as the
  Trainer keeps them (training_args.EVAL_OUTPUTS): the previous step's outputs stay alive while
  the next forward runs, and the kept ones are concatenated until `eval_accumulation_steps`;
- both: `use_cache` off in the top config, as the Trainer's constructor sets it, and in the
  language model's configs too for an ms-swift launch (model/kv_cache.py).
"""

from __future__ import annotations

import contextlib
import time

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten
from transformers.trainer_pt_utils import nested_concat

from ..model import kv_cache
from ..recipe.training_args import eval_outputs_of, mixed_precision

MAX_GRAD_NORM = 1.0  # TrainingArguments' default


@contextlib.contextmanager
def launched_forward(workload):
    """The model's forward as the launched run has it: `use_cache` off where the launch switches
    it off (the Trainer: the top config; ms-swift: the language model's too, model/kv_cache.py),
    and accelerate's wrapper for the Trainer's mixed precision (under DeepSpeed the engine runs
    its own bf16/fp16, without autocast)."""
    with kv_cache.as_launched(getattr(workload, "inner", None) or workload.model, workload.spec.use_cache_off_in_sub_configs):
        with _mixed_precision_forward(workload):
            yield


@contextlib.contextmanager
def _mixed_precision_forward(workload):
    model = workload.model
    precision = mixed_precision(workload.spec.dtype)
    if precision == "no" or getattr(workload, "engine", None) is not None:
        yield
        return
    from accelerate.utils import convert_outputs_to_fp32

    original = model.__dict__.get("forward")
    forward = model.forward
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16

    def wrapped(*args, **kwargs):
        with torch.autocast(workload.device.torch_device.type, dtype=dtype):
            return forward(*args, **kwargs)

    model.forward = convert_outputs_to_fp32(wrapped)
    try:
        yield
    finally:
        model.__dict__.pop("forward", None)
        if original is not None:
            model.forward = original


def device_batch(workload, batch_size: int) -> dict:
    """A worst-case batch as the Trainer's DataLoader hands it over: built in host memory, then
    each tensor copied to the device (two tensors sharing a host storage, like input ids and
    labels, become two device copies)."""
    device = workload.device
    with device.host():
        batch = workload.make_batch(batch_size, device=torch.device("cpu"))
    return {k: v.to(device.torch_device, copy=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _train_step(workload, params, optimizer, batch_size: int, accumulation: int = 1, held: list | None = None) -> None:
    """One optimizer step as the Trainer runs it. The Trainer fetches every micro-batch of the
    step (and accelerate moves each to the device) before the first forward, so they are
    resident together; `held` receives them (the Trainer still holds them while it evaluates)."""
    model = workload.model
    batches = [device_batch(workload, batch_size) for _ in range(max(accumulation, 1))]
    optimizer_step(workload, params, optimizer, batches, lambda batch: model(**batch).loss, held)
    del batches


def optimizer_step(workload, params, optimizer, batches: list, loss_of, held: list | None = None) -> None:
    """The Trainer's optimizer step over micro-batches it has fetched: forward (`loss_of`) and
    backward for each, clipping, the step, zero_grad; `held` receives the micro-batches."""
    for batch in batches:
        loss = loss_of(batch)
        workload.backward(loss)
    torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if held is not None:
        held.extend(batches)
    del loss, batch


@contextlib.contextmanager
def stepping(workload, optimizer=None):
    """Inside: `step(batch_size, accumulation=1, held=None)` runs one optimizer step; the
    optimizer (and the state it creates in its first step) lives until the block ends."""
    device, model = workload.device, workload.model
    optimizer = optimizer or workload.make_optimizer()
    params = [p for p in model.parameters() if p.requires_grad]
    with device.tracking(), launched_forward(workload):
        yield lambda batch_size, accumulation=1, held=None: _train_step(workload, params, optimizer, batch_size, accumulation, held)


def train_steps(workload, batch_size: int, steps: int, optimizer=None, timings: list | None = None,
                held: list | None = None, accumulation: int = 1) -> tuple[int, object]:
    """Training steps as the Trainer runs them; returns (peak over steps 2.., the optimizer).
    `held` receives the last step's micro-batches, which the Trainer still holds while it evaluates."""
    device = workload.device
    optimizer = optimizer or workload.make_optimizer()
    with stepping(workload, optimizer) as step:
        for index in range(steps):
            if index == 1:
                device.reset_peak()
            device.synchronize()
            started = time.perf_counter()
            step(batch_size, accumulation, held if index == steps - 1 else None)
            device.synchronize()
            if timings is not None:
                timings.append(time.perf_counter() - started)
        return device.peak_bytes(), optimizer


def _outputs(model, batch: dict, outputs: str, max_new_tokens: int | None):
    if outputs == "generate":
        ids = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], do_sample=False,
                             max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, pad_token_id=0)
        out = model(**batch)
        return out.loss, ids
    out = model(**batch)
    if outputs == "loss":
        return out.loss, None
    if outputs == "argmax":
        return out.loss, out.logits.argmax(dim=-1)
    # Every output but the loss, as the Trainer's prediction_step keeps them: a vision-language
    # model's image encoder outputs ride along with the logits.
    ignore = getattr(model.config, "keys_to_ignore_at_inference", ["cache"])
    kept = tuple(value for key, value in out.items() if key not in (*ignore, "loss"))
    return out.loss, (kept[0] if len(kept) == 1 else kept)


def _alike(outputs):
    """New tensors with the shapes, strides, dtypes and storages (their sizes, and which share
    one) of `outputs`: what another run of the same forward returns."""
    flat, tree = tree_flatten(outputs)
    storages: dict[int, torch.Tensor] = {}
    made = []
    for tensor in flat:
        if not isinstance(tensor, torch.Tensor):
            made.append(tensor)
            continue
        storage = tensor.untyped_storage()
        if storage._cdata not in storages:  # bytes rounded up to 8 (never past the counter's 512-byte block)
            storages[storage._cdata] = torch.empty(-(-storage.nbytes() // 8) * 8, dtype=torch.uint8, device=tensor.device)
        base = storages[storage._cdata].view(tensor.dtype)
        made.append(base.as_strided(tensor.size(), tensor.stride(), tensor.storage_offset()))
    return tree_unflatten(made, tree)


def eval_steps(workload, batch_size: int, steps: int, settings: dict) -> int:
    """Evaluation inside training: one optimizer step first (its state stays resident), then
    `steps` eval steps keeping outputs as the Trainer does. Returns the evaluation's peak."""
    state = train_before_eval(workload, settings)
    try:
        return evaluate(workload, batch_size, steps, settings)
    finally:
        del state


def train_before_eval(workload, settings: dict) -> tuple:
    """The optimizer step a mid-training evaluation follows, at the settings' train batch and
    accumulation: keep what it returns (the optimizer and its state, the step's micro-batches,
    which the Trainer still holds) alive while evaluating; every evaluation after it sees the same."""
    held: list = []
    _, optimizer = train_steps(workload, int(settings.get("per_device_train_batch_size") or 1), 1, held=held,
                               accumulation=int(settings.get("gradient_accumulation_steps") or 1))
    return optimizer, held


def evaluate(workload, batch_size: int, steps: int, settings: dict, first_forward: bool = True) -> int:
    """`steps` eval steps keeping outputs as the Trainer does (after train_before_eval); the peak.
    `first_forward=False` (a plan: a live-bytes counter, fake tensors): forwards are not run
    again where the counter can replay one. Keeping the loss only, the first step makes its
    batch and leaves its loss, a scalar, without running its forward: the second step holds what
    the first held at every moment and the first's leftovers besides, so the peak is the
    second's. Keeping outputs, every forward after the first is the first's again (the same
    batch shapes, the same operators; autocast's casts die with each forward), so the counter
    replays the first's rises from where that step starts and the step gets outputs made alike
    (`_alike`); under fake tensors a forward costs as much at any batch, so this cuts an
    evaluation of 4 steps to 1 forward."""
    device, model = workload.device, workload.model
    outputs = eval_outputs_of(settings)
    replay = not first_forward and outputs != "generate" and hasattr(device, "counter")
    first_forward = first_forward or outputs != "loss" or steps < 2
    accumulate = settings.get("eval_accumulation_steps")
    held = held_labels = None
    model.eval()
    try:
        with device.tracking(), torch.no_grad(), launched_forward(workload):
            device.reset_peak()
            # The Trainer's loop variables: the previous batch lives until the next one is on the
            # device, the previous outputs until the next forward returns (not through the concat).
            batch = loss = kept = None
            rises = None
            for step in range(steps):
                batch = device_batch(workload, batch_size)
                if step == 0 and not first_forward:
                    loss = torch.zeros((), device=device.torch_device)  # the first forward's loss
                    continue
                if rises is not None:
                    device.counter.replay(rises)
                    loss, kept = _alike((loss, kept))
                elif replay:
                    counter = device.counter
                    start, mark, window = counter.current, len(counter.timeline or ()), counter.window_peak
                    counter.start_window()
                    loss, kept = _outputs(model, batch, outputs, settings.get("max_new_tokens"))
                    rises = counter.rises_since(start, mark)
                    counter.window_peak = max(window, counter.window_peak)
                else:
                    loss, kept = _outputs(model, batch, outputs, settings.get("max_new_tokens"))
                if kept is not None:
                    held = kept if held is None else nested_concat(held, kept, padding_index=-100)
                    held_labels = batch["labels"] if held_labels is None else torch.cat([held_labels, batch["labels"]])
                    if accumulate and (step + 1) % accumulate == 0:
                        held = held_labels = None  # moved to the host
            del batch, loss, kept, held, held_labels
            return device.peak_bytes()
    finally:
        model.train()
