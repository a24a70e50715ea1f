"""The CLI end to end, in-process and as a real subprocess."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from autotune.cli import main
from autotune.recipe.schema import load_recipe

DEMO = ["probe", "--model-config", "tiny-llama", "--device", "sim", "--gpu-memory", "12MiB", "--max-length", "64"]


def test_probe_writes_a_recipe(tmp_path, capsys):
    out = tmp_path / "recipe.yaml"
    assert main(DEMO + ["--out", str(out), "--global-batch-size", "8", "--attn", "sdpa", "--validate-steps", "5"]) == 0
    recipe = load_recipe(out)
    s = recipe.settings
    assert s.per_device_train_batch_size * s.gradient_accumulation_steps == 8
    assert recipe.search.frontier["train"] >= s.per_device_train_batch_size
    assert recipe.validation.passed and recipe.validation.method == "validation-run" and recipe.validation.steps == 5
    assert s.per_device_eval_batch_size == recipe.search.frontier["eval"] >= 1
    assert {t.outcome for t in recipe.search.trials} >= {"fit"}
    printed = capsys.readouterr()
    assert "frontier" in printed.out and "trial" in printed.err


def test_json_output_is_only_json(tmp_path, capsys):
    out = tmp_path / "r.yaml"
    assert main(DEMO + ["--out", str(out), "--format", "json", "--attn", "sdpa", "--gradient-checkpointing", "off",
                        "--no-eval", "--validate-steps", "3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == 1 and data["settings"]["per_device_train_batch_size"] >= 1
    assert [(c["attn_implementation"], c["gradient_checkpointing"]) for c in data["search"]["candidates"]] == [("sdpa", False)]
    assert data["settings"]["per_device_eval_batch_size"] is None and data["validation"]["steps"] == 3


BAD = [
    (["probe", "--model", "/nonexistent", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB"], "--model"),
    (["probe", "--model-config", "no-such-thing", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB"], "--model-config"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "0", "--device", "sim", "--gpu-memory", "1GiB"], "--max-length"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "-5", "--device", "sim", "--gpu-memory", "1GiB"], "--max-length"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "99999", "--device", "sim", "--gpu-memory", "1GiB"], "position limit"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "lots"], "--gpu-memory"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim"], "--gpu-memory"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "tpu", "--gpu-memory", "1GiB"], "--device"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB", "--max-batch-size", "0"], "--max-batch-size"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB", "--global-batch-size", "-2"], "--global-batch-size"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB", "--margin", "1.5"], "--margin"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB", "--steps", "2"], "--steps"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB", "--attn", "sdpa,fast"], "--attn"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB", "--gradient-checkpointing", "maybe"], "--gradient-checkpointing"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB", "--eval-steps", "0"], "--eval-steps"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB", "--validate-steps", "2"], "--validate-steps"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB", "--predict-with-generate"], "--max-new-tokens"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB", "--max-new-tokens", "8"], "--predict-with-generate"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB", "--plot", "x.pdf"], "--plot"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB", "--dtype", "float16"], "unscale FP16"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB", "--train-type", "lora", "--lora-dropout", "2"], "--lora-dropout"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB", "--seed", "-1"], "--seed"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB", "--no-eval", "--eval-steps", "8"], "--eval-steps: sets the eval phase, which --no-eval skips"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB", "--no-eval", "--prediction-loss-only"], "--prediction-loss-only"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB", "--no-eval", "--eval-outputs", "logits"], "--eval-outputs"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB", "--no-eval", "--predict-with-generate", "--max-new-tokens", "4"], "--predict-with-generate"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB", "--lora-r", "16"], "--lora-r: sets the LoRA adapters, and --train-type full trains none"),
    (["plan", "--model-config", "tiny-llama", "--max-length", "64", "--gpu-memory", "1GiB", "--lora-target-modules", "q_proj"], "--lora-target-modules"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB", "--tokenizer", "/tmp"], "--tokenizer"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB", "--from-plan", "/nonexistent/plan.yaml"],
     "--from-plan: no recipe at /nonexistent/plan.yaml; run `python -m autotune plan ... --out PLAN` first"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--device", "sim", "--gpu-memory", "1GiB", "--task", "eval", "--global-batch-size", "8"], "--global-batch-size: sets the training batch"),
    (["report", "/nonexistent/recipe.yaml"], "no recipe"),
]


@pytest.mark.parametrize("argv,needle", BAD)
def test_bad_input_is_one_line_exit_2_and_no_file(tmp_path, capsys, argv, needle):
    out = tmp_path / "r.yaml"
    assert main(argv + (["--out", str(out)] if argv[0] == "probe" else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autotune: error:") and needle in err[0]
    assert "Traceback" not in err[0]
    assert not out.exists()



@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA card is here")
@pytest.mark.parametrize("extra", [[], ["--isolate"], ["--strategy", "ddp"]])
def test_device_cuda_without_a_card_is_bad_input(tmp_path, capsys, extra):
    """--device cuda starts trial workers (expandable segments are probed on CUDA); without a card
    the worker's failure used to end as 'could not load the model: AttributeError' (exit 1)."""
    out = tmp_path / "r.yaml"
    argv = ["probe", "--model-config", "tiny-llama", "--device", "cuda", "--max-length", "16", "--out", str(out), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["autotune: error: --device: no CUDA device is available here; "
                   "use --device sim --gpu-memory 24GiB to probe a simulated GPU"]
    assert not out.exists() and not list(tmp_path.iterdir())


def test_model_directory_without_weights(tmp_path, capsys):
    """--model DIR with a config.json alone: from_pretrained's OSError ended as 'unexpected error'
    (exit 1) once the model loaded. A plan reads the config alone and still takes it."""
    from autotune.model.source import BUILTIN_DIR

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text((BUILTIN_DIR / "tiny-llama.json").read_text())
    out = tmp_path / "r.yaml"
    assert main(["probe", "--model", str(tmp_path / "model"), "--device", "sim", "--gpu-memory", "12MiB", "--max-length", "16",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"autotune: error: --model: {tmp_path / 'model'} has a config.json but no weights")
    assert "--model-config" in err[0] and not out.exists()
    assert main(["plan", "--model", str(tmp_path / "model"), "--max-length", "16", "--gpu-memory", "80GB", "--quiet",
                 "--gradient-checkpointing", "off"]) == 0

def test_config_that_is_not_a_causal_lm(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    out = tmp_path / "r.yaml"
    cfg.write_text(json.dumps({"model_type": "vit", "hidden_size": 32}))
    code = main(["probe", "--model-config", str(cfg), "--max-length", "16", "--device", "sim", "--gpu-memory", "1GiB", "--out", str(out), "--force"])
    assert code == 2 and "not a causal language model" in capsys.readouterr().err


def test_existing_output_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "r.yaml"
    out.write_text("mine")
    assert main(DEMO + ["--out", str(out)]) == 2
    assert out.read_text() == "mine" and "--force" in capsys.readouterr().err


def test_nothing_fits_exits_3(tmp_path, capsys):
    out = tmp_path / "r.yaml"
    argv = ["probe", "--model-config", "tiny-llama", "--device", "sim", "--gpu-memory", "2MiB", "--max-length", "64", "--out", str(out)]
    assert main(argv) == 3
    assert "does not fit" in capsys.readouterr().err and not out.exists()


def test_debug_env_shows_the_traceback(tmp_path):
    env = {**os.environ, "AUTOTUNE_DEBUG": "1"}
    proc = subprocess.run([sys.executable, "-m", "autotune", "probe", "--model-config", "nope", "--max-length", "8",
                           "--device", "sim", "--gpu-memory", "1GiB", "--out", str(tmp_path / "r.yaml")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_help_lists_subcommands_and_examples(capsys):
    """In process; --help in a fresh process (what it imports) is test_cli_speed's."""
    for argv in (["--help"], ["probe", "--help"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
    out = capsys.readouterr().out
    top, probe = out.split("usage:", 2)[1:]
    assert "probe" in top and "report" in top
    assert "examples:" in probe and "--gpu-memory" in probe and "tiny-llama" in probe



@pytest.mark.parametrize("command", ["probe", "plan", "check", "emit", "report"])
def test_help_examples_keep_their_line_breaks(capsys, command):
    """An example that runs over a line ends it with a backslash, as a shell takes it; a lone
    backslash in the Python source joined the two lines into one with a gap in the middle."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    epilog = capsys.readouterr().out.split("examples:", 1)[1]
    lines = epilog.splitlines()
    for i, line in enumerate(lines):
        assert not re.search(r"\S {3,}--", line), line
        if line.startswith("      --"):  # a continuation: the line above ends with a backslash
            assert lines[i - 1].endswith(" \\"), lines[i - 1]

def test_ctrl_c_leaves_no_recipe(tmp_path):
    out = tmp_path / "r.yaml"
    # A big budget makes many slow trials; interrupt after the first one finishes.
    proc = subprocess.Popen([sys.executable, "-m", "autotune", "probe", "--model-config", "tiny-mistral", "--device", "sim",
                             "--gpu-memory", "2GiB", "--max-length", "512", "--out", str(out)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 120
    for line in proc.stderr:
        if line.startswith("trial") or time.time() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, rest
    assert not out.exists() and not list(tmp_path.glob(".r.yaml.*"))
    # The journal of the finished trials stays, for a rerun to resume from; the last line says so
    # (it used to say "nothing was written").
    journal = tmp_path / "r.yaml.journal.jsonl"
    assert journal.is_file()
    assert rest.strip().splitlines()[-1] == (f"autotune: interrupted; no recipe was written; the finished trials are kept in "
                                             f"{journal}: rerun the same command to resume")


@pytest.mark.parametrize("delay", [0.3, 0.6, 1.0, 2.0])
def test_ctrl_c_during_start_up_is_one_line_and_exit_130(tmp_path, delay):
    """While the CLI, torch or transformers are still importing (a Ctrl-C inside torch's C++ init
    used to abort the process): no traceback, nothing written."""
    proc = subprocess.Popen([sys.executable, "-m", "autotune", "probe", "--model-config", "tiny-llama", "--device", "sim",
                             "--gpu-memory", "64MiB", "--max-length", "128", "--out", "r.yaml"],
                            cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    # 130, or ended by the SIGINT itself after the message (-2): a shell reports both as 130.
    assert proc.returncode in (130, -signal.SIGINT), err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "autotune: interrupted; nothing was written"
    assert list(tmp_path.iterdir()) == []


def test_probe_real_weights_from_a_local_directory(tmp_path, capsys):
    """--model DIR loads saved weights with the right Auto class (here a GPT-2 checkpoint)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from autotune.model.source import BUILTIN_DIR

    config = AutoConfig.from_pretrained(BUILTIN_DIR / "tiny-gpt2.json")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "model")
    out = tmp_path / "r.yaml"
    argv = ["probe", "--model", str(tmp_path / "model"), "--device", "sim", "--gpu-memory", "12MiB", "--max-length", "64",
            "--dtype", "float32", "--attn", "sdpa", "--gradient-checkpointing", "off", "--no-eval", "--validate-steps", "3",
            "--out", str(out)]  # one candidate, no eval phase: what is tested is how the weights load
    assert main(argv) == 0
    recipe = load_recipe(out)
    assert recipe.model.source == "weights" and recipe.model.architecture == "GPT2LMHeadModel"
    assert recipe.model.num_parameters == sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    assert recipe.search.frontier["train"] >= 1


@pytest.mark.parametrize("argv,flag", [
    (["plan", "--model-config", "tiny-llama", "--gpu-memory", "1GiB", "--max-length", "12x"], "--max-length"),
    (["plan", "--model-config", "tiny-llama", "--dtype", "float8"], "--dtype"),
    (["probe", "--model-config", "tiny-llama", "--max-length", "64", "--train-type", "prefix"], "--train-type"),
    (["emit", "nowhere", "r.yaml"], "target"),
])
def test_a_flag_argparse_rejects_is_one_line_with_the_way_to_help(capsys, argv, flag):
    """argparse printed its whole usage (40 lines for probe) above the error, which then sat
    at the bottom of a screen of flags."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("autotune: error: ") and flag in err and f"python -m autotune {argv[0]} --help" in err


def test_plan_refuses_an_auto_length_in_one_line_naming_probe(capsys):
    assert main(["plan", "--model-config", "tiny-llama", "--gpu-memory", "1GiB", "--max-length", "auto"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-length" in err and "autotune probe" in err
    assert main(["plan", "--model-config", "tiny-llama", "--gpu-memory", "1GiB"]) == 2  # none: from --swift-args, or given
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-length" in err and "--swift-args" in err


def test_a_closed_stdout_pipe_ends_quietly(tmp_path):
    """`plan --format json | head -3` printed "unexpected error: BrokenPipeError" once head had
    read its lines; a reader that stops reading is not an error of autotune's."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write
    try:
        proc = subprocess.run([sys.executable, "-m", "autotune", "plan", "--model-config", "tiny-llama", "--max-length", "16",
                               "--gpu-memory", "64MiB", "--attn", "sdpa", "--gradient-checkpointing", "off", "--quiet", "--format", "json"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert proc.returncode == 141 and "Error" not in proc.stderr, proc.stderr


def test_a_broken_pipe_that_is_not_stdout_is_still_an_error(capsys, monkeypatch):
    """Only stdout's reader leaving is quiet: a worker's pipe breaking is reported."""
    from autotune.cli import plan as plan_cmd

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(plan_cmd, "run", broken)
    assert main(["plan", "--model-config", "tiny-llama", "--max-length", "16", "--gpu-memory", "64MiB"]) == 1
    assert "unexpected error: BrokenPipeError" in capsys.readouterr().err
