"""The field report's GRPO case (issue #12, item 9) as numbers: how much of the card a colocated
vLLM engine takes for Qwen2.5-VL-7B, what `--vllm-gpu-memory-utilization auto` would choose,
and what stays for training. Weights-free, on a laptop (the model is counted on the meta device).

    python scripts/rollout_share.py
    python scripts/rollout_share.py --prompt-length 4096 --completion-length 1024 --target trl

Defaults: ms-swift's (target swift): max_completion_length 512, num_generations 8; a prompt of
2048 tokens (text and image tokens together). The sequences one engine generates at once are
per_device_train_batch_size × steps_per_generation × vllm_tensor_parallel_size, the trainers'
`max_num_seqs` (autotune/model/rollout.py says where each number comes from).
"""

from __future__ import annotations

import argparse

from autotune.errors import UsageError
from autotune.model import rollout
from autotune.model.source import position_limit, resolve
from autotune.sizes import format_size, parse_size

CONFIG = "recipes/configs/qwen2.5-vl-7b/config.json"


def _gib(n: int) -> str:
    return format_size(n).replace(" GiB", "")


def _print(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))


def _need(config, args, sequences: int, tp: int, weights: int) -> rollout.RolloutNeed:
    return rollout.rollout_need(config, args.dtype, sequences, args.prompt_length, args.completion_length,
                                tensor_parallel=tp, weights_bytes=weights // tp, target=args.target)


def card_80(config, args, weights: int) -> None:
    """2 × 80 GB, share 0.6 as in the report, against the share `auto` picks."""
    capacity, share = parse_size(args.big_card), 0.6
    rows = []
    for sequences in (4, 8, 16, 32, 64):
        need = _need(config, args, sequences, 1, weights)
        auto = rollout.auto_share(need, capacity)
        fixed_budget = int(capacity * share)
        rows.append([str(sequences), _gib(need.total_bytes), f"{auto:.2f}", _gib(int(capacity * auto)),
                     _gib(fixed_budget), _gib(rollout.kv_room(share, need, capacity)),
                     str(rollout.concurrent_sequences(share, need, capacity)),
                     _gib(capacity - rollout.resident_during_training(need, fixed_budget, 0)),
                     _gib(capacity - rollout.resident_during_training(need, int(capacity * auto), 0))])
    _print(f"{args.big_card} card ({format_size(capacity)}), vLLM tp 1, sleep_level 0; GiB",
           ["seqs/engine", "need", "auto", "auto budget", "budget@0.6", "KV@0.6", "seqs held@0.6",
            "training@0.6", "training@auto"], rows)
    limit = position_limit(config)
    unset = rollout.rollout_need(config, args.dtype, 8, args.prompt_length, args.completion_length, weights_bytes=weights,
                                 target=args.target, max_model_len=limit)
    print(f"with vllm_max_model_len unset vLLM checks one request at the model's {limit} tokens: auto for 8 sequences "
          f"becomes {rollout.auto_share(unset, capacity):.2f} (KV {_gib(unset.kv_cache_bytes)} GiB); a launch file should set "
          f"vllm_max_model_len {args.prompt_length + args.completion_length}")


def card_24(config, args, weights: int) -> None:
    """8 × 24 GB (ZeRO-3 and checkpointing on the training side): vLLM's tensor parallelism and
    sleep levels, 2 completions per rank per generation."""
    capacity, per_rank = parse_size(args.small_card), 2
    rows = []
    for tp in (1, 2, 4, 8):
        need = _need(config, args, rollout.colocate_sequences(per_rank, 1, tp), tp, weights)
        fixed = rollout.check_share(0.6, need, capacity)
        try:
            auto = rollout.auto_share(need, capacity)
        except UsageError as exc:  # the engine cannot fit this card at this tp
            rows.append([str(tp), str(need.sequences), _gib(need.weights_bytes), _gib(need.total_bytes), "-", "-", "-", "-",
                         "no: " + str(exc).split(";")[0]])
            continue
        budget = int(capacity * auto)
        left = [_gib(capacity - rollout.resident_during_training(need, budget, level)) for level in (0, 1, 2)]
        rows.append([str(tp), str(need.sequences), _gib(need.weights_bytes), _gib(need.total_bytes), f"{auto:.2f}", *left,
                     "starts" if fixed is None else "refused: " + fixed.split(" (vLLM: ")[1].rstrip(")")])
    _print(f"{args.small_card} card ({format_size(capacity)}), world 8, {per_rank} completions per rank; GiB",
           ["vllm tp", "seqs/engine", "weights/rank", "need", "auto", "training@sleep0", "training@sleep1",
            "training@sleep2", "share 0.6"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-config", default=CONFIG)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--prompt-length", type=int, default=2048)
    parser.add_argument("--completion-length", type=int, default=512, help="ms-swift's default max_completion_length")
    parser.add_argument("--target", choices=("swift", "trl"), default="swift")
    parser.add_argument("--big-card", default="80GB")
    parser.add_argument("--small-card", default="24GB")
    args = parser.parse_args(argv)
    config = resolve(None, args.model_config).config
    print(f"{args.model_config}: prompt {args.prompt_length} + completion {args.completion_length} tokens, {args.dtype}, "
          f"target {args.target}, KV {rollout.kv_bytes_per_token(config, args.dtype):,} bytes/token")
    weights = rollout.weight_bytes(config, args.dtype)  # counted once; a tp rank holds 1/tp of it
    card_80(config, args, weights)
    card_24(config, args, weights)
    print("\nneed = weights + KV cache for every sequence at once + profile activations + non-torch allowance;"
          " training@X = card - what vLLM keeps while the trainer trains (CUDA graphs included).")


if __name__ == "__main__":
    main()
