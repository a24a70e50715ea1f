"""The colocated rollout engine's share (autotune/model/rollout.py): KV bytes by hand for real
configs, the share `auto` picks is the smallest that holds the need, and the refusals name the flag."""

import importlib.util
import re
from pathlib import Path

import pytest
from transformers import AutoConfig

from autotune.errors import UsageError
from autotune.model import rollout
from autotune.model.source import resolve
from autotune.sizes import parse_size

GIB = 1024**3
CARD_80, CARD_24 = parse_size("80GB"), parse_size("24GB")


@pytest.fixture(scope="module")
def qwen7b():
    return resolve(None, "recipes/configs/qwen2.5-7b/config.json").config


@pytest.fixture(scope="module")
def qwen_vl():
    return resolve(None, "recipes/configs/qwen2.5-vl-7b/config.json").config


def llama3_8b():
    return AutoConfig.for_model("llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                                num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192)


def need(config, sequences=8, prompt=1024, completion=512, weights=15 * GIB, **kw):
    return rollout.rollout_need(config, "bfloat16", sequences, prompt, completion, weights_bytes=weights, **kw)


def test_kv_bytes_per_token_by_hand(qwen7b, qwen_vl):
    assert rollout.kv_bytes_per_token(qwen7b, "bfloat16") == 2 * 28 * 4 * 128 * 2 == 57_344
    assert rollout.kv_bytes_per_token(llama3_8b(), "bfloat16") == 2 * 32 * 8 * 128 * 2 == 131_072
    assert rollout.kv_bytes_per_token(qwen_vl, "bfloat16") == 57_344  # the text part; the tower has no KV cache
    assert rollout.kv_bytes_per_token(qwen7b, "float32") == 2 * 57_344


def test_kv_heads_split_by_tensor_parallelism_and_replicated_past_them(qwen7b):
    assert rollout.kv_bytes_per_token(qwen7b, "bfloat16", tensor_parallel=2) == 28_672
    assert rollout.kv_bytes_per_token(qwen7b, "bfloat16", tensor_parallel=8) == 2 * 28 * 1 * 128 * 2  # 4 heads, tp 8: one each


def test_mla_caches_one_latent_per_token_not_split_by_tp():
    config = AutoConfig.for_model("deepseek_v3", num_hidden_layers=2, kv_lora_rank=512, qk_rope_head_dim=64, hidden_size=64,
                                  num_attention_heads=4, vocab_size=1000, intermediate_size=128, moe_intermediate_size=32,
                                  n_routed_experts=4, num_experts_per_tok=2, first_k_dense_replace=1)
    assert rollout.kv_bytes_per_token(config, "bfloat16") == 2 * (512 + 64) * 2
    assert rollout.kv_bytes_per_token(config, "bfloat16", tensor_parallel=4) == 2 * (512 + 64) * 2


def test_sliding_window_layers_hold_window_plus_a_batch_in_blocks():
    gemma2 = resolve(None, "tiny-gemma2").config  # layer 0 sliding (window 32), layer 1 full; 2 kv heads × 16 × bf16 × K,V = 128 B
    layers, _ = rollout.kv_layers(gemma2, "bfloat16")
    assert [layer.window for layer in layers] == [32, None]
    sliding = (-(-(32 - 1 + 64) // 16) + 1) * 16 * 128  # min(31 + 64, 1000) tokens in 6 blocks, plus one
    full = -(-1000 // 16) * 16 * 128
    assert rollout.kv_bytes_per_sequence(layers, 1000, 64) == sliding + full == 143_360
    mistral = AutoConfig.for_model("mistral", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=1000, sliding_window=4096)
    layers, _ = rollout.kv_layers(mistral, "bfloat16")  # no layer_types: the window applies to every layer
    assert [layer.window for layer in layers] == [4096, 4096]
    assert rollout.kv_bytes_per_sequence(layers, 8192, 2048) == 2 * (-(-6143 // 16) + 1) * 16 * layers[0].bytes_per_token


def test_weights_counted_on_the_meta_device_match_the_hand_count(qwen7b):
    h, i, v, kv = 3584, 18944, 152064, 4 * 128
    layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h  # q, k, v (biases), o, gate/up/down, two norms
    params = 2 * v * h + 28 * layer + h  # untied embedding and head, the final norm
    assert params == 7_615_616_512
    assert rollout.weight_bytes(qwen7b, "bfloat16") == 2 * params
    assert rollout.weight_bytes(qwen7b, "bfloat16", tensor_parallel=4) == 2 * params // 4


def test_the_need_by_hand(qwen7b):
    n = need(qwen7b, sequences=8, prompt=1024, completion=512, target="trl")
    blocks = 1536 // 16
    assert n.kv_block_bytes == 16 * 57_344
    assert n.kv_cache_bytes == 8 * blocks * 16 * 57_344 + 16 * 57_344  # the batch, and the block pool's null block
    assert n.max_num_batched_tokens == 4096  # TRL's colocate engine
    assert n.activation_bytes == 4096 * (3 * 3584 + 3 * 18944) * 2  # the decoder's MLP at 4096 tokens beats the sampler
    assert n.total_bytes == n.weights_bytes + n.kv_cache_bytes + n.activation_bytes + n.overhead_bytes
    assert [row[0] for row in n.rows()][:2] == ["policy weights", "KV cache"]
    assert n.record()["total_bytes"] == n.total_bytes


def test_qwen_vl_profiles_its_vision_tower_on_a_largest_image(qwen_vl):
    n = need(qwen_vl, target="swift")
    assert n.max_num_batched_tokens == 5120  # vLLM's multimodal default where ms-swift leaves it unset
    assert n.activation_bytes == 16384 * 4 * (3 * 1280 + 3 * 3420) * 2  # 16384 tokens of 2 × 2 patches through the tower
    assert n.notes == () and "vision tower" in n.activation_how


def test_a_vision_family_without_an_encoder_model_says_so():
    n = need(resolve(None, "tiny-llava").config, weights=GIB)
    assert any("vision encoder" in note for note in n.notes)


@pytest.mark.parametrize("vary", ["sequences", "prompt", "completion"])
def test_auto_share_is_monotone(qwen7b, vary):
    values = [1, 2, 4, 16, 64, 256] if vary == "sequences" else [128, 512, 2048, 8192, 16384]
    shares, totals = [], []
    for value in values:
        n = need(qwen7b, **{vary: value})
        shares.append(rollout.auto_share(n, CARD_80))
        totals.append(n.total_bytes)
    assert shares == sorted(shares) and shares[0] < shares[-1]
    assert totals == sorted(totals) and len(set(totals)) == len(totals)


@pytest.mark.parametrize("sequences,completion", [(1, 256), (8, 512), (64, 1024), (200, 2048)])
def test_auto_share_is_the_smallest_that_holds_the_whole_batch(qwen7b, sequences, completion):
    n = need(qwen7b, sequences=sequences, completion=completion)
    share = rollout.auto_share(n, CARD_80)
    assert rollout.check_share(share, n, CARD_80) is None
    assert rollout.concurrent_sequences(share, n, CARD_80) >= sequences
    assert rollout.batch_shortfall(share, n, CARD_80) is None
    assert int(CARD_80 * round(share - rollout.STEP, 2)) < n.total_bytes
    assert round(share * 100) == share * 100  # on the 0.01 grid


def test_weights_alone_past_the_card_is_one_usage_error_naming_the_flag(qwen7b):
    with pytest.raises(UsageError) as info:
        rollout.auto_share(need(qwen7b, weights=30 * GIB), CARD_24)
    message = str(info.value)
    assert message.startswith("--vllm-gpu-memory-utilization: the policy weights alone") and "\n" not in message
    assert info.value.exit_code == 2


def test_a_batch_past_the_card_is_one_usage_error(qwen7b):
    with pytest.raises(UsageError, match="more than the card"):
        rollout.auto_share(need(qwen7b, sequences=512, completion=4096), CARD_24)


def test_check_share_gives_vllms_startup_refusals(qwen7b):
    n = need(qwen7b, sequences=1)
    assert "no available memory for the cache blocks" in rollout.check_share(0.1, n, CARD_80)
    assert "is free when it starts" in rollout.check_share(0.6, n, CARD_80, free_bytes=CARD_80 // 2)
    share = rollout.auto_share(n, CARD_80)
    long = need(qwen7b, sequences=1, max_model_len=128000)  # vLLM's max_model_len left at the model's limit
    assert "one request at max_model_len 128000" in rollout.check_share(share, long, CARD_80)
    assert long.kv_one_request_bytes == 8000 * 16 * 57_344 + 16 * 57_344
    assert rollout.check_share(rollout.auto_share(long, CARD_80), long, CARD_80) is None


def test_a_share_smaller_than_the_batch_starts_but_queues(qwen7b):
    big = need(qwen7b, sequences=64)
    share = rollout.auto_share(need(qwen7b, sequences=8), CARD_80)
    assert rollout.check_share(share, big, CARD_80) is None
    assert "of the 64 sequences at once" in rollout.batch_shortfall(share, big, CARD_80)


def test_what_stays_on_the_card_while_training(qwen7b):
    n = need(qwen7b)
    budget = int(CARD_80 * 0.6)
    assert rollout.resident_during_training(n, budget, 0) == budget - n.activation_bytes + n.graph_bytes
    assert rollout.resident_during_training(n, budget, 1) == rollout.resident_during_training(n, budget, 2) \
        == n.overhead_bytes + n.graph_bytes
    assert rollout.host_during_training(n, 1) == n.weights_bytes and rollout.host_during_training(n, 2) == 0
    with pytest.raises(UsageError, match="--sleep-level"):
        rollout.resident_during_training(n, budget, 3)


def test_an_unknown_dtype_names_the_flag(qwen7b):
    with pytest.raises(UsageError, match="--dtype"):
        rollout.kv_bytes_per_token(qwen7b, "int8")


def _source(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None:
        pytest.skip(f"{module} is not installed")
    return re.sub(r"\s+", "", Path(spec.origin).read_text())


def test_trls_colocate_engine_is_sized_as_modelled():
    """The numbers taken from TRL: the engine's max_num_batched_tokens and its max_num_seqs."""
    pytest.importorskip("trl")
    assert f"max_num_batched_tokens={rollout.TRL_MAX_NUM_BATCHED_TOKENS}," in _source("trl.generation.vllm_generation")
    assert ("max_num_seqs=args.per_device_train_batch_size*args.vllm_tensor_parallel_size*args.steps_per_generation"
            in _source("trl.trainer.grpo_trainer"))
    assert "self.llm.sleep(level=2)" in _source("trl.generation.vllm_generation")  # vllm_enable_sleep_mode is level 2
    assert rollout.colocate_sequences(4, 2, tensor_parallel=2) == 16


def test_the_field_report_script_runs(capsys):
    spec = importlib.util.spec_from_file_location("rollout_share", "scripts/rollout_share.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main([])
    out = capsys.readouterr().out
    assert "80GB card" in out and "24GB card" in out
    tp1 = next(line for line in out.splitlines() if line.strip().startswith("1 ") and "refused" in line)
    assert "no available memory for the cache blocks" in tp1  # 0.6 × 24 GB is less than the 15.4 GiB of weights


def test_require_share_is_one_usage_error_with_the_auto_share(qwen7b):
    n = need(qwen7b)
    with pytest.raises(UsageError) as info:
        rollout.require_share(0.1, n, CARD_80)
    message = str(info.value)
    assert message.startswith("--vllm-gpu-memory-utilization: share 0.1") and "\n" not in message
    assert f"auto ({rollout.auto_share(n, CARD_80):g} for this batch)" in message
    rollout.require_share(0.6, n, CARD_80)


def test_a_completion_past_max_model_len_names_the_flag(qwen7b):
    with pytest.raises(UsageError, match="--max-completion-length"):
        need(qwen7b, prompt=4096, completion=512, max_model_len=4096)


def test_gpt2_has_no_intermediate_size_but_a_need():
    n = need(resolve(None, "tiny-gpt2").config, weights=GIB)
    assert n.activation_bytes > 0 and n.kv_cache_bytes > 0
