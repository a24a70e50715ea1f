"""`autotune report`: the candidate table and trial list of a recipe, and optionally its plot."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ..extras import install_hint
from ..recipe.schema import check_writable, load_recipe, write_atomic
from .output import print_json, stdout_console, summary

EXAMPLES = """\
examples:
  python -m autotune report autotune-recipe.yaml
  python -m autotune report autotune-recipe.yaml --plot search.png
"""


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="show a recipe's candidates and trials; plot them",
                       description="Print the candidate table (attention x checkpointing: frontier, throughput, peak) "
                                   "and every trial of a recipe written by `autotune probe`.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", metavar="RECIPE", help="a recipe YAML written by autotune probe")
    p.add_argument("--plot", metavar="FILE.png", help="draw peak memory and throughput against batch size (needs matplotlib)")
    p.add_argument("--force", action="store_true", help="overwrite --plot if it exists")
    p.add_argument("--format", choices=("text", "json"), default="text", help="json: the recipe as JSON on stdout")
    p.set_defaults(run=run)


def check_plot(path: str, force: bool) -> None:
    """Before any work: the plot can be drawn and written."""
    if not path.lower().endswith(".png"):
        raise UsageError("--plot", f"{path} is not a .png file name", "for example --plot search.png")
    check_writable(path, force, flag="--plot")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("--plot", "matplotlib is not installed", install_hint("plot")) from None


def write_plot(recipe, path: str) -> None:
    from .plot import render_png

    write_atomic(path, render_png(recipe))


def run(args) -> int:
    if args.plot:
        check_plot(args.plot, args.force)
    recipe = load_recipe(args.recipe)
    if args.format == "json":
        print_json(recipe.to_dict())
    else:
        summary(recipe, stdout_console())
    if args.plot:
        write_plot(recipe, args.plot)
    return 0
