"""Cluster probing with real processes on the sim device: supervised workers that are killed
mid-trial, a probe killed and resumed, and torchrun with two gloo ranks of unequal memory
running DDP, FSDP2 and DeepSpeed ZeRO, and four ranks. Slow to start (torch import per
process): few and tiny, and one xdist group, so that under `-n 2` they run one after another on
one worker instead of two torchrun jobs contending for the same cores."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("processes")]

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model-config", "tiny-llama", "--device", "sim", "--gpu-memory", "12MiB", "--max-length", "16",
        "--max-batch-size", "8", "--steps", "3", "--trial-timeout", "120",
        # One candidate, short validation: the trial list then depends on memory alone, not on
        # timings (the throughput runoff re-times close candidates, which varies run to run).
        "--attn", "sdpa", "--gradient-checkpointing", "off", "--validate-steps", "3"]


def command(*args):
    return [sys.executable, "-m", "autotune", "probe", *args]


def env(**extra):
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def essence(path):
    """What must match between runs: the settings, the frontier, and each trial's request and outcome."""
    recipe = yaml.safe_load(Path(path).read_text())
    trials = [(t["phase"], t["settings"].get("per_device_train_batch_size", t["settings"].get("per_device_eval_batch_size")),
               t["outcome"]) for t in recipe["search"]["trials"]]
    return recipe["settings"], recipe["search"]["frontier"], trials


def peaks(path):
    return [t["peak_bytes"] for t in yaml.safe_load(Path(path).read_text())["search"]["trials"]]


def journal_trials(path):
    return len(Path(path).read_text().splitlines()) - 1 if Path(path).exists() else 0


def test_killed_worker_and_killed_probe_give_the_uninterrupted_recipe(tmp_path, capfd):
    """Reference: in process (this test's own, `cli.main`: no process start to pay for). Then in
    supervised workers with one worker SIGKILLed mid-trial (retried in a fresh worker). Then the
    whole probe SIGKILLed after two trials and rerun (in process: the rerun's workers are real
    processes; what is tested is that the journal supplies the finished trials and the recipe is
    the same)."""
    from autotune.cli import main

    ref = tmp_path / "ref.yaml"
    assert main(["probe", *TINY, "--out", str(ref), "--no-journal"]) == 0

    killed = tmp_path / "killed-worker.yaml"
    marker = tmp_path / "killed-once"
    faults = env(AUTOTUNE_TEST_FAULT=f"kill:2:{marker}", PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests/faults'}")
    run = subprocess.run(command(*TINY, "--isolate", "--out", str(killed)), env=faults,
                         timeout=300, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert marker.exists()  # the worker really was killed in the batch-2 trial
    assert essence(killed) == essence(ref)
    # A worker of one rank runs the Trainer as `python train.py` does: no DDP wrapper (whose
    # gradient buckets would count) although the supervisor starts it with torchrun's variables.
    assert peaks(killed) == peaks(ref)

    out = tmp_path / "resumed.yaml"
    journal = Path(f"{out}.journal.jsonl")
    args = command(*TINY, "--isolate", "--out", str(out))
    probe = subprocess.Popen(args, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while journal_trials(journal) < 2 and time.monotonic() < deadline and probe.poll() is None:
        time.sleep(0.2)
    os.killpg(probe.pid, signal.SIGKILL)  # the probe and the worker it started: this test's own processes
    probe.wait()
    done = journal_trials(journal)
    assert done >= 2 and not out.exists()
    capfd.readouterr()  # file-descriptor capture: the supervisor hands sys.stderr's fd to its workers
    assert main(args[3:]) == 0  # args = [python, -m, autotune, probe, ...]
    stderr = capfd.readouterr().err
    assert f"{done} trial(s) taken from the journal" in stderr, stderr[-3000:]
    assert essence(out) == essence(ref)
    assert journal_trials(journal) == len(essence(ref)[2])  # nothing ran twice


def torchrun_probe(tmp_path, world: int, *args) -> dict:
    """`probe --nproc-per-node WORLD ARGS` (autotune starts torchrun); the recipe, after checking
    that every rank reached it."""
    out = tmp_path / "r.yaml"
    run = subprocess.run(command(*args, "--nproc-per-node", str(world), "--out", str(out)),
                         env=env(), timeout=500, capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"all {world} ranks reached the same recipe" in run.stderr
    recipe = yaml.safe_load(out.read_text())
    assert recipe["hardware"]["world_size"] == world
    assert recipe["hardware"]["device_count"] == world  # one node: its ranks, so the launch files say NPROC_PER_NODE=world
    return recipe


def test_a_probe_under_its_own_torchrun_ends_with_its_exit_code_not_torchrun_s(tmp_path):
    """Nothing fits on any rank: the probe exits 3 with its one line, as on one device; torchrun
    used to turn the ranks' 3 into its own exit 1 and a ChildFailedError traceback. The workers,
    killed after the OOM on both ranks, leave no Trainer output_dir behind in the temp folder."""
    out, scratch = tmp_path / "r.yaml", tmp_path / "tmp"
    scratch.mkdir()
    run = subprocess.run(command("--model-config", "tiny-llama", "--device", "sim", "--gpu-memory", "1MiB", "--max-length", "16",
                                 "--attn", "sdpa", "--gradient-checkpointing", "off", "--no-eval", "--no-journal",
                                 "--nproc-per-node", "2", "--out", str(out)),
                         env=env(TMPDIR=str(scratch)), timeout=300, capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 3, run.stderr[-3000:]
    assert "autotune: error: even batch size 1 does not fit" in run.stderr and "Traceback" not in run.stderr
    assert not out.exists()
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("autotune-trainer-")]


def agreed_trials(recipe: dict, world: int) -> dict:
    """Check that every trial's recorded outcome is the agreement of its `world` rank reports;
    return the first train trial of each (strategy, batch) with its ranks."""
    from autotune.cluster.agree import agree
    from autotune.recipe.schema import TrialResult

    by = {}
    for t in recipe["search"]["trials"]:
        ranks = t["memory_stats"]["ranks"]
        assert len(ranks) == world
        reports = [TrialResult(phase=t["phase"], settings={}, outcome=r["outcome"], peak_bytes=r["peak_bytes"]) for r in ranks]
        assert agree(reports).outcome == t["outcome"]
        if t["phase"] == "train":  # the strategy search comes first: keep its trial for each batch
            by.setdefault((t["settings"].get("strategy"), t["settings"]["per_device_train_batch_size"]), (t, ranks))
    return by


def test_torchrun_ranks_with_unequal_memory_agree_and_sharding_lowers_the_peak(tmp_path):
    """`--nproc-per-node 2` starts torchrun: two gloo ranks, rank 1 with less memory. Under DDP rank
    1 runs out of memory while rank 0 goes on into the gradient all-reduce and blocks there: the
    probe must not hang (this test's timeout), must record the trial, and both ranks must agree
    on every trial and on the recipe. FSDP2 shards parameters, gradients and AdamW state, so its
    per-rank peak is lower than DDP's at the same batch, and it is the strategy that fits."""
    recipe = torchrun_probe(tmp_path, 2, "--model-config", str(ROOT / "tests/data/wide-llama.json"), "--device", "sim",
                            "--gpu-memory", "64MiB,34MiB", "--max-length", "16", "--max-batch-size", "2",
                            "--trial-timeout", "120", "--strategy", "ddp,fsdp")
    assert recipe["hardware"]["capacity_bytes"] == 34 << 20  # the smaller rank decides
    assert recipe["settings"]["strategy"] == "fsdp"
    by = agreed_trials(recipe, 2)
    ddp, ddp_ranks = by[("ddp", 1)]
    assert ddp["outcome"] == "oom" and ddp_ranks[1]["outcome"] == "oom"
    assert ddp_ranks[0]["outcome"] in ("fit", "aborted")  # blocked behind the OOM, or finished first
    fsdp, fsdp_ranks = by[("fsdp", 1)]
    assert fsdp["outcome"] == "fit"
    ddp_peak_rank0 = ddp_ranks[0]["peak_bytes"] or ddp["peak_bytes"]
    if ddp_ranks[0]["outcome"] == "fit":
        assert fsdp_ranks[0]["peak_bytes"] < 0.75 * ddp_peak_rank0
    assert all(r["peak_bytes"] < 34 << 20 for r in fsdp_ranks)

    # The pre-flight check of this recipe at its world size (`check --nproc-per-node 2`, the same
    # two cards): the sharded step fits, as probed, where one unsharded process would not.
    def check(*args):
        return subprocess.run([sys.executable, "-m", "autotune", "check", str(tmp_path / "r.yaml"), *args],
                              env=env(), timeout=300, capture_output=True, text=True, cwd=tmp_path)

    sharded = check("--nproc-per-node", "2", "--gpu-memory", "64MiB,34MiB", "--format", "json")
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    data = json.loads(sharded.stdout[sharded.stdout.index("{"):])  # rank 0's object, printed once
    assert data["status"] == "fits" and data["peak_bytes"] <= data["budget_bytes"]
    assert [r["peak_bytes"] <= data["peak_bytes"] for r in data["trials"][0]["memory_stats"]["ranks"]] == [True, True]
    assert data["capacity_bytes"] == 34 << 20 and data["differences"] == []


def test_deepspeed_zero_per_rank_peaks_under_torchrun(tmp_path):
    """Two gloo ranks, DDP vs DeepSpeed ZeRO-2 vs ZeRO-3 (through accelerate) at batch 1, fp32.
    The probe runs DeepSpeed with the config the launch files carry (ms-swift's ZeRO settings):
    ZeRO-2 holds its whole reduce bucket (2e8 elements, allocated at once), which dwarfs this
    small model, and below it sharded gradients and optimizer state; ZeRO-3 shards everything
    and its buckets follow the hidden size, so its per-rank peak is below DDP's. Skipped where
    deepspeed is not installed. DDP last: it is usually the fastest, so the validation reuses its
    workers instead of starting new ones."""
    pytest.importorskip("deepspeed")
    from autotune.emit.deepspeed import zero_optimization

    recipe = torchrun_probe(tmp_path, 2, "--model-config", str(ROOT / "tests/data/wide-llama.json"), "--device", "sim",
                            "--gpu-memory", "4GiB", "--dtype", "float32", "--max-length", "16", "--max-batch-size", "1",
                            "--trial-timeout", "240", "--strategy", "zero2,zero3,ddp", "--attn", "sdpa",
                            "--gradient-checkpointing", "off", "--no-eval", "--validate-steps", "3", "--no-journal")
    by = agreed_trials(recipe, 2)
    ddp, zero2, zero3 = (max(r["peak_bytes"] for r in by[(s, 1)][1]) for s in ("ddp", "zero2", "zero3"))
    assert all(by[(s, 1)][0]["outcome"] == "fit" for s in ("ddp", "zero2", "zero3"))
    bucket = zero_optimization("zero2")["reduce_bucket_size"] * 4  # fp32 gradients
    assert zero2 > bucket and zero2 - bucket < ddp  # the real bucket is counted; the sharded rest is below DDP
    assert zero3 < 0.9 * ddp and zero3 < zero2


def test_four_ranks_one_smaller_agree_on_every_trial_and_the_recipe(tmp_path):
    """`--nproc-per-node 4`, rank 3 with 40% of the others' memory. Batch 4 fits ranks 0-2 and
    breaks rank 3's budget: the agreed trial is over budget, all four ranks step to batch 3
    together and write the same recipe, sized for the smallest card."""
    recipe = torchrun_probe(tmp_path, 4, "--model-config", "tiny-llama", "--device", "sim",
                            "--gpu-memory", "12MiB,12MiB,12MiB,4.8MiB", "--max-length", "16", "--max-batch-size", "4",
                            "--trial-timeout", "120", "--attn", "sdpa", "--gradient-checkpointing", "off", "--no-eval",
                            "--validate-steps", "3", "--no-journal")
    assert recipe["hardware"]["capacity_bytes"] == int(4.8 * 2**20)
    by = agreed_trials(recipe, 4)
    four, ranks = by[(None, 4)]
    assert [r["outcome"] for r in ranks] == ["fit", "fit", "fit", "over_budget"] and four["outcome"] == "over_budget"
    assert recipe["settings"]["per_device_train_batch_size"] == 3 == recipe["search"]["frontier"]["train"]


def test_grpo_on_two_ranks_counts_every_rank_s_completions(tmp_path):
    """An RLHF probe on two gloo ranks: each worker sizes the colocated engine's `auto` share where
    its model loads, TRL's GRPOTrainer runs under DDP with its batch rules over both ranks (the
    generation batch holds per-device batch x accumulation x 2 completions), the ranks agree on
    every trial and on the recipe, and `check` re-runs it on two ranks."""
    pytest.importorskip("trl")
    recipe = torchrun_probe(tmp_path, 2, "--model-config", "tiny-llama", "--device", "sim", "--gpu-memory", "2GiB",
                            "--train-type", "lora", "--rlhf-type", "grpo", "--max-length", "16", "--max-completion-length", "8",
                            "--num-generations", "2", "--use-vllm", "--vllm-gpu-memory-utilization", "auto",
                            "--global-batch-size", "4", "--max-batch-size", "4", "--attn", "sdpa", "--gradient-checkpointing",
                            "off", "--no-eval", "--validate-steps", "3", "--trial-timeout", "240", "--no-journal")
    s, rlhf = recipe["settings"], recipe["rlhf"]
    agreed_trials(recipe, 2)
    assert s["per_device_train_batch_size"] * s["gradient_accumulation_steps"] * 2 == rlhf["generation_batch_size"] == 4
    assert 0 < s["vllm_gpu_memory_utilization"] == rlhf["rollout"]["share"] < 1 and rlhf["rollout"]["auto"]["chosen"] == rlhf["rollout"]["share"]
    assert rlhf["rollout"]["share_bytes"] < min(t["peak_bytes"] for t in recipe["search"]["trials"] if t["outcome"] == "fit")
    check = subprocess.run([sys.executable, "-m", "autotune", "check", str(tmp_path / "r.yaml"), "--nproc-per-node", "2",
                            "--gpu-memory", "2GiB", "--format", "json"], env=env(), timeout=300, capture_output=True, text=True, cwd=tmp_path)
    assert check.returncode == 0, check.stderr[-3000:]
    assert json.loads(check.stdout[check.stdout.index("{"):])["status"] == "fits"


def rlhf_oracle(tmp_path, recipe_path, batch: int, accumulation: int, world: int) -> dict:
    """TRL's trainer under DeepSpeed on `world` gloo ranks at the recipe's settings
    (tests/rlhf_zero_oracle.py): every rank's peak, and the recipe's budget."""
    out = tmp_path / f"oracle-{batch}x{accumulation}.json"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
                          str(ROOT / "tests/rlhf_zero_oracle.py"), str(recipe_path), str(batch), str(accumulation), str(out)],
                         env=env(), timeout=300, capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out.read_text())


def test_grpo_lora_under_zero3_reaches_the_frontier_trl_confirms(tmp_path):
    """GRPO LoRA on two gloo ranks with `--strategy zero3`: each trial is TRL's GRPOTrainer given the
    launch files' DeepSpeed config (it generates with the ZeRO-3 weights gathered), in a worker of its
    own, so the same batch measures the same peak however many trials came before. The recipe records
    zero3; TRL's trainer built by the oracle at the recipe's batch stays in the budget on both ranks and
    at batch + 1 passes it; `check` re-runs the recipe on two ranks. The card (7.2 MiB) puts the frontier
    at 1 with batch 2 under the whole card, so no rank runs out of memory mid-collective."""
    pytest.importorskip("trl")
    pytest.importorskip("deepspeed")
    recipe = torchrun_probe(tmp_path, 2, "--model-config", "tiny-llama", "--device", "sim", "--gpu-memory", "7.2MiB",
                            "--train-type", "lora", "--rlhf-type", "grpo", "--strategy", "zero3", "--max-length", "16",
                            "--max-completion-length", "8", "--num-generations", "2", "--global-batch-size", "4",
                            "--max-batch-size", "2", "--attn", "sdpa", "--gradient-checkpointing", "off", "--no-eval",
                            "--validate-steps", "3", "--trial-timeout", "240", "--no-journal")
    s, budget = recipe["settings"], recipe["search"]["budget_bytes"]
    assert s["strategy"] == "zero3" and (s["per_device_train_batch_size"], s["gradient_accumulation_steps"]) == (1, 2)
    by = agreed_trials(recipe, 2)
    assert by[("zero3", 1)][0]["outcome"] == "fit" and by[("zero3", 2)][0]["outcome"] == "over_budget"
    at_one = {t["peak_bytes"] for t in recipe["search"]["trials"] if t["settings"]["per_device_train_batch_size"] == 1}
    # A fresh worker per trial: nothing left on the card by the trials before (a reused worker left
    # ~0.6 MiB per trial); a few KiB may differ with what the ranks' generation happened to allocate.
    assert max(at_one) - min(at_one) < 64 * 2**10
    fits = rlhf_oracle(tmp_path, tmp_path / "r.yaml", 1, 2, 2)
    assert all(peak <= budget for peak in fits["peaks"]) and fits["budget"] == budget
    over = rlhf_oracle(tmp_path, tmp_path / "r.yaml", 2, 1, 2)
    assert all(peak == "oom" or peak > budget for peak in over["peaks"])
    check = subprocess.run([sys.executable, "-m", "autotune", "check", str(tmp_path / "r.yaml"), "--nproc-per-node", "2",
                            "--format", "json"], env=env(), timeout=300, capture_output=True, text=True, cwd=tmp_path)
    assert check.returncode == 0, check.stderr[-3000:]
    assert json.loads(check.stdout[check.stdout.index("{"):])["status"] == "fits"


def dpo_full_probe(tmp_path, card: str, strategy: str) -> dict:
    """A tiny-llama DPO full fine-tune probed on two ranks under `strategy`, batches up to 2."""
    return torchrun_probe(tmp_path, 2, "--model-config", "tiny-llama", "--device", "sim", "--gpu-memory", card,
                          "--rlhf-type", "dpo", "--strategy", strategy, "--max-length", "16", "--max-batch-size", "2",
                          "--attn", "sdpa", "--gradient-checkpointing", "off", "--no-eval", "--validate-steps", "3",
                          "--trial-timeout", "240", "--no-journal")


def test_dpo_full_under_zero3_partitions_the_reference_and_trl_confirms(tmp_path):
    """A DPO full fine-tune on two gloo ranks under `--strategy zero3`: the reference model is loaded
    and TRL's `prepare_deepspeed` partitions it with the policy. The card (12 MiB) puts the frontier at
    1 with batch 2 under the whole card; TRL's DPOTrainer built by the oracle confirms both sides."""
    pytest.importorskip("trl")
    pytest.importorskip("deepspeed")
    recipe = dpo_full_probe(tmp_path, "12MiB", "zero3")
    s, budget = recipe["settings"], recipe["search"]["budget_bytes"]
    assert s["strategy"] == "zero3" and recipe["rlhf"]["reference_model"] == "loaded"
    assert recipe["search"]["frontier"]["train"] == s["per_device_train_batch_size"] == 1
    fits = rlhf_oracle(tmp_path, tmp_path / "r.yaml", 1, s["gradient_accumulation_steps"], 2)
    assert all(peak <= budget for peak in fits["peaks"])
    over = rlhf_oracle(tmp_path, tmp_path / "r.yaml", 2, s["gradient_accumulation_steps"], 2)
    assert all(peak == "oom" or peak > budget for peak in over["peaks"])


def test_dpo_full_under_zero2_counts_deepspeed_s_buckets_as_trl_allocates_them(tmp_path):
    """ZeRO-2 with the launch files' config (ms-swift's zero2: 2e8-element reduce and all-gather
    buckets) allocates its bf16 reduce bucket up front, about 381 MiB per rank whatever the model:
    the probe counts it, and TRL's DPOTrainer built by the oracle at the recipe's batch, with the
    reference model DeepSpeed leaves unsharded under ZeRO-2, peaks where the probe said on both
    ranks, within the budget."""
    pytest.importorskip("trl")
    pytest.importorskip("deepspeed")
    recipe = dpo_full_probe(tmp_path, "1GiB", "zero2")
    s, budget = recipe["settings"], recipe["search"]["budget_bytes"]
    assert s["strategy"] == "zero2" and recipe["rlhf"]["reference_model"] == "loaded" and s["per_device_train_batch_size"] == 2
    probed = recipe["validation"]["peak_bytes"]
    assert probed > 380 * 2**20  # the reduce bucket, counted
    fits = rlhf_oracle(tmp_path, tmp_path / "r.yaml", 2, s["gradient_accumulation_steps"], 2)
    assert all(peak <= budget and abs(peak - probed) < 2**20 for peak in fits["peaks"]), (fits, probed)


def test_the_plan_first_runs_while_the_worker_loads_the_model():
    """Issue #13 item 6: with trials in a worker, the supervisor plans under fake tensors as soon
    as the worker has opened its card, while the worker loads the model: the two spans overlap on
    the system's monotonic clock (the plan before the worker starts, or after it is ready, would
    not). The search then starts at the planned frontier: a fit at k and a non-fit at k + 1."""
    from autotune.probe import probe
    from autotune.progress import ProgressSink
    from autotune.spec import ProbeSpec

    class Stages(ProgressSink):
        def __init__(self):
            self.seen = []

        def stage(self, message):
            self.seen.append(message)

    stages = Stages()
    spec = ProbeSpec(model_config="tiny-llama", device="sim", gpu_memory=12 * 2**20, max_length=16, max_batch_size=64,
                     attn_candidates=("sdpa",), gradient_checkpointing_candidates=(False,), eval=False, validate_steps=3,
                     isolate=True, plan_first="on", trial_timeout=120)
    recipe = probe(spec, stages)
    planned = recipe.search.phases["plan"]
    assert 0 < planned["while_loading_s"] <= planned["wall_s"]
    planning = next(i for i, m in enumerate(stages.seen) if m.startswith("planned in"))
    ready = next(i for i, m in enumerate(stages.seen) if m.startswith("usable budget"))
    assert planning < ready  # planned before the worker reported its model loaded
    train = [t for t in recipe.search.trials if t.phase == "train" and t.purpose != "validation"]
    k = recipe.search.frontier["train"]
    assert [(t.settings["per_device_train_batch_size"], t.outcome) for t in train[:2]] == [(k, "fit"), (k + 1, "over_budget")]
