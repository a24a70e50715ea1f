"""The colocated rollout engine in an RLHF trial (issue #12): how it takes part (measured where
vLLM runs, reserved as a block where it cannot, elsewhere in server mode), the share it holds on
the card while generating and while the trainer trains (model/rollout.py's accounting), `auto`'s
sizing before any trial, and the recipe's record of it. trials/rlhf_run.py builds the trainers."""

from __future__ import annotations

import types

# What a probe's recipe needs of the engine as sized where the model loaded (size_rollout); a
# supervised worker sends them in its ready report.
_FACTS = ("rollout_share", "rollout_auto", "rollout_check")


def rollout_facts(workload) -> dict:
    return {"device_kind": workload.device.kind, **{k: getattr(workload, k, None) for k in _FACTS}}


def rollout_view(facts: dict):
    """Stands in for the workload in `resolved_share` / `rollout_record` where the model loaded in
    a worker process."""
    return types.SimpleNamespace(device=types.SimpleNamespace(kind=facts["device_kind"]), **{k: facts[k] for k in _FACTS})


def vllm_runs_here(device) -> bool:
    """vLLM can start colocated: a CUDA card and vLLM importable."""
    if device.kind != "cuda":
        return False
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def rollout_how(rlhf, device) -> str | None:
    """How the rollout engine is part of the trials: "measured" (vLLM runs, or the policy
    generates), "reserved" (a colocated share held as a block), "elsewhere" (server mode)."""
    if rlhf.rlhf_type != "grpo":
        return None
    if not rlhf.use_vllm:
        return "measured (the policy's generate())"
    if rlhf.vllm_mode == "server":
        return "elsewhere (vLLM server on other cards)"
    return "measured (vLLM colocated)" if vllm_runs_here(device) else "reserved"


def resolved_share(rlhf, workload) -> float | None:
    """The colocated engine's share as a fraction (`auto` resolved on the workload)."""
    share = rlhf.share
    if share == "auto":
        share = getattr(workload, "rollout_share", None)
        if share is None:
            raise ValueError("--vllm-gpu-memory-utilization auto was not resolved before the trials")
    return share


def share_bytes(workload) -> int:
    """Bytes of each card the colocated engine holds (0: none on the training cards)."""
    rlhf = workload.spec.rlhf
    if rlhf.share is None or rollout_how(rlhf, workload.device) != "reserved":
        return 0
    return int(resolved_share(rlhf, workload) * workload.device.capacity)


def training_share_bytes(workload, share: int) -> int:
    """What the engine keeps while the trainer trains, as model/rollout.py says: awake (level 0),
    its share less the profile run's activations (freed back to the process the trainer shares)
    plus its CUDA graphs; asleep (1, 2), its non-torch memory and CUDA graphs. Never more than the
    share: those allowances are a real card's, and a small simulated share holds at most itself."""
    rlhf, need = workload.spec.rlhf, getattr(workload, "rollout_need", None)
    if need is None:
        return share if rlhf.sleep_level == 0 else 0
    from ..model.rollout import resident_during_training

    return min(share, resident_during_training(need, share, rlhf.sleep_level))


def size_rollout(workload) -> None:
    """The colocated engine's need for this run (model/rollout.py, from the config as vLLM accounts
    it), `auto`'s share, and whether vLLM would accept a given share. On a CUDA card a share vLLM
    would refuse at startup is one clear error before any trial; on the sim device (a tiny card
    that cannot hold vLLM's fixed allowances) it is a note in the recipe."""
    rlhf, spec, device = workload.spec.rlhf, workload.spec, workload.device
    if not rlhf.colocated or hasattr(workload, "rollout_need"):
        return
    from ..model import rollout

    if rlhf.steps_per_generation and rlhf.share == "auto":
        from ..errors import UsageError

        raise UsageError("--vllm-gpu-memory-utilization", "auto sizes the engine for the generation batch, which with "
                         "--steps-per-generation follows the per-device batch being searched", "give a share, or leave --steps-per-generation out")
    sequences = max(1, (spec.global_batch_size or rlhf.generations) // spec.world_size)  # the generation batch per rank
    need = rollout.rollout_need(workload.source.config, spec.dtype, sequences, spec.max_length, rlhf.completion_length,
                                weights_bytes=None if spec.train_type == "qlora" else _weight_bytes(workload.model),
                                target=rlhf.target)
    workload.rollout_need = need
    capacity = device.capacity
    if rlhf.share == "auto":
        workload.rollout_share = rollout.auto_share(need, capacity)
        workload.rollout_auto = {**need.record(), "need_bytes": need.total_bytes, "chosen": workload.rollout_share}
        return
    if device.kind == "cuda":
        rollout.require_share(float(rlhf.share), need, capacity)
    workload.rollout_check = rollout.check_share(float(rlhf.share), need, capacity)


def _weight_bytes(model) -> int:
    """The policy's bytes as vLLM loads them (the training copy's, LoRA adapters aside: small); under
    QLoRA the training copy is 4-bit, so the engine's weights are counted from the config instead."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def rollout_record(rlhf, workload, capacity: int) -> dict | None:
    """The recipe's record of the rollout engine: where it runs, its share, and how the trials had
    it (`how`: "measured" | "reserved" | "elsewhere", `why`: in words)."""
    if not rlhf.use_vllm:
        return {"engine": "generate", "how": "measured", "why": "TRL without vLLM generates with the policy's generate(), inside the trials"}
    record = {"engine": "vllm", "mode": rlhf.vllm_mode, "sleep_level": rlhf.sleep_level}
    if rlhf.vllm_mode == "server":
        record.update(how="elsewhere", why="the vLLM server has its own cards; nothing is reserved on the training cards")
        return record
    share = resolved_share(rlhf, workload)
    how = rollout_how(rlhf, workload.device) if workload is not None else "reserved"
    record.update(share=share, share_bytes=int(share * capacity), auto=getattr(workload, "rollout_auto", None))
    if how == "reserved":
        held = ("whole while generating, less its profile activations while training" if rlhf.sleep_level == 0
                else "whole while generating, and only what a sleeping engine keeps while training")
        record.update(how="reserved", why=f"vLLM cannot start here, so its share was held on the card as one block, {held}; "
                                          "the completions came through TRL's rollout_func at full length")
    else:
        record.update(how="measured", why="vLLM ran colocated in the trials")
    if getattr(workload, "rollout_check", None):
        record["vllm_would_refuse"] = workload.rollout_check
    if rlhf.offload_model or rlhf.offload_optimizer:
        record["offload"] = ("offload_model / offload_optimizer are written to the launch files; the trials kept the policy "
                             "and optimizer on the card while generating (more memory than the run, never less)")
    return record
