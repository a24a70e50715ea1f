"""The distribution has a name of its own, and every install hint autotune prints works as written."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from autotune.extras import DISTRIBUTION, EXTRAS, install_hint

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_distribution_name_is_not_the_unrelated_pypi_autotune():
    assert PYPROJECT["project"]["name"] == DISTRIBUTION == "autotune-oom"


def test_install_hints_name_real_extras_and_their_packages():
    optional = PYPROJECT["project"]["optional-dependencies"]
    for extra, packages in EXTRAS.items():
        hint = install_hint(extra)
        assert f"pip install -e '.[{extra}]'" in hint
        requirement = packages.split("'")[1]  # e.g. matplotlib>=3.7, exactly as the extra lists it
        assert requirement in optional[extra], (extra, requirement)


def test_no_hint_anywhere_installs_the_pypi_autotune():
    """`pip install 'autotune[...]'` or `pip install autotune` installs a 2018 hyperparameter tool."""
    bad = re.compile(r"pip install\s+['\"]?autotune(\[|['\"\s]|$)")
    files = [*ROOT.glob("autotune/**/*.py"), *ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), *ROOT.glob("scripts/*"),
             ROOT / "Dockerfile"]
    offenders = [f"{f.relative_to(ROOT)}:{i}" for f in files if f.is_file()
                 for i, line in enumerate(f.read_text().splitlines(), 1) if bad.search(line)]
    assert offenders == []
