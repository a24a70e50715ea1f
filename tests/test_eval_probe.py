"""Evaluation-only probes (`--task eval`, issue #14), with generation, on a tiny vision-language
model. The oracle is the user's own `Seq2SeqTrainer.evaluate()` with `predict_with_generate`,
built by the test from the recipe (`recipe.apply`), counted by the sim device: at the recipe's
eval batch it stays inside the budget, one batch more passes it. Nothing is trained, so no
optimizer state is resident."""

import dataclasses

import pytest
import torch
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments

from autotune.check import check
from autotune.cli import main
from autotune.devices import SimDevice
from autotune.model.source import resolve
from autotune.recipe.schema import load_recipe
from autotune.spec import ProbeSpec
from autotune.trials.trainer_run import WorstCase
from autotune.model.workload import load_workload

MiB = 2**20
NEW_TOKENS = 8
# 8-token images at the largest grid (the processor's thin strip would be 40, past 32 tokens)
MODEL = ["--model-config", "tiny-qwen2-vl", "--max-length", "32", "--max-pixels", "6272", "--image-resize", "qwen-vl-utils"]


def evaluated(recipe, spec, capacity, eval_batch, tmp):
    """The user's evaluation at the recipe's settings (eval batch overridable): the peak."""
    device = SimDevice(capacity)
    workload = load_workload(resolve(spec.model, spec.model_config), spec, device)
    workload.model.set_attn_implementation(recipe.settings.attn_implementation)
    user = Seq2SeqTrainingArguments(output_dir=str(tmp), report_to="none", disable_tqdm=True, use_cpu=True,
                                    remove_unused_columns=False, dataloader_pin_memory=False, predict_with_generate=True)
    args = dataclasses.replace(recipe, settings=dataclasses.replace(recipe.settings, per_device_eval_batch_size=eval_batch)).apply(user)
    assert args.predict_with_generate and args.bf16

    def collate(features):
        with device.host():
            return workload.make_batch(len(features), device=torch.device("cpu"))

    trainer = Seq2SeqTrainer(model=workload.model, args=args, data_collator=collate, compute_metrics=lambda p: {},
                             eval_dataset=WorstCase(eval_batch * args.eval_accumulation_steps))
    device.reset_peak()
    with device.tracking(), device.transfers():
        trainer.evaluate(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)  # every sample generates them all
    assert trainer.optimizer is None  # nothing trained
    return device.peak_bytes()


CAPACITY = 3 * MiB


@pytest.fixture(scope="module")
def eval_recipe(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "r.yaml"
    argv = ["probe", *MODEL, "--device", "sim", "--gpu-memory", str(CAPACITY), "--task", "eval", "--predict-with-generate",
            "--max-new-tokens", str(NEW_TOKENS), "--attn", "sdpa", "--eval-steps", "2", "--validate-steps", "3",
            "--quiet", "--out", str(out)]
    assert main(argv) == 0
    return out


def test_eval_only_probe_with_generation_matches_the_users_evaluate(eval_recipe, tmp_path):
    capacity = CAPACITY
    recipe = load_recipe(eval_recipe)
    s = recipe.settings
    assert s.task == "eval" and s.eval_outputs == "generate" and s.max_new_tokens == NEW_TOKENS
    assert s.per_device_eval_batch_size == recipe.search.frontier["eval"] >= 1
    assert all(t.phase == "eval" for t in recipe.search.trials)
    budget = recipe.search.budget_bytes
    spec = ProbeSpec(model_config="tiny-qwen2-vl", max_length=32, max_pixels=6272, device="sim", gpu_memory=capacity, task="eval",
                     image_resize="qwen-vl-utils")  # 8 tokens (the processor's thin strip: 40, past 32)
    at = evaluated(recipe, spec, capacity, s.per_device_eval_batch_size, tmp_path / "a")
    assert at <= budget
    # the frontier is exact: one more passes the budget (or the device: the OOM is the oracle's answer too)
    try:
        above = evaluated(recipe, spec, capacity, s.per_device_eval_batch_size + 1, tmp_path / "b")
    except torch.OutOfMemoryError:
        above = capacity + 1
    assert above > budget
    # `check` runs the recipe as it is: evaluation alone
    result = check(recipe)
    assert result.status == "fits" and [t.phase for t in result.trials] == ["eval"]


def test_sequence_guard_names_the_generated_tokens(capsys, tmp_path):
    argv = ["probe", "--model-config", "tiny-llama", "--max-length", "1000", "--device", "sim", "--gpu-memory", "64MiB",
            "--task", "eval", "--predict-with-generate", "--max-new-tokens", "64", "--out", str(tmp_path / "r.yaml")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "1000 + --max-new-tokens 64 = 1064 tokens" in err[0] and "1024" in err[0] and "--max-length 960 or less" in err[0]


def test_eval_task_refuses_launch_files(capsys, tmp_path):
    argv = ["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "64MiB",
            "--task", "eval", "--emit", "swift", "--out", str(tmp_path / "r.yaml")]
    assert main(argv) == 2 and "--emit" in capsys.readouterr().err


def test_an_eval_recipe_is_not_emitted_and_a_full_omni_config_points_at_its_thinker(eval_recipe, tmp_path, capsys):
    import json

    from autotune.model.source import BUILTIN_DIR

    assert main(["emit", "swift", str(eval_recipe), "-o", str(tmp_path / "s.yaml")]) == 2
    assert "evaluation only" in capsys.readouterr().err and not (tmp_path / "s.yaml").exists()
    thinker = json.loads((BUILTIN_DIR / "tiny-qwen2.5-omni-thinker.json").read_text())
    full = tmp_path / "omni.json"
    full.write_text(json.dumps({"model_type": "qwen2_5_omni", "architectures": ["Qwen2_5OmniForConditionalGeneration"],
                                "thinker_config": thinker}))
    assert main(["probe", "--model-config", str(full), "--max-length", "64", "--device", "sim", "--gpu-memory", "64MiB",
                 "--out", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "probes the thinker" in err[0] and "qwen2_5_omni_thinker" in err[0]


def test_eval_only_probe_keeping_logits_holds_every_accumulated_step(tmp_path):
    """Logits kept for --eval-steps 4 (eval_accumulation_steps): the frontier trials must run all 4
    steps before the flush; with the trial's default 3 they missed one step of logits and the
    validation ran out of memory. The oracle: the user's Trainer.evaluate() with compute_metrics."""
    capacity, out = 64 * MiB, tmp_path / "r.yaml"
    argv = ["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", str(capacity),
            "--task", "eval", "--attn", "sdpa", "--validate-steps", "8", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    recipe = load_recipe(out)
    assert recipe.settings.eval_accumulation_steps == 4 and recipe.settings.prediction_loss_only is False
    spec = ProbeSpec(model_config="tiny-llama", max_length=64, device="sim", gpu_memory=capacity, task="eval")

    def peak(batch):
        device = SimDevice(capacity)
        workload = load_workload(resolve(None, "tiny-llama"), spec, device)
        workload.model.set_attn_implementation("sdpa")
        user = TrainingArguments(output_dir=str(tmp_path / f"b{batch}"), report_to="none", disable_tqdm=True, use_cpu=True,
                                 remove_unused_columns=False, dataloader_pin_memory=False)
        args = dataclasses.replace(recipe, settings=dataclasses.replace(recipe.settings, per_device_eval_batch_size=batch)).apply(user)

        def collate(features):
            with device.host():
                return workload.make_batch(len(features), device=torch.device("cpu"))

        trainer = Trainer(model=workload.model, args=args, data_collator=collate, compute_metrics=lambda p: {},
                          eval_dataset=WorstCase(batch * 8))
        device.reset_peak()
        try:
            with device.tracking(), device.transfers():
                trainer.evaluate()
        except torch.OutOfMemoryError:
            return capacity + 1
        return device.peak_bytes()

    batch, budget = recipe.settings.per_device_eval_batch_size, recipe.search.budget_bytes
    assert peak(batch) <= budget < peak(batch + 1)
