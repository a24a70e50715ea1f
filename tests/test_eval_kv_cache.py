"""The eval trial builds the language model's KV cache exactly when the launch target does
(issue #11 item 2; model/kv_cache.py). The HF Trainer switches `use_cache` off in the model's top
config only, so a vision-language model's language model (its own text config) builds a cache in
every eval forward; ms-swift switches it off there too. With ms-swift as the target the eval peak
is lower by exactly that cache, the eval frontier is no lower, training is the same, and a text
model (whose top config is the language model's) is the same either way; the plan agrees."""

import pytest
import torch

from autotune.devices import SimDevice
from autotune.devices.fake import FakeDevice
from autotune.model import kv_cache
from autotune.model.source import resolve
from autotune.model.workload import load_workload
from autotune.plan.measure import CandidateSteps, build_plan_workload, plan_source, switch_candidate
from autotune.progress import ProgressSink
from autotune.search.frontier import find_frontier
from autotune.spec import ProbeSpec
from autotune.trials.trial import InProcessRunner, run_eval_trial, run_train_trial

MiB = 2**20
ROOMY = 256 * MiB
EVAL_BATCH, TRAIN_BATCH = 3, 2
# ms-swift's default keeping (no compute_metrics): the peak is inside the eval forward, where the cache lives.
CANDIDATE = {"attn_implementation": "sdpa", "gradient_checkpointing": False}
VISION = {"tiny-qwen2-vl": {"max_pixels": 56 * 56 * 4}, "tiny-llava": {}}


def _spec(name: str, swift: bool, **extra) -> ProbeSpec:
    return ProbeSpec(max_length=96, model_config=name, device="sim", gpu_memory=ROOMY, eval_outputs="loss",
                     use_cache_off_in_sub_configs=swift, **VISION.get(name, {}), **extra)


def _eval_settings(spec) -> dict:
    return {**CANDIDATE, **spec.eval_keep_settings(), "per_device_train_batch_size": TRAIN_BATCH}


def cache_bytes(config, tokens: int, batch: int, dtype: str) -> int:
    """The language model's KV cache from its config: layers x (K and V) x KV heads x head size x
    tokens x batch x the dtype's bytes."""
    text = config.get_text_config()
    head = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return text.num_hidden_layers * 2 * text.num_key_value_heads * head * tokens * batch * torch.finfo(getattr(torch, dtype)).bits // 8


class Measured:
    """Trials on one loaded model per name (switching the target between them), each run once."""

    def __init__(self):
        self.workloads, self.peaks = {}, {}

    def workload(self, name: str):
        if name not in self.workloads:
            self.workloads[name] = load_workload(resolve(None, name), _spec(name, swift=False), SimDevice(ROOMY))
        return self.workloads[name]

    def targeted(self, name: str, swift: bool):
        workload = self.workload(name)
        workload.spec = workload.spec.replace(use_cache_off_in_sub_configs=swift)
        return workload

    def peak(self, name: str, swift: bool, phase: str = "eval") -> int:
        """The eval trial's peak at EVAL_BATCH after a train step at TRAIN_BATCH, or the train trial's at TRAIN_BATCH."""
        if (name, swift, phase) not in self.peaks:
            workload = self.targeted(name, swift)
            if phase == "eval":
                trial = run_eval_trial(workload, EVAL_BATCH, 2, ROOMY, _eval_settings(workload.spec))
            else:
                trial = run_train_trial(workload, TRAIN_BATCH, 3, ROOMY, dict(CANDIDATE))
            assert trial.outcome == "fit", trial.message
            self.peaks[name, swift, phase] = trial.peak_bytes
        return self.peaks[name, swift, phase]

    def eval_frontier(self, name: str, swift: bool, budget: int) -> int:
        workload = self.targeted(name, swift)
        search = find_frontier(InProcessRunner(workload, 2, budget), "eval", _eval_settings(workload.spec), budget, 16,
                               ProgressSink(), [], hint=EVAL_BATCH)
        return search.frontier

    def cache(self, name: str) -> int:
        spec = self.workload(name).spec
        return cache_bytes(resolve(None, name).config, spec.max_length, EVAL_BATCH, spec.dtype)


@pytest.fixture(scope="module")
def measured():
    return Measured()


# Qwen2-VL: its train peaks too; LLaVA: its eval.
@pytest.mark.parametrize("name,train", [("tiny-qwen2-vl", True), ("tiny-llava", False)])
def test_an_ms_swift_launch_evaluates_without_the_kv_cache_the_hf_trainer_builds(measured, name, train):
    saving = measured.peak(name, False) - measured.peak(name, True)
    workload = measured.workload(name)
    assert workload.model.config.get_text_config().use_cache is True  # the trial put ms-swift's switch back
    assert workload.make_batch(1, device=torch.device("cpu"))["input_ids"].shape[1] == workload.spec.max_length
    cache = measured.cache(name)
    assert abs(saving - cache) <= 0.02 * cache, (saving, cache)
    if train:  # training keeps the keys and values for the backward either way
        assert measured.peak(name, True, "train") == measured.peak(name, False, "train")


def test_on_a_card_between_the_two_peaks_ms_swifts_eval_frontier_is_one_batch_more(measured):
    """The eval frontier searched as the probe searches it, on a card between the two peaks at
    EVAL_BATCH: ms-swift's evaluation fits there, the HF Trainer's does not."""
    name = "tiny-qwen2-vl"
    budget = measured.peak(name, False) - measured.cache(name) // 2
    swift_frontier, hf_frontier = measured.eval_frontier(name, True, budget), measured.eval_frontier(name, False, budget)
    assert swift_frontier >= hf_frontier
    assert (swift_frontier, hf_frontier) == (EVAL_BATCH, EVAL_BATCH - 1)


def test_a_text_model_evaluates_the_same_for_either_target(measured):
    """Its top config is the language model's: the Trainer's switch is ms-swift's there."""
    assert kv_cache.language_model_configs(measured.workload("tiny-llama").model.config) == []
    assert measured.peak("tiny-llama", False) == measured.peak("tiny-llama", True)


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "tiny-llama"])
def test_the_plans_eval_step_switches_the_cache_as_the_trials_do(measured, name):
    """Under fake tensors the step model has no Trainer to switch the top config: it switches the
    caches as the launch does (the Trainer's for either target, ms-swift's sub-configs for ms-swift),
    and agrees with the sim trial within 2% for both targets."""
    peaks = {}
    for swift in (False, True):
        spec = _spec(name, swift)
        planned = build_plan_workload(plan_source(spec), spec, FakeDevice())
        steps = CandidateSteps(planned, switch_candidate(planned, "sdpa", False), eval_steps=2, eval_settings=spec.eval_keep_settings())
        try:
            plan_peak = steps.eval(TRAIN_BATCH, 1, EVAL_BATCH).peak
        finally:
            steps.close()
        trial_peak = measured.peak(name, swift)
        assert abs(plan_peak - trial_peak) <= 0.02 * trial_peak, (swift, plan_peak, trial_peak)
        peaks[swift] = plan_peak
    cache = measured.cache(name) if kv_cache.language_model_configs(resolve(None, name).config) else 0
    assert abs((peaks[False] - peaks[True]) - cache) <= 0.02 * cache, (peaks, cache)


def test_the_target_decides_the_switch_where_a_spec_is_built():
    """probe: ms-swift with --emit swift (as --eval-outputs' default); plan: the HF Trainer (it has
    no launch target; `probe --plan-first` plans with the probe's own spec)."""
    from autotune.cli import build_parser
    from autotune.cli.probe import spec_from_args

    base = ["probe", "--model-config", "tiny-qwen2-vl", "--max-length", "96", "--max-pixels", str(56 * 56 * 4)]
    swift = spec_from_args(build_parser().parse_args(base + ["--emit", "swift"]))
    assert swift.use_cache_off_in_sub_configs is True and swift.eval_keeps == "loss"
    assert spec_from_args(build_parser().parse_args(base + ["--emit", "hf"])).use_cache_off_in_sub_configs is False
    assert spec_from_args(build_parser().parse_args(base)).use_cache_off_in_sub_configs is False
    assert getattr(build_parser().parse_args(["plan", *base[1:]]), "emit", None) is None  # what spec_from_args reads


def test_ms_swifts_walk_reaches_nested_language_configs_and_puts_them_back():
    """4.6's set_config_attr: every language_config / llm_config / text_config at any depth (a
    full Qwen2.5-Omni's thinker_config.text_config), never a talker_config or a vision config."""
    from transformers import PretrainedConfig

    def config(**values):
        made = PretrainedConfig()
        for key, value in values.items():
            setattr(made, key, value)
        return made

    text, vision, talker_text = config(use_cache=True), config(), config(use_cache=True)
    top = config(thinker_config=config(text_config=text, vision_config=vision), talker_config=config(text_config=talker_text))
    model = torch.nn.Module()
    model.config = top
    saved = kv_cache.switch_off_sub_configs(model)
    assert (top.use_cache, text.use_cache, talker_text.use_cache) == (False, False, True)
    assert not hasattr(vision, "use_cache")
    kv_cache.put_back(saved)
    assert text.use_cache is True and "use_cache" not in vars(top)
