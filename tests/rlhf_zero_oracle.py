"""The oracle for an RLHF recipe sharded with DeepSpeed, one torchrun rank per process:
`torchrun --nproc-per-node N tests/rlhf_zero_oracle.py RECIPE BATCH ACCUMULATION OUT.json`.

TRL's GRPOTrainer or DPOTrainer, built here at the recipe's settings (the per-device batch and
accumulation may be changed, for batch + 1) with the DeepSpeed config `emit deepspeed` writes for
it, on the sim device at the recipe's capacity, under gloo. The Trainer initialises the engine; TRL
gathers the ZeRO-3 weights to generate and prepares its reference model itself. Nothing of
autotune's trial code runs: the model and the word-per-id tokenizer come from the workload. Rank
0 writes every rank's peak (or "oom") to OUT.json."""

import dataclasses
import json
import os
import random
import sys


def main(path, batch, accumulation, out):
    import torch
    import torch.distributed as dist
    from datasets import Dataset

    from autotune.check import spec_for
    from autotune.devices import SimDevice
    from autotune.emit.deepspeed import deepspeed_config
    from autotune.model.source import resolve
    from autotune.model.tokenizer import synthetic_tokenizer, text_of
    from autotune.model.workload import build_model, load_workload
    from autotune.recipe.schema import load_recipe

    dist.init_process_group("gloo")
    world = dist.get_world_size()
    recipe = load_recipe(path)
    recipe = dataclasses.replace(recipe, settings=dataclasses.replace(
        recipe.settings, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation))
    s, capacity = recipe.settings, recipe.hardware.capacity_bytes
    device = SimDevice(capacity)
    spec = spec_for(recipe, "sim", capacity, recipe.search.margin)
    workload = load_workload(resolve(spec.model, spec.model_config), spec, device)
    tokenizer, vocab, rng = synthetic_tokenizer(workload.vocab_size), workload.vocab_size, random.Random(dist.get_rank())

    def words(n):
        return text_of(rng.randrange(2, vocab) for _ in range(n))

    common = dict(output_dir="/tmp/autotune-rlhf-oracle", per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                  beta=s.beta, bf16=s.torch_dtype == "bfloat16", gradient_checkpointing=bool(s.gradient_checkpointing), max_steps=3,
                  save_strategy="no", report_to="none", logging_strategy="no", disable_tqdm=True, use_cpu=True,
                  deepspeed=deepspeed_config(recipe))
    if s.rlhf_type == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        generation_batch = batch * accumulation * world
        args = GRPOConfig(**common, num_generations=s.num_generations, max_completion_length=s.max_completion_length,
                          generation_batch_size=generation_batch, log_completions=False,
                          generation_kwargs={"min_new_tokens": s.max_completion_length})  # every completion at full length
        prompts = [words(s.max_length) for _ in range(generation_batch)]
        trainer = GRPOTrainer(model=workload.model, reward_funcs=lambda completions, **kw: [rng.random() for _ in completions],
                              args=args, train_dataset=Dataset.from_dict({"prompt": prompts * 4}), processing_class=tokenizer)
    else:
        from trl import DPOConfig, DPOTrainer

        reference = None
        if recipe.rlhf.get("reference_model") == "loaded":
            reference = build_model(workload.source, spec, device)
            device.adopt(list(reference.parameters()))
        half = s.max_length // 2
        rows = batch * accumulation * world * 4
        # the prompt ends on a space, as the probe's does: TRL joins the strings, and words must not fuse
        pairs = Dataset.from_dict({k: [words(half) + (" " if k == "prompt" else "") for _ in range(rows)]
                                   for k in ("prompt", "chosen", "rejected")})
        args = DPOConfig(**common, max_length=s.max_length)
        trainer = DPOTrainer(model=workload.model, ref_model=reference, args=args, train_dataset=pairs, processing_class=tokenizer)
    peak = "oom"
    try:
        with device.tracking():
            device.reset_peak()
            trainer.train()
        peak = device.peak_bytes()
    except torch.OutOfMemoryError:
        pass  # past the whole card on this rank; its peers stop at the next collective's timeout or error
    peaks = [None] * world
    dist.all_gather_object(peaks, peak)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump({"peaks": peaks, "budget": recipe.search.budget_bytes}, f)
    dist.barrier()  # the result is on disk for every rank
    # Exit without the interpreter's teardown: once in a CI run a rank aborted there ("terminate called
    # without an active exception", a joinable C++ thread of the gloo / DeepSpeed CPU backend destroyed),
    # and torchrun then failed the whole oracle although its measurement was complete.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
