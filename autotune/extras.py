"""Install hints for optional dependencies. The distribution is `autotune-oom` (the PyPI name
`autotune` belongs to an unrelated 2018 package); it is installed from a checkout, so each hint
names the plain pip package first and the checkout's extra second: both work as written."""

from __future__ import annotations

DISTRIBUTION = "autotune-oom"

# extra -> what pip installs for it (pyproject.toml [project.optional-dependencies])
EXTRAS = {
    "plot": "'matplotlib>=3.7'",
    "vision": "'pillow>=10'",
    "flash": "'flash-attn>=2.6' --no-build-isolation",
    "liger": "'liger-kernel>=0.5'",
    "rlhf": "'trl>=1.16,<2'",
}


def install_hint(extra: str) -> str:
    """`pip install 'matplotlib>=3.7'` (or, in an autotune checkout, `pip install -e '.[plot]'`)."""
    return f"pip install {EXTRAS[extra]} (or, in an autotune checkout: pip install -e '.[{extra}]')"
