"""`probe --from-plan`: a plan made for another model, ranks or sharding is refused before the
model loads (one line, exit 2); a plan whose evaluation kept other outputs starts no eval search;
README's plan -> probe steps, followed as written, start both searches from the plan."""

import dataclasses
import json
from pathlib import Path

import pytest

import autotune
from autotune.cli import main
from autotune.errors import UsageError
from autotune.model.source import resolve
from autotune.plan.breakdown import Allowance
from autotune.plan.hints import hints_from_plan
from autotune.plan.match import check_plan
from autotune.plan.planned_recipe import plan_recipe
from autotune.plan.planner import PlanOptions, make_plan
from autotune.progress import ProgressSink
from autotune.recipe.schema import load_recipe, save_recipe
from autotune.spec import ProbeSpec

MiB = 2**20
CARD = ["--device", "sim", "--gpu-memory", "64MiB", "--max-length", "64"]


class Stages(ProgressSink):
    def __init__(self):
        self.lines = []

    def stage(self, text: str) -> None:
        self.lines.append(text)


@pytest.fixture(scope="module")
def llama_plan(tmp_path_factory):
    """A one-device tiny-llama plan for a 64 MiB card, its evaluation keeping the loss."""
    spec = ProbeSpec(max_length=64, model_config="tiny-llama", prediction_loss_only=True)
    recipe = plan_recipe(make_plan(spec, PlanOptions([64 * MiB], checkpointing=[False], allowance=Allowance(0, 0, 0.0))))
    path = tmp_path_factory.mktemp("plan") / "plan.yaml"
    save_recipe(recipe, path)
    return recipe, path


def _refused(argv, capsys) -> str:
    code = main(["probe", *argv, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("autotune: error: --from-plan:")
    return err


def test_a_plan_for_another_model_is_refused(llama_plan, tmp_path, capsys):
    _, path = llama_plan
    err = _refused(["--model-config", "tiny-qwen2", *CARD, "--from-plan", str(path), "--out", str(tmp_path / "r.yaml")], capsys)
    assert "LlamaForCausalLM (tiny-llama)" in err and "Qwen2ForCausalLM (tiny-qwen2)" in err and "plan this one" in err
    assert not (tmp_path / "r.yaml").exists()


def test_the_same_architecture_at_other_sizes_is_another_model(llama_plan, tmp_path, capsys):
    _, path = llama_plan
    config = json.loads((Path(autotune.__file__).parent / "configs" / "tiny-llama.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    err = _refused(["--model-config", str(tmp_path / "config.json"), *CARD, "--from-plan", str(path),
                    "--out", str(tmp_path / "r.yaml")], capsys)
    assert "num_hidden_layers 2 vs 3" in err


def test_a_plan_without_recorded_sizes_is_checked_by_its_hidden_size(llama_plan, tmp_path):
    recipe, _ = llama_plan
    older = dataclasses.replace(recipe, plan={k: v for k, v in recipe.plan.items() if k != "model_sizes"})
    spec = ProbeSpec(max_length=64, model_config="tiny-llama")
    check_plan(older, spec, resolve(None, "tiny-llama"))
    config = json.loads((Path(autotune.__file__).parent / "configs" / "tiny-llama.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_size": 128}))
    with pytest.raises(UsageError, match="hidden_size 64 vs 128"):
        check_plan(older, spec.replace(model_config=str(tmp_path / "config.json")), resolve(None, str(tmp_path / "config.json")))


def test_a_plan_for_other_ranks_or_sharding_is_refused(llama_plan, tmp_path, capsys):
    recipe, _ = llama_plan
    zero3 = dataclasses.replace(recipe, plan={**recipe.plan, "world_size": 4, "strategy": "zero3"})
    save_recipe(zero3, tmp_path / "zero3.yaml")
    err = _refused(["--model-config", "tiny-llama", *CARD, "--from-plan", str(tmp_path / "zero3.yaml"),
                    "--out", str(tmp_path / "r.yaml")], capsys)
    assert "4 ranks under zero3, this probe runs one device" in err and "--nproc-per-node 4 --strategy zero3" in err
    spec, source = ProbeSpec(max_length=64, model_config="tiny-llama"), resolve(None, "tiny-llama")
    check_plan(zero3, spec.replace(world_size=4, strategies=("zero3",)), source)
    check_plan(recipe, spec.replace(strategies=("ddp",)), source)  # DDP holds what one device holds
    for world, strategies in ((4, ("zero2",)), (4, ("zero2", "zero3")), (2, ("zero3",))):
        with pytest.raises(UsageError, match="per rank for 4 ranks under zero3"):
            check_plan(zero3, spec.replace(world_size=world, strategies=strategies), source)
    with pytest.raises(UsageError, match="per rank for one device, this probe runs 2 ranks"):
        check_plan(recipe, spec.replace(world_size=2), source)


def test_a_plan_whose_evaluation_kept_other_outputs_gives_no_eval_frontier(llama_plan):
    recipe, _ = llama_plan
    budget = int(64 * MiB * 0.9)
    same = ProbeSpec(max_length=64, model_config="tiny-llama", prediction_loss_only=True, attn_candidates=("sdpa",),
                     gradient_checkpointing_candidates=(False,))
    assert set(hints_from_plan(recipe, same, budget)[("sdpa", False)]) == {"train", "eval"}
    stages = Stages()
    hints = hints_from_plan(recipe, same.replace(prediction_loss_only=False, attn_candidates=("sdpa", "eager")), budget, stages)
    assert set(hints) == {("sdpa", False)} and set(hints[("sdpa", False)]) == {"train"}
    said = " ".join(stages.lines)
    assert "the plan's evaluation keeps loss, this probe's logits over 4 steps" in said
    assert "no train frontier for eager/gc-off" in said


def test_readmes_plan_then_probe_starts_both_searches_from_the_plan(tmp_path):
    """README, Planning without a GPU: plan --out, then probe --from-plan, each with its defaults
    (on the sim device, which has no CUDA context or workspaces): a fit at k and a non-fit at
    k + 1 for the train and for the eval frontier."""
    plan, out = tmp_path / "plan.yaml", tmp_path / "r.yaml"
    model = ["--model-config", "tiny-llama", "--max-length", "64", "--attn", "sdpa", "--gradient-checkpointing", "off"]
    assert main(["plan", *model, "--gpu-memory", "64MiB", "--cuda-context", "0", "--workspaces", "0", "--fragmentation", "0",
                 "--out", str(plan), "--quiet"]) == 0
    assert main(["probe", *model, "--device", "sim", "--gpu-memory", "64MiB", "--from-plan", str(plan), "--out", str(out),
                 "--validate-steps", "3", "--quiet"]) == 0
    recipe = load_recipe(out)
    frontier = [t for t in recipe.search.trials if t.purpose == "frontier"]
    assert [t.phase for t in frontier] == ["train", "train", "eval", "eval"]
    assert recipe.search.frontier["eval"] == load_recipe(plan).search.frontier["eval"]


def test_a_lora_plan_for_other_targets_is_refused():
    """The plan's adapters decide its frontier: other target modules (or a regex) are another run."""
    spec = ProbeSpec(max_length=64, model_config="tiny-llama", train_type="lora", lora_target_modules=("q_proj", "v_proj"))
    recipe = plan_recipe(make_plan(spec, PlanOptions([64 * MiB], checkpointing=[False], allowance=Allowance(0, 0, 0.0))))
    source = resolve(None, "tiny-llama")
    check_plan(recipe, spec, source)  # the same targets: taken
    with pytest.raises(UsageError, match=r"^--from-plan: the plan was made for --lora-target-modules q_proj,v_proj, this probe uses all-linear"):
        check_plan(recipe, dataclasses.replace(spec, lora_target_modules=("all-linear",)), source)
    with pytest.raises(UsageError, match=r"--lora-target-modules q_proj,v_proj, this probe uses all-linear"):
        check_plan(recipe, dataclasses.replace(spec, lora_target_modules=("all-linear",), lora_target_regex=r".*\.q_proj"), source)
    regex = ProbeSpec(max_length=64, model_config="tiny-llama", train_type="lora", lora_target_regex=r".*\.q_proj")
    planned = plan_recipe(make_plan(regex, PlanOptions([64 * MiB], checkpointing=[False], allowance=Allowance(0, 0, 0.0))))
    with pytest.raises(UsageError, match=r"--lora-target-regex .*q_proj, this probe uses \(none\)"):
        check_plan(planned, dataclasses.replace(regex, lora_target_regex=None), source)


def test_a_vision_language_plan_holds_for_its_media_and_freezing_only():
    """The plan's peaks are for its image tokens per sample and its frozen tower: a probe with a
    larger --max-pixels, more images, or the vision tower trained is another run."""
    spec = ProbeSpec(max_length=512, model_config="tiny-qwen2-vl", max_pixels=50000, prediction_loss_only=True)
    recipe = plan_recipe(make_plan(spec, PlanOptions([1024 * MiB], checkpointing=[True], allowance=Allowance(0, 0, 0.0))))
    source = resolve(None, "tiny-qwen2-vl")
    check_plan(recipe, spec, source)  # the same run
    for other, named in ((spec.replace(max_pixels=100000), "image tokens"), (spec.replace(images_per_sample=2), "images per sample"),
                         (spec.replace(freeze_vit=False), "--freeze-vit true")):
        with pytest.raises(UsageError, match=named) as refused:
            check_plan(recipe, other, source)
        assert refused.value.flag == "--from-plan"
