"""`python -m autotune --help` and each subcommand's --help build their parsers without
importing torch or transformers (3.5 s of imports before; about 0.3 s now)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "matplotlib")
HELPS = [["--help"], ["probe", "--help"], ["plan", "--help"], ["check", "--help"], ["emit", "--help"], ["report", "--help"]]


def test_help_imports_no_heavy_library():
    """One fresh process for all the help screens (a process start costs more than the parsers):
    after each, the heavy libraries imported so far, which must stay none."""
    code = ("import sys, contextlib, io\nfrom autotune.cli import main\n"
            f"for argv in {HELPS!r}:\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try: main(argv)\n        except SystemExit: pass\n"
            f"    print(argv, sorted(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [f"{argv} []" for argv in HELPS]


def test_the_cli_copy_of_the_planned_strategies_agrees():
    from autotune.cli.plan import STRATEGIES as plan_cli
    from autotune.plan.breakdown import STRATEGIES as planned
    from autotune.recipe.schema import STRATEGIES

    assert plan_cli == planned and set(planned) <= set(STRATEGIES)