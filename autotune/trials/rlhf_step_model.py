"""A model of TRL's GRPO and DPO optimizer steps (TRL 1.16), for where TRL's trainers cannot drive.

An RLHF probe trial runs TRL's `GRPOTrainer` / `DPOTrainer` (trials/rlhf_run.py). Under fake
tensors they cannot run, for the Trainer's reasons (trials/step_model.py: `.to()` cannot swap fake
parameters, `.item()` has no value; TRL's metrics read values on every step). So `autotune plan
--rlhf-type` runs this model of what the trainers do to memory, with TRL's own pieces wherever
they run on fake tensors: the fused LM head TRL patches onto the policy and the reference
(`add_fused_lm_head`: per-token log-probs in chunks, the (batch, length, vocabulary) logits never
materialised), GRPO's `_get_per_token_logps_and_entropies` (the forward in chunks of the
per-device batch, only the completion scored), `shuffle_sequence_dict` and `split_tensor_dict`.
tests/test_rlhf_plan.py pins it against TRL trials on the sim device within 2%.

GRPO, per optimizer step of `accumulation` micro-batches of `batch` completions, as TRL's
`_prepare_inputs` runs it (one generation every `steps_per_generation` micro-batches, which
defaults to the accumulation):
- generation: the rollout engine hands over prompt and completion ids (an external engine, or
  vLLM colocated: no training-side memory beyond the ids); a colocated engine's share is held
  on the card, all of it while generating (`share`), `resident` of it for the whole step;
- under no_grad: the old policy's log-probs only where TRL computes them (the generation does not
  line up with the optimizer step, or a real vLLM's importance sampling), the reference's where
  beta != 0 (the reference model, or the policy with its adapter off / TRL's frozen "ref" copy);
- the generation batch buffered (shuffled, split per micro-batch), the previous buffer alive
  until the new one replaces it, as TRL keeps `_buffered_inputs`;
- per micro-batch: the policy forward with the fused head (log-probs and entropies of the
  completion), TRL's default loss (`dapo`: clipped ratio, the KL term where beta != 0), backward;
  then the Trainer's clipping, `optimizer.step()`, `zero_grad(set_to_none=True)`.
Evaluation (after one optimizer step): generation and scoring of an eval batch, the loss under
no_grad, as `prediction_step` runs `compute_loss`.

DPO: the Trainer fetches every micro-batch of the step first (chosen and rejected concatenated
into one batch of 2 x batch rows at `max_length`); per micro-batch the policy's fused forward
(log-probs, entropy, mean logits, top-1: DPOTrainer's outputs), the reference's forward under
no_grad unless the reference log-probs were precomputed, the sigmoid loss, backward.

A vision-language policy (Qwen2-VL, Qwen2.5-VL): the prompts carry the family's worst-case
images (`vision_rows`) and every forward gets their `pixel_values`, `image_grid_thw`,
`num_images` and `mm_token_type_ids` as TRL passes them; GRPO's buffer splits the image rows per
sample and shuffles them with TRL's own functions; DPO's rows repeat the images for chosen and
rejected. TRL's DPO switches dropout off (`dropout_as_trl_sets_it`).

GRPO's reward models passed as models (`--reward-model`) score every completion of the generation
after the no_grad forwards, in one forward each (`score`); their weights are resident all along.
They read text alone (trials/rlhf_data.py `reward_tokens`): of a vision-language prompt, its words.

Left out (small next to the step): TRL's metrics, the rewards' host-side work. Checkpointing is
not switched off around the no_grad forwards as TRL does (`disable_gradient_checkpointing`):
under no_grad a checkpointed layer saves nothing, so the memory is the same. Generating with the
policy's `generate()` (`--use-vllm` off) is not modelled: TRL reads the generated ids by value
(the first EOS, `.tolist()`), which fake tensors do not have; the plan refuses it.
"""

from __future__ import annotations

import contextlib
import types

import torch

from ..recipe.training_args import mixed_precision
from .step_model import MAX_GRAD_NORM, launched_forward, optimizer_step
from .rlhf_data import reward_tokens
from .rlhf_run import trial_generation_batch
from .rlhf_step_inputs import device_ids, dropout_as_trl_sets_it, vision_of, vision_rows

GRPO_OUTPUTS = ("log_probs", "entropy")
DPO_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")
EPSILON = 0.2  # GRPOConfig's epsilon (and epsilon_high's default)


def _autocast(workload):
    """`accelerator.autocast()` of the Trainer's mixed precision."""
    precision = mixed_precision(workload.spec.dtype)
    if precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(workload.device.torch_device.type, dtype=dtype)


@contextlib.contextmanager
def fused_heads(workload):
    """TRL's fused LM head on the policy (its base model under PEFT) and on the reference, as the
    trainers patch them in their constructors; removed afterwards."""
    from peft import PeftModel
    from trl.trainer.utils import add_fused_lm_head

    model = workload.model
    policy = model.get_base_model() if isinstance(model, PeftModel) else model
    outputs = GRPO_OUTPUTS if workload.spec.rlhf.rlhf_type == "grpo" else DPO_OUTPUTS
    patched = [(policy, outputs)] + ([(workload.reference, ("log_probs",))] if getattr(workload, "reference", None) is not None else [])
    saved = [(m, m.__dict__.get("forward")) for m, _ in patched]
    for m, fields in patched:
        add_fused_lm_head(m, outputs=fields)
    try:
        yield
    finally:
        for m, original in saved:
            m.__dict__.pop("forward", None)
            if original is not None:
                m.forward = original


def _reference(workload):
    """(the module the reference forward runs on, the context it runs in)."""
    reference = getattr(workload, "reference", None)
    if reference is not None:
        return reference, contextlib.nullcontext()
    return workload.model, workload.model.disable_adapter()  # LoRA: the base model is the reference


class GRPOState:
    """What lives across GRPO steps: the optimizer, the buffered generation, the micro-step count."""

    def __init__(self, optimizer):
        self.optimizer, self.buffered, self.step = optimizer, None, 0


def _logps(workload, model, ids, mask, completion: int, batch: int, entropy: bool, vision: dict | None = None):
    """GRPOTrainer._get_per_token_logps_and_entropies itself (its `self` needs only the autocast);
    `vision`: a vision-language policy's forward inputs, as TRL passes them (rlhf_step_inputs.py)."""
    from trl import GRPOTrainer

    shim = types.SimpleNamespace(accelerator=types.SimpleNamespace(autocast=lambda: _autocast(workload), is_main_process=True))
    method = GRPOTrainer._get_per_token_logps_and_entropies
    method = getattr(method, "__wrapped__", method)  # TRL's profiling wrapper wants a whole trainer
    logps, entropies, _ = method(shim, model, ids, mask, completion, batch_size=batch, compute_entropy=entropy,
                                 **(vision or {}))
    return logps, entropies


def computes_old_logps(rlhf, accumulation: int, vllm_generates: bool) -> bool:
    """TRL computes the old policy's log-probs when the generation does not line up with the
    optimizer step, or when vLLM generates (its importance-sampling correction, on by default)."""
    return accumulation % (rlhf.steps_per_generation or accumulation) != 0 or vllm_generates


def generate_and_score(workload, rows: int, batch: int, share: tuple = (0, 0), vllm_generates: bool = False,
                       accumulation: int = 1, moments: list | None = None) -> dict:
    """TRL's `_generate_and_score_completions` for `rows` completions: the engine's ids (its whole
    share held while it generates, `share` = (whole, already held)), the no_grad forwards, the
    advantages. `moments` receives the live bytes when the engine generates (its share excluded)."""
    rlhf, device = workload.spec.rlhf, workload.device
    prompt, completion = workload.spec.max_length, rlhf.completion_length
    whole, held = share
    with device.reserved(max(whole - held, 0)) if whole > held else contextlib.nullcontext():
        if moments is not None:
            moments.append(device.allocated_bytes() - whole)
        vision = vision_rows(workload, rows, completion)
        if vision is None:
            prompt_ids, prompt_mask = device_ids(workload, rows, prompt)
        else:
            prompt_ids, prompt_mask = vision.pop("input_ids"), vision.pop("attention_mask")
        completion_ids, completion_mask = device_ids(workload, rows, completion)
    output = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
              "completion_mask": completion_mask, **(vision or {})}
    num_items = completion_mask.sum()
    ids, mask = torch.cat([prompt_ids, completion_ids], dim=1), torch.cat([prompt_mask, completion_mask], dim=1)
    with torch.no_grad():
        if computes_old_logps(rlhf, accumulation, vllm_generates):
            output["old_per_token_logps"] = _logps(workload, workload.model, ids, mask, completion, batch, False, vision)[0]
        if rlhf.kl_beta != 0.0:
            model, context = _reference(workload)
            with context:
                output["ref_per_token_logps"] = _logps(workload, model, ids, mask, completion, batch, False, vision)[0]
    rewards = score(workload, rows, reward_tokens(workload))
    grouped = rewards.view(-1, rlhf.generations if workload.model.training else _eval_group(rows, rlhf.generations))
    output["advantages"] = (rewards - grouped.mean(dim=1).repeat_interleave(grouped.size(1))) / (
        grouped.std(dim=1, correction=int(grouped.size(1) > 1)).repeat_interleave(grouped.size(1)) + 1e-4)
    output["num_items_in_batch"] = num_items
    del ids, mask
    return output


def score(workload, rows: int, length: int):
    """The rewards of `rows` completions, as TRL's `_calculate_rewards` computes them. Reward models
    passed as models (`workload.reward_models`) each read every completion after its prompt's text
    (`length` tokens of their own vocabulary, tokenized on the host and copied to the card as
    `_prepare_inputs` copies them) in one forward of all the rows, under inference mode and the
    Trainer's autocast (accelerate prepares them in evaluation mode), into a (rows, models) fp32
    tensor; their weighted sum is the reward. Without reward models, a reward function's values."""
    device = workload.device
    models = getattr(workload, "reward_models", None) or ()
    if not models:
        return torch.rand(rows, device=device.torch_device)
    per_model = torch.zeros(rows, len(models), device=device.torch_device)
    for i, model in enumerate(models):
        ids, mask = device_ids(workload, rows, length, model.config.vocab_size)
        with torch.inference_mode(), _autocast(workload):
            per_model[:, i] = model(input_ids=ids, attention_mask=mask).logits[:, 0]
        del ids, mask
    return per_model.sum(dim=1)


def _eval_group(rows: int, generations: int) -> int:
    from .rlhf_run import eval_generations

    return eval_generations(rows, 1, generations)


def grpo_loss(workload, inputs: dict):
    """GRPOTrainer._compute_loss at its defaults (loss_type dapo, token-level importance sampling)."""
    rlhf = workload.spec.rlhf
    completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
    ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
    attention = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)
    logps, entropies = _logps(workload, workload.model, ids, attention, completion_ids.size(1), ids.size(0), True,
                              vision_of(inputs))
    old = inputs.get("old_per_token_logps")
    old = logps.detach() if old is None else old
    coef_1 = torch.exp(logps - old)
    coef_2 = torch.clamp(coef_1, 1 - EPSILON, 1 + EPSILON)
    advantages = inputs["advantages"].unsqueeze(1)
    per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
    if rlhf.kl_beta != 0.0:
        ref = inputs["ref_per_token_logps"]
        per_token_loss = per_token_loss + rlhf.kl_beta * (torch.exp(ref - logps) - (ref - logps) - 1)
    mask = completion_mask
    return (per_token_loss * mask).sum() / inputs["num_items_in_batch"].clamp(min=1.0), entropies


def _grpo_step(workload, params, state: GRPOState, batch: int, accumulation: int, share: tuple, vllm_generates: bool,
               moments: list | None) -> None:
    from trl.trainer.utils import shuffle_sequence_dict, split_pixel_values_by_grid, split_tensor_dict, unsplit_pixel_values_by_grid

    rlhf = workload.spec.rlhf
    per_generation = rlhf.steps_per_generation or accumulation
    rows = trial_generation_batch(batch, accumulation, 1, rlhf.generations, rlhf.steps_per_generation)
    chunks = max(1, rows // batch)
    # Each optimizer step modelled starts a generation (the step the peak is read from; with
    # steps_per_generation > accumulation, TRL generates only on some steps and reuses the buffer).
    state.step = 0
    for _ in range(accumulation):
        if state.step % per_generation == 0 or state.buffered is None:
            generated = generate_and_score(workload, rows, batch, share, vllm_generates, accumulation, moments)
            generated = shuffle_sequence_dict(split_pixel_values_by_grid(generated))
            state.buffered = [unsplit_pixel_values_by_grid(part) for part in split_tensor_dict(generated, chunks)]
            del generated
        inputs = state.buffered[state.step % chunks]
        loss, entropies = grpo_loss(workload, inputs)
        workload.backward(loss)
        del loss, entropies, inputs
        state.step += 1
    torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)


def dpo_batch(workload, batch: int) -> dict:
    """DPO's collated batch: chosen and rejected rows concatenated, `max_length` tokens each, the
    prompt half of each row (a vision-language prompt: its images and at least one word, with the
    images repeated for chosen and rejected, as TRL's vision collator repeats them)."""
    rows, length = 2 * batch, workload.spec.max_length
    vision = vision_rows(workload, rows)
    if vision is None:
        ids, attention = device_ids(workload, rows, length)
        prompt, out = length // 2, {}
    else:
        ids, attention = vision.pop("input_ids"), vision.pop("attention_mask")
        prompt, out = max(length // 2, workload.setup.vision.tokens + 1), vision
        out.pop("num_images")  # the collator's batch has no image counts: each row's images are its own
    device = workload.device
    with device.host():
        completion = torch.ones(rows, length, dtype=torch.long)
        completion[:, :prompt] = 0
    return {"input_ids": ids, "attention_mask": attention, "completion_mask": completion.to(device.torch_device, copy=True), **out}


def dpo_loss(workload, inputs: dict):
    """DPOTrainer._compute_loss at its defaults (sigmoid loss)."""
    rlhf = workload.spec.rlhf
    completion_mask = inputs["completion_mask"]
    labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
    kwargs = {k: v for k, v in inputs.items() if k != "completion_mask"} | {"use_cache": False}
    outputs = workload.model(**kwargs, labels=labels, fused_lm_head=True)
    length = completion_mask.size(1) - 1
    logps = outputs.log_probs[:, -length:].sum(dim=1)
    chosen, rejected = logps.chunk(2, dim=0)
    if rlhf.precompute_ref_log_probs:
        ref_chosen, ref_rejected = torch.zeros_like(chosen), torch.zeros_like(rejected)
    else:
        model, context = _reference(workload)
        with torch.no_grad(), context, _autocast(workload):
            ref = model(**kwargs, labels=labels, fused_lm_head=True).log_probs[:, -length:].sum(dim=1)
        ref_chosen, ref_rejected = ref.chunk(2, dim=0)
    logits = (chosen - ref_chosen) - (rejected - ref_rejected)
    loss = -torch.nn.functional.logsigmoid(rlhf.kl_beta * logits).mean()
    del outputs
    return loss


def _dpo_step(workload, params, optimizer, batch: int, accumulation: int, held: list | None) -> None:
    batches = [dpo_batch(workload, batch) for _ in range(max(accumulation, 1))]
    optimizer_step(workload, params, optimizer, batches, lambda inputs: dpo_loss(workload, inputs), held)
    del batches


@contextlib.contextmanager
def stepping(workload, optimizer=None, share: tuple = (0, 0), vllm_generates: bool = False, moments: list | None = None):
    """trials/step_model.stepping's interface for an RLHF step: inside, `step(batch, accumulation=1,
    held=None)` runs one optimizer step. `share`: (the colocated engine's whole share, what of it
    stays held while training), held on the device as the trials hold it; `moments` receives the
    live bytes at each generation without the share."""
    device, model = workload.device, workload.model
    optimizer = optimizer or workload.make_optimizer()
    state = optimizer if isinstance(optimizer, GRPOState) else GRPOState(optimizer)
    params = [p for p in model.parameters() if p.requires_grad]
    whole, held_share = share
    grpo = workload.spec.rlhf.rlhf_type == "grpo"

    def step(batch_size, accumulation=1, held=None):
        if grpo:
            _grpo_step(workload, params, state, batch_size, accumulation, share, vllm_generates, moments)
        else:
            _dpo_step(workload, params, state.optimizer, batch_size, accumulation, held)

    with device.tracking(), fused_heads(workload), dropout_as_trl_sets_it(workload), launched_forward(workload), \
            device.reserved(held_share):
        yield step


def train_steps(workload, batch_size: int, steps: int, accumulation: int = 1, share: tuple = (0, 0),
                vllm_generates: bool = False) -> int:
    """`steps` optimizer steps; the peak from step 2 on (where the trials' callback reads it)."""
    with stepping(workload, None, share, vllm_generates) as step:
        for index in range(steps):
            if index == 1:
                workload.device.reset_peak()
            step(batch_size, accumulation)
        return workload.device.peak_bytes()


def train_before_eval(workload, settings: dict, share: tuple = (0, 0)) -> tuple:
    """The optimizer step an evaluation follows; keep what it returns alive while evaluating."""
    held: list = []
    state = GRPOState(workload.make_optimizer())
    with stepping(workload, state, share) as step:
        step(int(settings.get("per_device_train_batch_size") or 1), int(settings.get("gradient_accumulation_steps") or 1), held)
    return state, held


def evaluate(workload, batch_size: int, steps: int, settings: dict, share: tuple = (0, 0), moments: list | None = None) -> int:
    """`steps` evaluation steps as TRL's `prediction_step` runs them (GRPO: generate and score the
    eval batch, then the loss; DPO: the loss), under no_grad; the peak."""
    device, model = workload.device, workload.model
    grpo = workload.spec.rlhf.rlhf_type == "grpo"
    whole, held_share = share
    model.eval()
    try:
        with device.tracking(), fused_heads(workload), dropout_as_trl_sets_it(workload), launched_forward(workload), \
                device.reserved(held_share), torch.no_grad():
            device.reset_peak()
            inputs = loss = None
            for _ in range(steps):
                if grpo:
                    inputs = generate_and_score(workload, batch_size, batch_size, share, moments=moments)
                    loss = grpo_loss(workload, inputs)[0]
                else:
                    inputs = dpo_batch(workload, batch_size)
                    loss = dpo_loss(workload, inputs)
            del inputs, loss
            return device.peak_bytes()
    finally:
        model.train()
