"""Commands print what matters: no third-party noise on stderr, and optional libraries
(bitsandbytes) imported only where they are used."""

from __future__ import annotations

import json
import subprocess
import sys


def _run(code: str):
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done


def test_quiet_plan_with_lora_and_checkpointing_prints_nothing_on_stderr(tmp_path):
    """peft imports bitsandbytes (its kernels-community line), checkpointing turns use_cache off
    (transformers' line), peft reads a deprecated property (a FutureWarning): none of it shows."""
    code = ("from autotune.cli import main\n"
            "raise SystemExit(main(['plan', '--model-config', 'tiny-llama', '--max-length', '32', '--gpu-memory', '64MiB',"
            " '--train-type', 'lora', '--gradient-checkpointing', 'on', '--attn', 'sdpa', '--quiet']))")
    done = _run(code)
    assert done.stderr == ""


def test_quiet_full_fine_tuning_probe_prints_nothing_on_stderr(tmp_path):
    """GPT-2's config has `loss_type: null` (transformers' 'unrecognized' line); transformers'
    trainer utilities import peft and with it bitsandbytes (its kernels-community line)."""
    code = ("from autotune.cli import main\n"
            f"raise SystemExit(main(['probe', '--model-config', 'tiny-gpt2', '--device', 'sim', '--gpu-memory', '8MiB', '--max-length', '16',"
            f" '--max-batch-size', '2', '--attn', 'sdpa', '--gradient-checkpointing', 'off', '--no-eval', '--validate-steps', '3',"
            f" '--quiet', '--format', 'json', '--out', {str(tmp_path / 'r.yaml')!r}]))")
    done = _run(code)
    assert done.stderr == "" and json.loads(done.stdout)["schema"] == 1


def test_json_stdout_holds_the_json_only_when_a_library_prints_to_stdout(tmp_path):
    """DeepSpeed's logger writes to stdout (its accelerator line, when transformers imports it):
    with --format json that line goes to stderr, so stdout parses; `emit -o -` likewise."""
    recipe = tmp_path / "r.yaml"
    code = ("import logging, sys\n"
            "from autotune.cli import main\n"
            "import autotune.plan.planner as plan\n"
            "real = plan.make_plan\n"
            "def noisy(*a, **k):\n"
            "    log = logging.getLogger('a-library'); log.propagate = False\n"
            "    log.addHandler(logging.StreamHandler(sys.stdout)); log.warning('a library line on stdout')\n"
            "    print('a print too')\n"
            "    return real(*a, **k)\n"
            "plan.make_plan = noisy\n"
            f"code = main(['plan', '--model-config', 'tiny-llama', '--max-length', '32', '--gpu-memory', '64MiB', '--cuda-context', '0', '--workspaces', '0', '--attn', 'sdpa',"
            f" '--gradient-checkpointing', 'off', '--quiet', '--format', 'json', '--out', {str(recipe)!r}])\n"
            f"code = code or main(['emit', 'hf', {str(recipe)!r}, '-o', '-', '--allow-unvalidated'])\n"
            "raise SystemExit(code)")
    done = _run(code)
    text, emitted = done.stdout.split("\n}\n", 1)
    assert json.loads(text + "}")["max_length"] == 32 and "a library line" not in done.stdout
    assert done.stderr.count("a library line on stdout") == 1 and "a print too" in done.stderr
    assert json.loads(emitted)["output_dir"] and "a print" not in emitted  # the TrainingArguments file alone: one JSON document
    assert "also writes OUT.model.json beside its file" in done.stderr


def test_other_warnings_still_show():
    import logging

    from autotune.cli.noise import silence_known_noise

    silence_known_noise()
    logger = logging.getLogger("transformers.modeling_utils")
    kept = logging.LogRecord(logger.name, logging.WARNING, __file__, 1, "`loss_type=focal` was set in the config but it is unrecognized", None, None)
    dropped = logging.LogRecord(logger.name, logging.WARNING, __file__, 1, "`loss_type=None` was set in the config but it is unrecognized", None, None)
    assert logger.filter(kept) and not logger.filter(dropped)
