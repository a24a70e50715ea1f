"""The colocated rollout engine's share of the card (issue #12, item 4), computed from the model
config as vLLM (V1 engine, 0.10 and later) accounts it. Pure arithmetic on a transformers
config; torch is imported only to count the weights on the meta device.

Sources, read and never copied: github.com/vllm-project/vllm (0.10-0.11 and main),
github.com/huggingface/trl (1.16, installed), github.com/modelscope/ms-swift, and
docs.vllm.ai/en/latest/features/sleep_mode/; the paths below are inside those repositories.

How vLLM sizes a colocated instance:

- `gpu_memory_utilization` × the card's *total* memory is the instance's budget
  (`vllm/v1/worker/gpu_worker.py`, `init_device`: `requested_memory`). Before anything else vLLM
  refuses to start when the card's free memory is below that budget ("Free memory on device
  (…) on startup is less than desired GPU memory utilization (…). Decrease GPU memory
  utilization or reduce GPU memory used by other processes."). In colocate mode the trainer's
  model is already on the card then (TRL builds `VLLMGeneration` after `Trainer.__init__`).
- `determine_available_memory` runs a profile forward (`GPUModelRunner.profile_run`: the model
  at `max_num_batched_tokens` tokens, then the sampler on `max_num_seqs` rows; for a
  vision-language model first the encoder on its largest dummy images) and gives the KV cache
  `requested_memory - non_kv_cache_memory`, where `non_kv_cache_memory` is the weights + the
  torch peak increase of that profile + the non-torch increase (NCCL, cuBLAS workspaces).
- The KV cache is paged in blocks of `block_size` = 16 tokens
  (`vllm/v1/kv_cache_interface.py`): a full-attention layer's page is
  2 (K and V) × block × kv_heads per rank × head_dim × dtype bytes; an MLA layer's is
  block × (kv_lora_rank + qk_rope_head_dim) × dtype bytes, not split by tensor parallelism; a
  sliding-window layer holds at most `min(window - 1 + max_num_batched_tokens, max_model_len)`
  tokens per request, plus one block. KV heads per rank are `max(1, kv_heads // tp)` (vLLM
  replicates them when tp exceeds them). The block pool keeps one null block.
- `check_enough_kv_cache_memory` (`vllm/v1/core/kv_cache_utils.py`) raises at startup when the
  KV cache is empty ("No available memory for the cache blocks. Try increasing
  `gpu_memory_utilization` when initializing the engine.") or cannot hold *one* request at
  `max_model_len` ("To serve at least one request with the models's max seq len (…), (… GiB KV
  cache is needed, which is larger than the available KV cache memory (… GiB). … Try increasing
  `gpu_memory_utilization` or decreasing `max_model_len` …"). A KV cache smaller than the whole
  generation batch is no error: the scheduler runs fewer sequences at once.
- CUDA graphs are captured after the KV cache is sized, so through vLLM 0.20 their memory is
  *outside* the budget (vllm-project/vllm#17549, the RFC #27951); PR #30515 added an estimate
  inside it behind `VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS`, on by default since v0.21.0 (its
  startup log says so). Here it is an allowance outside the share.
- `max_num_batched_tokens`: TRL's colocate mode passes 4096 (`trl/generation/vllm_generation.py`);
  ms-swift builds `EngineArgs` without it and through `LLMEngine.from_engine_args`, whose usage
  context has no default in `EngineArgs`, so `SchedulerConfig` falls back to 2048 with chunked
  prefill, at least 5120 for a multimodal model.

How the trainers drive it:

- Generation batch per engine: TRL (`trl/trainer/grpo_trainer.py`) and ms-swift
  (`swift/trainers/rlhf_trainer/rollout_mixin.py`, `_prepare_vllm_engine`) both set
  `max_num_seqs = per_device_train_batch_size × vllm_tensor_parallel_size × steps_per_generation`:
  each rank generates its own slice of the generation batch with n=1 per prompt copy, and a
  tensor-parallel group gathers its ranks' prompts. That is `colocate_sequences` below.
- `max_model_len`: TRL's `vllm_max_model_length` and ms-swift's `vllm_max_model_len` both
  default to None, and vLLM then takes the model's position limit (128000 for Qwen2.5-VL-7B), so
  its one-request check runs at that length. `rollout_need` defaults it to prompt + completion,
  which a launch file should then write.
- Sleep: vLLM's sleep level 1 offloads the weights to CPU memory and discards the KV cache,
  level 2 discards both (docs.vllm.ai/en/latest/features/sleep_mode/); what vLLM allocated
  outside its two sleep pools (CUDA graphs, the non-torch memory) stays. ms-swift's
  `sleep_level` 0|1|2 (docs/source_en/Instruction/Command-line-parameters.md: "Release vLLM GPU
  memory during training", default 0) sleeps at that level after each rollout; TRL's
  `vllm_enable_sleep_mode` calls `llm.sleep(level=2)` after each generation and wakes the
  weights, then the KV cache, before the next one (`trl/generation/vllm_generation.py`).

What is left out (`RolloutNeed.notes` names the first two where a model hits them): the encoder
profile of vision-language families other than Qwen2-VL / Qwen2.5-VL, linear-attention and
Mamba state (counted as full attention), the hybrid allocator's padding of layer groups,
prefix-cache sharing between a prompt's copies (it can only
lower the need), a vLLM LoRA adapter's buffers (`vllm_enable_lora`), quantized weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import UsageError
from ..sizes import format_size

FLAG = "--vllm-gpu-memory-utilization"
BLOCK_SIZE = 16  # vLLM's default block size on CUDA
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
SAMPLER_FP32_COPIES = 3  # the sampler's float32 logits, probabilities and log-probabilities
# max_num_batched_tokens when the trainer does not set it (see the module docstring).
TRL_MAX_NUM_BATCHED_TOKENS = 4096
VLLM_MAX_NUM_BATCHED_TOKENS = 2048
VLLM_MULTIMODAL_MAX_NUM_BATCHED_TOKENS = 5120
# Allowances, not measurements: vLLM's own log shows the non-torch increase at 0.39 GiB on one
# card (vllm-project/vllm#11251); tensor parallelism adds NCCL and custom all-reduce buffers.
NON_TORCH_BYTES = 512 * 1024**2
NON_TORCH_TP_BYTES = 1024**3
CUDA_GRAPH_BYTES = 512 * 1024**2  # one PIECEWISE capture of 16 sizes logged 0.36 GiB (gpustack/runner#251)
# Qwen2-VL / Qwen2.5-VL processors' default max_pixels 12845056 / (28 × 28): an image's most tokens.
QWEN_VL_MAX_IMAGE_TOKENS = 16384
QWEN_VL_TYPES = ("qwen2_vl", "qwen2_5_vl")
# The share's grid: rounding, not a safety margin (the margins are the named allowances above);
# 0.05 of an 80 GB card would hand vLLM up to 4 GB the trainer could have used.
STEP = 0.01


def dtype_bytes(dtype) -> int:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_BYTES:
        raise UsageError("--dtype", f"the rollout share has no byte size for dtype {name!r}", "use bfloat16, float16 or float32")
    return DTYPE_BYTES[name]


def _text(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def colocate_sequences(per_device_train_batch_size: int, steps_per_generation: int, tensor_parallel: int = 1) -> int:
    """The sequences one colocated engine generates at once: TRL's and ms-swift's `max_num_seqs`."""
    return per_device_train_batch_size * steps_per_generation * tensor_parallel


def default_max_num_batched_tokens(target: str, multimodal: bool) -> int:
    """What vLLM's profile forward runs at when the trainer leaves `max_num_batched_tokens` unset."""
    if target == "trl":
        return TRL_MAX_NUM_BATCHED_TOKENS
    return VLLM_MULTIMODAL_MAX_NUM_BATCHED_TOKENS if multimodal else VLLM_MAX_NUM_BATCHED_TOKENS


@dataclass(frozen=True)
class KVLayer:
    """One layer's KV page per token (bytes, per rank) and its sliding window (None: full)."""

    bytes_per_token: int
    window: int | None = None


def kv_layers(config, dtype, tensor_parallel: int = 1, kv_cache_dtype=None) -> tuple[list[KVLayer], list[str]]:
    """Each decoder layer's KV page per token as vLLM lays it out, and what was not modelled."""
    text = _text(config)
    size = dtype_bytes(kv_cache_dtype or dtype)
    notes = []
    if getattr(text, "kv_lora_rank", None):  # MLA: one latent vector per token, replicated across tp
        per_token = (text.kv_lora_rank + text.qk_rope_head_dim) * size
    else:
        heads = text.num_attention_heads
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        per_token = 2 * max(1, kv_heads // tensor_parallel) * head_dim * size
    window = getattr(text, "sliding_window", None)
    if getattr(text, "use_sliding_window", True) is False:
        window = None
    # With `layer_types` each layer says; without, a config's window applies to every layer.
    kinds = getattr(text, "layer_types", None) or ["sliding_attention" if window else "full_attention"] * text.num_hidden_layers
    layers = []
    for kind in kinds:
        if kind not in ("full_attention", "sliding_attention"):
            note = f"layer type {kind!r} counted as full attention (its state is not modelled)"
            if note not in notes:
                notes.append(note)
        layers.append(KVLayer(per_token, window if kind == "sliding_attention" else None))
    return layers, notes


def kv_bytes_per_token(config, dtype, tensor_parallel: int = 1, kv_cache_dtype=None) -> int:
    """Bytes one token's K and V take over all layers on one rank, windows ignored
    (Qwen2.5-7B in bfloat16: 2 × 28 × 4 × 128 × 2 = 57,344)."""
    return sum(layer.bytes_per_token for layer in kv_layers(config, dtype, tensor_parallel, kv_cache_dtype)[0])


def kv_bytes_per_sequence(layers: list[KVLayer], tokens: int, max_num_batched_tokens: int, block_size: int = BLOCK_SIZE) -> int:
    """One request's KV at `tokens` tokens, in whole blocks per layer (vLLM's
    `max_memory_usage_bytes` of each layer's spec with max_model_len = tokens)."""
    total = 0
    for layer in layers:
        if layer.window is None:
            blocks = math.ceil(tokens / block_size)
        else:
            held = min(layer.window - 1 + max_num_batched_tokens, tokens)
            blocks = math.ceil(held / block_size) + 1
        total += blocks * block_size * layer.bytes_per_token
    return total


def weight_bytes(config, dtype, tensor_parallel: int = 1) -> int:
    """The whole model's weights as vLLM loads them (vision tower included), per rank: the
    transformers class built on the meta device, its parameters counted, divided by tp
    (vLLM shards the linear layers and the vocabulary; the replicated norms are negligible)."""
    import torch

    from .source import model_class

    with torch.device("meta"):
        model = model_class(config)._from_config(config, dtype=getattr(torch, str(dtype).removeprefix("torch.")))
    return sum(p.numel() for p in model.parameters()) * dtype_bytes(dtype) // tensor_parallel


def _decoder_activation(text, tokens: int, size: int, tensor_parallel: int) -> int:
    """The profile forward's peak inside one decoder layer (inference mode, nothing saved): the
    residual and hidden states, the fused gate-up output and its activation, the MLP output."""
    intermediate = getattr(text, "intermediate_size", None) or 4 * text.hidden_size  # GPT-2's n_inner None
    moe = getattr(text, "moe_intermediate_size", None)
    if moe and getattr(text, "num_experts_per_tok", None):
        intermediate = max(intermediate or 0, moe * text.num_experts_per_tok)
    return tokens * (3 * text.hidden_size + 3 * intermediate // tensor_parallel) * size


def _encoder_activation(config, max_num_batched_tokens: int, size: int, tensor_parallel: int) -> int | None:
    """Qwen2-VL / Qwen2.5-VL: vLLM profiles the vision tower on its largest dummy images first, as
    many whole images as the encoder budget max(max_num_batched_tokens, one image) holds."""
    if getattr(config, "model_type", None) not in QWEN_VL_TYPES:
        return None
    vision = config.vision_config
    hidden = getattr(vision, "embed_dim", None) or vision.hidden_size
    intermediate = getattr(vision, "intermediate_size", None) or hidden * vision.mlp_ratio
    images = max(1, max_num_batched_tokens // QWEN_VL_MAX_IMAGE_TOKENS)
    patches = images * QWEN_VL_MAX_IMAGE_TOKENS * vision.spatial_merge_size**2
    return patches * (3 * hidden + 3 * intermediate // tensor_parallel) * size


@dataclass(frozen=True)
class RolloutNeed:
    """What one colocated vLLM engine needs on one rank for a generation batch. Everything but
    `graph_bytes` must fit inside gpu_memory_utilization × capacity."""

    weights_bytes: int
    kv_cache_bytes: int  # the whole batch at once, or one request at max_model_len if more
    activation_bytes: int  # the profile run's peak
    overhead_bytes: int  # non-torch memory (allowance)
    graph_bytes: int  # CUDA graphs, outside the share through vLLM 0.20 (allowance)
    sequences: int
    sequence_tokens: int  # prompt + completion
    max_model_len: int
    max_num_batched_tokens: int
    tensor_parallel: int
    kv_sequence_bytes: int  # one sequence at sequence_tokens
    kv_max_model_len_bytes: int  # one request at max_model_len
    kv_block_bytes: int  # one block over all layers
    activation_how: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def fixed_bytes(self) -> int:
        """What vLLM subtracts from its budget before the KV cache."""
        return self.weights_bytes + self.activation_bytes + self.overhead_bytes

    @property
    def total_bytes(self) -> int:
        return self.fixed_bytes + self.kv_cache_bytes

    @property
    def kv_one_request_bytes(self) -> int:
        """vLLM's startup minimum: one request at max_model_len, and the null block."""
        return self.kv_max_model_len_bytes + self.kv_block_bytes

    def rows(self) -> list[tuple[str, int, str]]:
        """(what, bytes, how it was computed) for a breakdown table."""
        tokens = f"{self.sequences} × {self.sequence_tokens} tokens"
        return [
            ("policy weights", self.weights_bytes, "the model's parameters" + (f" / tp {self.tensor_parallel}" if self.tensor_parallel > 1 else "")),
            ("KV cache", self.kv_cache_bytes, f"{tokens} in {BLOCK_SIZE}-token blocks"),
            ("profile activations", self.activation_bytes, self.activation_how),
            ("non-torch memory", self.overhead_bytes, "allowance"),
            ("total in the share", self.total_bytes, ""),
            ("CUDA graphs", self.graph_bytes, "allowance, outside the share (vLLM <= 0.20)"),
        ]

    def record(self) -> dict:
        """The recipe's `rlhf.rollout.auto` record."""
        return {"weights_bytes": self.weights_bytes, "kv_cache_bytes": self.kv_cache_bytes,
                "activation_bytes": self.activation_bytes, "overhead_bytes": self.overhead_bytes,
                "graph_bytes": self.graph_bytes, "total_bytes": self.total_bytes, "sequences": self.sequences,
                "sequence_tokens": self.sequence_tokens, "max_model_len": self.max_model_len,
                "max_num_batched_tokens": self.max_num_batched_tokens, "tensor_parallel": self.tensor_parallel,
                "notes": list(self.notes)}


def rollout_need(config, dtype, sequences: int, prompt_length: int, completion_length: int, tensor_parallel: int = 1,
                 max_num_batched_tokens: int | None = None, max_model_len: int | None = None,
                 weights_bytes: int | None = None, target: str = "trl", kv_cache_dtype=None) -> RolloutNeed:
    """The engine's need on one rank for `sequences` concurrent sequences (`colocate_sequences`)
    of prompt + completion tokens. `weights_bytes` None: counted from the config (meta device).
    `max_model_len` None: prompt + completion. `target` ("trl" | "swift") picks the trainer's
    `max_num_batched_tokens` when it is None."""
    if sequences < 1 or prompt_length < 1 or completion_length < 1 or tensor_parallel < 1:
        raise ValueError("sequences, lengths and tensor_parallel must be positive")
    size = dtype_bytes(dtype)
    text = _text(config)
    multimodal = text is not config
    tokens = prompt_length + completion_length
    max_model_len = max_model_len or tokens
    if max_model_len < tokens:
        raise UsageError("--max-completion-length", f"prompt {prompt_length} + completion {completion_length} = {tokens} tokens, "
                                                    f"past vLLM's max_model_len {max_model_len}", "shorten either, or raise max_model_len")
    batched = max_num_batched_tokens or default_max_num_batched_tokens(target, multimodal)
    layers, notes = kv_layers(config, dtype, tensor_parallel, kv_cache_dtype)
    block = sum(layer.bytes_per_token for layer in layers) * BLOCK_SIZE
    per_sequence = kv_bytes_per_sequence(layers, tokens, batched)
    at_max = kv_bytes_per_sequence(layers, max_model_len, batched)
    kv = max(sequences * per_sequence, at_max) + block  # the block pool's null block
    sampler_rows = min(sequences, batched)
    sampler = sampler_rows * text.vocab_size * (size + 4 * SAMPLER_FP32_COPIES)
    decoder = _decoder_activation(text, batched, size, tensor_parallel)
    encoder = _encoder_activation(config, batched, size, tensor_parallel)
    if multimodal and encoder is None:
        notes.append(f"the vision encoder's profile run of {config.model_type} is not modelled")
    activation, how = max((decoder, f"decoder forward at {batched} tokens"), (sampler, f"sampler on {sampler_rows} rows"),
                          (encoder or 0, "vision tower on its largest dummy images"))
    overhead = NON_TORCH_BYTES if tensor_parallel == 1 else NON_TORCH_TP_BYTES
    weights = weight_bytes(config, dtype, tensor_parallel) if weights_bytes is None else weights_bytes
    return RolloutNeed(weights, kv, activation, overhead, CUDA_GRAPH_BYTES, sequences, tokens, max_model_len, batched,
                       tensor_parallel, per_sequence, at_max, block, how, tuple(notes))


def kv_room(share: float, need: RolloutNeed, capacity_bytes: int) -> int:
    """The KV cache vLLM allocates at this share: its budget minus weights, profile peak and
    non-torch memory (vLLM's `available_kv_cache_memory_bytes`)."""
    return int(capacity_bytes * share) - need.fixed_bytes


def concurrent_sequences(share: float, need: RolloutNeed, capacity_bytes: int) -> int:
    """How many of the batch's sequences the KV cache at this share holds at once."""
    return max(0, (kv_room(share, need, capacity_bytes) - need.kv_block_bytes) // need.kv_sequence_bytes)


def check_share(share: float, need: RolloutNeed, capacity_bytes: int, free_bytes: int | None = None) -> str | None:
    """Why vLLM would refuse to start at this share (one line, vLLM's reason), or None.
    `free_bytes`: the card's free memory when the engine starts (the trainer's model is already
    there in colocate mode); None skips that check."""
    budget = int(capacity_bytes * share)
    if free_bytes is not None and free_bytes < budget:
        return (f"share {share:g} asks vLLM for {format_size(budget)} but only {format_size(free_bytes)} is free when it starts "
                f"(vLLM: free memory on device is less than desired GPU memory utilization)")
    room = kv_room(share, need, capacity_bytes)
    if room <= 0:
        return (f"share {share:g} gives vLLM {format_size(budget)}, less than the weights, profile peak and non-torch memory "
                f"({format_size(need.fixed_bytes)}) (vLLM: no available memory for the cache blocks)")
    if room < need.kv_one_request_bytes:
        return (f"share {share:g} leaves {format_size(room)} of KV cache, less than one request at max_model_len "
                f"{need.max_model_len} needs ({format_size(need.kv_one_request_bytes)}) (vLLM: cannot serve one request at the max seq len)")
    return None


def require_share(share: float, need: RolloutNeed, capacity_bytes: int, free_bytes: int | None = None) -> None:
    """`check_share` as the one-line UsageError the CLI prints, with the share `auto` would pick."""
    reason = check_share(share, need, capacity_bytes, free_bytes)
    if reason is None:
        return
    try:
        hint = f"use {FLAG} auto ({auto_share(need, capacity_bytes):g} for this batch) or a larger share"
    except UsageError as exc:
        hint = exc.hint
    raise UsageError(FLAG, reason, hint)


def batch_shortfall(share: float, need: RolloutNeed, capacity_bytes: int) -> str | None:
    """A share vLLM starts with but whose KV cache holds fewer than the batch's sequences at
    once: generation queues the rest (slower, not out of memory)."""
    if check_share(share, need, capacity_bytes) is not None:
        return None
    held = concurrent_sequences(share, need, capacity_bytes)
    if held >= need.sequences:
        return None
    return f"share {share:g} holds {held} of the {need.sequences} sequences at once; vLLM queues the rest (slower generation)"


def auto_share(need: RolloutNeed, capacity_bytes: int, step: float = STEP) -> float:
    """`--vllm-gpu-memory-utilization auto`: the smallest share on a `step` grid whose budget
    holds the weights, the profile peak, the non-torch memory and the whole batch's KV cache."""
    if need.weights_bytes >= capacity_bytes:
        raise UsageError(FLAG, f"the policy weights alone ({format_size(need.weights_bytes)} per rank) exceed the card "
                               f"({format_size(capacity_bytes)})",
                         "use a bigger card or vLLM tensor parallelism (vllm_tensor_parallel_size)")
    grid = round(1 / step)
    k = -(-need.total_bytes * grid // capacity_bytes)
    while int(capacity_bytes * (k / grid)) < need.total_bytes:  # vLLM multiplies in floating point
        k += 1
    if k > grid:
        raise UsageError(FLAG, f"the rollout engine needs {format_size(need.total_bytes)} per rank "
                               f"(weights {format_size(need.weights_bytes)}, KV cache {format_size(need.kv_cache_bytes)}), "
                               f"more than the card ({format_size(capacity_bytes)})",
                         "fewer sequences per generation, shorter completions, or vLLM tensor parallelism")
    return round(k / grid, 6)


def resident_during_training(need: RolloutNeed, share_bytes: int, sleep_level: int) -> int:
    """What the engine keeps on the card while the trainer trains. Level 0: its weights, KV cache
    and non-torch memory (the share less the profile's activation peak, which went back to the
    process's torch cache, where training reuses it: colocate runs in the trainer's process),
    plus CUDA graphs. Levels 1 and 2 (ms-swift's `sleep_level`; TRL's `vllm_enable_sleep_mode`
    is level 2) release the weights and the KV cache; the CUDA graphs and non-torch memory stay.
    During generation a sleeping engine wakes and takes its share again, so what the trainer
    keeps resident then (its weights and optimizer state, unless ms-swift's offload_model /
    offload_optimizer move them) must still fit beside the full share."""
    if sleep_level not in (0, 1, 2):
        raise UsageError("--sleep-level", f"must be 0, 1 or 2, got {sleep_level}")
    if sleep_level == 0:
        return share_bytes - need.activation_bytes + need.graph_bytes
    return need.overhead_bytes + need.graph_bytes


def host_during_training(need: RolloutNeed, sleep_level: int) -> int:
    """Host memory the sleeping engine holds: level 1 backs the weights up in CPU memory."""
    return need.weights_bytes if sleep_level == 1 else 0
