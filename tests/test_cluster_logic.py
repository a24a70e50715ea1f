"""Cluster logic without processes: agreement, journal, fragmentation rule, torchrun command,
per-rank capacities, and the sim device's accounting of storage resizes (FSDP2)."""

import argparse

import pytest
import torch

from autotune.cluster.agree import agree
from autotune.cluster.fragmentation import EXPANDABLE, allocator_gap, apply_steady_state_rule, wants_expandable
from autotune.cluster.journal import Journal, JournalRunner
from autotune.cluster.launch import spec_fields, torchrun_command
from autotune.cluster.session import per_rank
from autotune.devices.sim import LiveBytes
from autotune.errors import UsageError
from autotune.recipe.schema import TrialResult
from autotune.search.frontier import FrontierSearch, run_search


def report(outcome, peak=None, step=None, tps=None, message=None):
    return TrialResult(phase="train", settings={"per_device_train_batch_size": 4}, outcome=outcome, peak_bytes=peak,
                       step_time_s=step, tokens_per_s=tps, steps=3, message=message)


@pytest.mark.parametrize("outcomes, expected", [
    (["fit", "fit"], "fit"),
    (["fit", "oom"], "oom"),
    (["aborted", "oom"], "oom"),  # the peer blocked in the collective behind an OOM
    (["timeout", "oom"], "oom"),
    (["fit", "over_budget"], "over_budget"),
    (["aborted", "crashed"], "crashed"),
    (["aborted", "timeout"], "timeout"),
    (["aborted", "aborted"], "crashed"),
    (["error", "fit"], "error"),
])
def test_any_rank_decides(outcomes, expected):
    assert agree([report(o) for o in outcomes]).outcome == expected


def test_peak_is_max_and_pace_is_slowest():
    agreed = agree([report("fit", 100, 1.0, 64.0), report("fit", 300, 2.0, 32.0)])
    assert agreed.peak_bytes == 300
    assert agreed.step_time_s == 2.0 and agreed.tokens_per_s == 32.0
    assert [r["peak_bytes"] for r in agreed.memory_stats["ranks"]] == [100, 300]


def test_agreement_keeps_search_in_step_across_unequal_budgets():
    """Two ranks with different budgets measure different outcomes; the agreed outcome drives one
    search, whose frontier is the smaller rank's (brute force over batch sizes is the oracle)."""
    peak = lambda b: 1000 + 100 * b  # noqa: E731
    budgets = [3000, 2200]

    def measure(batch):
        reports = [report("fit" if peak(batch) <= b else "oom", peak(batch)) for b in budgets]
        a = agree(reports)
        return a.outcome, a.peak_bytes

    search = run_search(FrontierSearch(budget=min(budgets), max_batch=64), measure)
    assert search.frontier == max(b for b in range(1, 65) if peak(b) <= min(budgets)) == 12


def test_journal_resumes_and_refuses_stale(tmp_path):
    path = tmp_path / "r.yaml.journal.jsonl"
    about = {"model": "x", "hardware": {"capacity": 1}}
    journal = Journal(path, about)
    assert not path.exists()  # nothing written before the first trial
    calls = []

    class Inner:
        def run(self, phase, settings, steps=None):
            calls.append(settings["per_device_train_batch_size"])
            return report("fit", 10 * len(calls))

    runner = JournalRunner(Inner(), journal)
    first = [runner.run("train", {"per_device_train_batch_size": b}) for b in (1, 2)]
    with open(path, "a") as handle:
        handle.write('{"request": "torn')  # a kill mid-write
    again = JournalRunner(Inner(), Journal(path, about))
    assert [again.run("train", {"per_device_train_batch_size": b}).peak_bytes for b in (1, 2)] == [r.peak_bytes for r in first]
    assert calls == [1, 2] and again.resumed == 2
    stale = Journal(path, {**about, "hardware": {"capacity": 2}})
    assert stale.stale and not stale.done
    assert stale.lookup("train", {"per_device_train_batch_size": 1}) is None


def test_journal_runner_shares_rank0_answer():
    """Ranks other than 0 hold no journal; `share` hands them rank 0's cached result."""
    cached = report("oom")
    runner = JournalRunner(inner=None, journal=None, share=lambda value: __import__("dataclasses").asdict(cached))
    assert runner.run("train", {"per_device_train_batch_size": 4}).outcome == "oom"


def test_steady_state_retries_are_not_a_fit():
    fit = report("fit", 100)
    fit.memory_stats = {"steady_alloc_retries": 2, "alloc_retries": 5, "reserved_peak_bytes": 120, "allocated_peak_bytes": 100}
    assert apply_steady_state_rule(fit).outcome == "over_budget"
    fit.memory_stats["steady_alloc_retries"] = 0
    assert apply_steady_state_rule(fit).outcome == "fit"
    assert allocator_gap(fit.memory_stats) == 20
    assert wants_expandable(7, 8) and not wants_expandable(8, 8)
    assert EXPANDABLE == {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}


def test_torchrun_command_strips_its_flags():
    args = argparse.Namespace(nproc_per_node=2, nnodes=None, node_rank=None, rdzv_endpoint=None, rdzv_id=None, master_port="29511")
    cmd = torchrun_command(["probe", "--model-config", "tiny-llama", "--nproc-per-node", "2", "--master-port=29511", "--out", "r.yaml"], args)
    i = cmd.index("torch.distributed.run")
    assert cmd[i + 1:i + 4] == ["--nproc-per-node=2", "--master-port=29511", "--standalone"]
    assert cmd[cmd.index("autotune"):] == ["autotune", "probe", "--model-config", "tiny-llama", "--out", "r.yaml"]



@pytest.mark.parametrize("changes, flag", [
    ({"nnodes": "0"}, "--nnodes"),  # torchrun: AssertionError 'min_nodes must be > 0', a traceback and exit 1
    ({"nnodes": "two"}, "--nnodes"),
    ({"nnodes": "4:2"}, "--nnodes"),
    ({"nnodes": "2", "node_rank": "2"}, "--node-rank"),
    ({"node_rank": "-1"}, "--node-rank"),
    ({"master_port": "99999999"}, "--master-port"),  # torchrun waited on it
    ({"master_port": "http"}, "--master-port"),
])
def test_torchrun_values_torchrun_would_refuse_are_one_line(changes, flag, monkeypatch):
    from autotune.cluster.launch import wants_torchrun

    for name in ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "MASTER_ADDR"):  # not under torchrun already
        monkeypatch.delenv(name, raising=False)
    args = argparse.Namespace(**{"nproc_per_node": 2, "nnodes": None, "node_rank": None, "rdzv_endpoint": None, "rdzv_id": None,
                                 "master_port": None, **changes})
    with pytest.raises(UsageError) as info:
        wants_torchrun(args)
    assert info.value.flag == flag
    good = argparse.Namespace(nproc_per_node=2, nnodes="1:4", node_rank="0", rdzv_endpoint=None, rdzv_id=None, master_port="29511")
    assert wants_torchrun(good)

def test_gpu_memory_per_rank(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = argparse.Namespace(gpu_memory="16MiB,24MiB", strategy="ddp,fsdp", isolate=False, trial_timeout=60.0,
                              resume=False, no_journal=True, out="r.yaml", expandable_segments="auto")
    fields = spec_fields(args)
    assert fields["gpu_memory_per_rank"] == (16 << 20, 24 << 20) and fields["gpu_memory"] == 16 << 20
    assert fields["world_size"] == 2 and fields["strategies"] == ("ddp", "fsdp")
    with pytest.raises(UsageError, match="--gpu-memory: 2 sizes for 3 ranks"):
        per_rank((1, 2), None, 3)


def test_bad_strategy_names_the_flag():
    from autotune.spec import ProbeSpec

    with pytest.raises(UsageError, match="--strategy: unknown strategy 'zero4'"):
        ProbeSpec(max_length=16, model_config="tiny-llama", strategies=("zero4",))


def test_sim_counts_storage_resizes():
    """FSDP2 frees and re-allocates unsharded parameters with storage.resize_: the sim device must
    see both, or per-rank peaks under FSDP grow without bound."""
    with LiveBytes(64 * 1024) as counter:
        t = torch.empty(4096, dtype=torch.uint8)
        assert counter.current == 4096
        t.untyped_storage().resize_(0)
        assert counter.current == 0
        t.untyped_storage().resize_(8192)
        assert counter.current == 8192 and counter.peak == 8192
        with pytest.raises(torch.OutOfMemoryError):
            t.untyped_storage().resize_(1 << 20)


@pytest.mark.parametrize("outcome", ["timeout", "crashed"])
def test_progress_prints_cluster_outcomes(outcome):
    from rich.console import Console

    from autotune.cli.output import ConsoleProgress

    console = Console(record=True, width=200)
    ConsoleProgress(console).trial_finished(report(outcome, message="the worker died (exit code -9)"))
    assert outcome in console.export_text()


def test_journal_replays_each_entry_once_in_order(tmp_path):
    """A request made twice (the runoff re-times a configuration) replays the second recorded
    answer the second time, and a run never answers itself from its own new entries."""
    from autotune.cluster.journal import Journal
    from autotune.recipe.schema import TrialResult

    about = {"model": "m"}
    settings = {"per_device_train_batch_size": 2}
    first = Journal(tmp_path / "j.jsonl", about)
    for speed in (100.0, 200.0):
        first.record("train", settings, TrialResult("train", settings, "fit", 10, tokens_per_s=speed))
    assert first.lookup("train", settings) is None  # this run's own entries are not served back
    resumed = Journal(tmp_path / "j.jsonl", about)
    assert [resumed.lookup("train", settings).tokens_per_s for _ in range(2)] == [100.0, 200.0]
    assert resumed.lookup("train", settings) is None
