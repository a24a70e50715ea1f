"""Text families shipped as tiny configs (Qwen3, Qwen3-MoE, Mixtral, Gemma 2, Gemma 3 text): each
probes on the sim device and plans with fake tensors to the same peaks; an MoE's peak does not
depend on where its router sends the tokens; Gemma 2's missing sdpa is skipped with the reason."""

import pytest
import torch
import yaml

from autotune.cli import main
from autotune.devices import SimDevice
from autotune.devices.fake import FakeDevice
from autotune.model.source import resolve
from autotune.plan.measure import build_plan_workload, measure_candidate, plan_source
from autotune.spec import ProbeSpec
from autotune.trials.trial import run_eval_trial, run_train_trial
from autotune.model.workload import load_workload

GiB = 2**30


@pytest.mark.parametrize("name,attn", [
    ("tiny-qwen3", "sdpa"),
    ("tiny-qwen3-moe", "sdpa"),  # router + experts as 3-D parameters, grouped_mm
    ("tiny-mixtral", "sdpa"),  # output_router_logits: the load-balancing loss runs too
    ("tiny-gemma2", "eager"),  # no sdpa in transformers (softcapping)
    ("tiny-gemma3-text", "sdpa"),  # sliding and full layers; 64 tokens > the window of 32
])
def test_plan_matches_the_sim_device(name, attn):
    spec = ProbeSpec(max_length=64, model_config=name, attn_implementation=attn)
    measure = measure_candidate(build_plan_workload(plan_source(spec), spec, FakeDevice()), attn, False)
    assert measure.error is None
    real = load_workload(resolve(None, name), spec.replace(device="sim", gpu_memory=GiB), SimDevice(GiB))
    for batch in (1, 2):
        train = run_train_trial(real, batch, 3, GiB).peak_bytes
        evaluate = run_eval_trial(real, batch, 2, GiB).peak_bytes
        assert abs(measure.train_peaks[batch] - train) <= 0.02 * train, (batch, measure.train_peaks[batch], train)
        assert abs(measure.eval_peaks[batch] - evaluate) <= 0.02 * evaluate, (batch, measure.eval_peaks[batch], evaluate)
    assert measure.train_peaks[2] > measure.train_peaks[1]


def _routers(model):
    return [m for _, m in model.named_modules() if type(m).__name__.endswith("TopKRouter")]


@pytest.mark.parametrize("name", ["tiny-qwen3-moe", "tiny-mixtral"])
def test_moe_peak_is_the_same_whichever_experts_the_router_picks(make_workload, name):
    """transformers' experts (grouped_mm, its default wherever it dispatches: CUDA sm80+ and the
    CPU) run tokens x top_k rows whichever experts they go to, and every expert's weights get a
    whole gradient: routing every token to the same top_k experts peaks exactly where the random
    router's spread does."""
    workload = make_workload(name, GiB, max_length=64)
    assert workload.model.config._experts_implementation == "grouped_mm"
    routers = _routers(workload.model)
    assert len(routers) == workload.model.config.num_hidden_layers
    hits = []
    record = [r.register_forward_hook(lambda m, i, out: hits.append(out[2].unique().numel())) for r in routers]
    spread = run_train_trial(workload, 2, 3, GiB)
    for handle in record:
        handle.remove()
    assert min(hits) == routers[0].num_experts  # the random router uses every expert

    def first_k(module, inputs, out):  # every token to experts 0 .. top_k-1
        logits, scores, indices = out
        return logits, scores, torch.arange(indices.shape[-1], device=indices.device).expand_as(indices)

    forced = [r.register_forward_hook(first_k) for r in routers]
    concentrated = run_train_trial(workload, 2, 3, GiB)
    for handle in forced:
        handle.remove()
    assert spread.fits and concentrated.fits
    assert concentrated.peak_bytes == spread.peak_bytes


def test_gemma2_skips_sdpa_with_the_reason(tmp_path):
    out = tmp_path / "r.yaml"
    argv = ["probe", "--model-config", "tiny-gemma2", "--device", "sim", "--gpu-memory", "16MiB", "--max-length", "32",
            "--attn", "sdpa,eager", "--gradient-checkpointing", "off", "--no-eval", "--validate-steps", "3",
            "--max-batch-size", "2", "--no-journal", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    recipe = yaml.safe_load(out.read_text())
    rows = {c["attn_implementation"]: c for c in recipe["search"]["candidates"]}
    assert rows["sdpa"]["status"] == "skipped"
    assert rows["sdpa"]["reason"] == "Gemma2ForCausalLM does not support sdpa (transformers sets _supports_sdpa = False for it)"
    assert rows["eager"]["status"] == "searched" and recipe["settings"]["attn_implementation"] == "eager"


def test_gemma2_with_only_sdpa_is_one_line(tmp_path, capsys):
    argv = ["probe", "--model-config", "tiny-gemma2", "--device", "sim", "--gpu-memory", "16MiB", "--max-length", "32",
            "--attn", "sdpa", "--out", str(tmp_path / "r.yaml")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autotune: error: --attn: no attention implementation can run here")
    assert "Gemma2ForCausalLM does not support sdpa" in err[0]


def test_gemma2_plan_reports_sdpa_unsupported(capsys):
    argv = ["plan", "--model-config", "tiny-gemma2", "--max-length", "32", "--gpu-memory", "16MiB", "--attn", "sdpa,eager",
            "--gradient-checkpointing", "off"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "sdpa/gc-off: not planned - Gemma2ForCausalLM does not support sdpa" in out and "eager/gc-off" in out
