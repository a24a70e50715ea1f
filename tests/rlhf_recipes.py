"""RLHF recipes (issue #12) for the launch-file tests, built by hand: the settings a GRPO or DPO
probe writes (ms-swift's names) and the `rlhf` record of how the run was modelled, on a tiny
Llama. No probe runs, so the module imports nothing but the recipe schema and loads in
ms-swift's own venvs, where the real-parser tests run."""

import dataclasses

from autotune.recipe.schema import SCHEMA, Hardware, ModelInfo, Recipe, SearchRecord, Settings, Validation

CAPACITY = 12 * 2**20
RESERVED = {"engine": "vllm", "mode": "colocate", "share": 0.6, "share_bytes": int(0.6 * CAPACITY), "how": "reserved",
            "why": "vLLM not installed where probed", "sleep_level": 1, "auto": None}


def base() -> Recipe:
    """A GRPO LoRA recipe on one simulated 12 MiB card, validated."""
    model = ModelInfo(source="builtin", path="tiny-llama", model_type="llama", architecture="LlamaForCausalLM",
                      dtype="bfloat16", train_type="lora", num_parameters=4_200_000, trainable_parameters=50_000,
                      max_length=2048, lora={"r": 8, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
                      hidden_size=64)
    hardware = Hardware(device="sim", name="simulated GPU", capacity_bytes=CAPACITY, device_count=1, world_size=1,
                        torch="2.13.0", transformers="5.24.0", peft="0.21.2")
    settings = Settings(per_device_train_batch_size=8, gradient_accumulation_steps=1, max_length=32, rlhf_type="grpo",
                        num_generations=8, max_completion_length=48, beta=0.04, use_vllm=False)
    search = SearchRecord(margin=0.1, capacity_bytes=CAPACITY, budget_bytes=int(0.9 * CAPACITY), max_batch_size=16,
                          steps_per_trial=3, frontier={"train": 8})
    validation = Validation(passed=True, method="validation-run", steps=3, peak_bytes=9 * 2**20)
    record = {"type": "grpo", "target": "swift", "reference_model": "adapter disabled (LoRA)", "rollout": None}
    return Recipe(schema=SCHEMA, model=model, hardware=hardware, settings=settings, search=search, validation=validation,
                  rlhf=record)


def rlhf_variant(name: str) -> Recipe:
    """grpo_vllm: GRPO LoRA, vLLM colocated at 0.6 (reserved) with sleep and ms-swift's offload,
    ZeRO-3 over 2 ranks, eval batch. grpo_trl: the same for TRL (sleep level 2, no offload).
    grpo_plain: GRPO full fine-tune, no vLLM, beta 0, the default steps_per_generation.
    dpo: DPO full fine-tune in fp32, the reference model loaded. dpo_precomputed: its log-probs precomputed."""
    r = base()
    s = r.settings
    if name in ("grpo_vllm", "grpo_trl"):
        trl = name == "grpo_trl"
        settings = dataclasses.replace(s, per_device_train_batch_size=4, gradient_accumulation_steps=2, per_device_eval_batch_size=2,
                                       num_generations=4, max_completion_length=64, use_vllm=True, vllm_mode="colocate",
                                       vllm_gpu_memory_utilization=0.6, sleep_level=2 if trl else 1, offload_model=not trl,
                                       offload_optimizer=not trl, steps_per_generation=2, gradient_checkpointing=True,
                                       strategy="zero3", env={"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"})
        hw = dataclasses.replace(r.hardware, world_size=2, device_count=2)
        rollout = {**RESERVED, "sleep_level": settings.sleep_level}
        return dataclasses.replace(r, settings=settings, hardware=hw,
                                   rlhf={**r.rlhf, "target": "trl" if trl else "swift", "rollout": rollout})
    if name == "grpo_plain":
        model = dataclasses.replace(r.model, train_type="full", lora=None)
        return dataclasses.replace(r, model=model, settings=dataclasses.replace(s, beta=0.0),
                                   rlhf={**r.rlhf, "target": "trl", "reference_model": "none (beta 0)"})
    if name in ("dpo", "dpo_precomputed"):
        precomputed = name == "dpo_precomputed"
        settings = dataclasses.replace(s, rlhf_type="dpo", per_device_train_batch_size=2, gradient_accumulation_steps=4,
                                       per_device_eval_batch_size=2, beta=0.1, precompute_ref_log_probs=precomputed,
                                       num_generations=None, max_completion_length=None, use_vllm=None,
                                       mixed_precision="no", torch_dtype="float32")
        model = dataclasses.replace(r.model, train_type="full", lora=None, dtype="float32")
        ref = "precomputed" if precomputed else "loaded"
        return dataclasses.replace(r, settings=settings, model=model, rlhf={"type": "dpo", "target": "trl", "reference_model": ref})
    raise KeyError(name)


RLHF_VARIANTS = ("grpo_vllm", "grpo_trl", "grpo_plain", "dpo", "dpo_precomputed")
# What `emit swift` writes for (no ms-swift has precompute_ref_log_probs: that recipe is refused).
SWIFT_VARIANTS = ("grpo_vllm", "grpo_trl", "grpo_plain", "dpo")
# What `emit trl` writes for (TRL has no offload_model: grpo_vllm, which sleeps, is refused).
TRL_VARIANTS = ("grpo_trl", "grpo_plain", "dpo", "dpo_precomputed")
