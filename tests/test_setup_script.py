"""scripts/install_cpu_torch.sh asks PyTorch's CPU index first, fast, and falls back cleanly.
pip is replaced by a recording stub (the script's PIP variable); the real install is the
recorded check in the README (Quick start)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install_cpu_torch.sh"


def _run(tmp_path, index_works: bool):
    log = tmp_path / "calls"
    stub = tmp_path / "pip"
    stub.write_text(f"#!/usr/bin/env bash\necho \"$*\" >> {log}\n"
                    + ("" if index_works else 'for a in "$@"; do [ "$a" = --index-url ] && exit 1; done\n') + "exit 0\n")
    stub.chmod(0o755)
    env = {**os.environ, "PIP": str(stub), "TORCH_CPU_INDEX": "https://unreachable.invalid/whl/cpu"}
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    return done, log.read_text().splitlines()


def test_cpu_index_first_with_a_short_timeout_and_no_retries(tmp_path):
    done, calls = _run(tmp_path, index_works=True)
    assert done.returncode == 0 and done.stderr == ""
    assert calls == ["install -q --index-url https://unreachable.invalid/whl/cpu --timeout 10 --retries 0 torch==2.13.0"]


def test_unreachable_index_falls_back_to_plain_pip_with_a_message(tmp_path):
    done, calls = _run(tmp_path, index_works=False)
    assert done.returncode == 0
    assert "unreachable" in done.stderr and "installing torch==2.13.0 from the default index" in done.stderr
    assert calls[1:] == ["install -q torch==2.13.0"]
