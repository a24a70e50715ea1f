"""Issue #17's mechanical move: git-mv modules into stage packages and rewrite every import
(absolute names anywhere in .py/.sh/.toml files; relative imports inside autotune/). Idempotent
per file: a module already moved is skipped. Run from a checkout's root."""
import re, subprocess, sys
from pathlib import Path

MOVES = {  # old module -> new module
    "autotune.model_source": "autotune.model.source",
    "autotune.workload": "autotune.model.workload",
    "autotune.training_setup": "autotune.model.training_setup",
    "autotune.freezing": "autotune.model.freezing",
    "autotune.quantize": "autotune.model.quantize",
    "autotune.multimodal": "autotune.model.multimodal",
    "autotune.dataset": "autotune.model.dataset",
    "autotune.families": "autotune.model.families",
    "autotune.trial": "autotune.trials.trial",
    "autotune.trainer_run": "autotune.trials.trainer_run",
    "autotune.step_model": "autotune.trials.step_model",
    "autotune.search": "autotune.search.frontier",
    "autotune.space": "autotune.search.space",
    "autotune.validate": "autotune.search.validate",
    "autotune.global_batch": "autotune.search.global_batch",
    "autotune.cluster.dimensions": "autotune.search.dimensions",
    "autotune.plan": "autotune.plan.planner",
    "autotune.plan_measure": "autotune.plan.measure",
    "autotune.plan_breakdown": "autotune.plan.breakdown",
    "autotune.recipe": "autotune.recipe.schema",
    "autotune.training_args": "autotune.recipe.training_args",
    "autotune.apply": "autotune.recipe.apply",
    "autotune.noise": "autotune.cli.noise",
    "autotune.plot": "autotune.cli.plot",
}
import os
for pair in filter(None, os.environ.get("EXTRA_MOVES", "").split(",")):  # modules a branch added
    old, new = pair.split("=")
    MOVES[old] = new
PACKAGES = {"autotune.families"}  # moved as a whole folder
NEW_PACKAGES = ["autotune/model", "autotune/trials", "autotune/search", "autotune/plan", "autotune/recipe"]


def git(*args):
    subprocess.run(["git", *args], check=True)


def path_of(mod, package=False):
    p = Path(*mod.split("."))
    return p if package else p.with_suffix(".py")


def new_name(absolute):
    """The new dotted name of an old absolute module name (or attribute path below it)."""
    for old in sorted(MOVES, key=len, reverse=True):
        if absolute == old or absolute.startswith(old + "."):
            return MOVES[old] + absolute[len(old):]
    return absolute


def old_location(new_file: Path):
    """Where a file lived before the move (to resolve its relative imports)."""
    mod = ".".join(new_file.with_suffix("").parts)
    init = new_file.name == "__init__.py"
    if init:
        mod = mod[: -len(".__init__")]
    for old, new in MOVES.items():
        if mod == new or mod.startswith(new + "."):
            if old in PACKAGES or mod == new:
                return old + mod[len(new):], init
    return mod, init


def absolute_of(level, module, base, init):
    parts = base.split(".")
    pkg = parts if init else parts[:-1]
    pkg = pkg[: len(pkg) - (level - 1)]
    return ".".join(pkg + ([module] if module else []))


def relative(target, new_file: Path):
    mod = ".".join(new_file.with_suffix("").parts)
    pkg = mod.split(".")[:-1] if new_file.name != "__init__.py" else mod.split(".")[:-1]
    if new_file.name == "__init__.py":
        pkg = mod.split(".")[:-1]  # mod ends in __init__
    t = target.split(".")
    common = 0
    while common < len(pkg) and common < len(t) and pkg[common] == t[common]:
        common += 1
    level = len(pkg) - common + 1
    return "." * level + ".".join(t[common:])


MODULES_BEFORE = set()


def rewrite_relative(text, new_file: Path, old_mod, init):
    def fix(m):
        indent, dots, module, names = m.group(1), m.group(2), m.group(3), m.group(4)
        target = absolute_of(len(dots), module, old_mod, init)
        simple = [n.strip() for n in names.split(",")]
        # `from . import x` where x is a module that moved: import it from its new home
        if not module and len(simple) == 1 and " as " not in simple[0] and f"{target}.{simple[0]}" in MODULES_BEFORE:
            full = new_name(f"{target}.{simple[0]}")
            parent, leaf = full.rsplit(".", 1)
            alias = "" if leaf == simple[0] else f" as {simple[0]}"
            return f"{indent}from {relative(parent, new_file)} import {leaf}{alias}"
        return f"{indent}from {relative(new_name(target), new_file)} import {names}"
    return re.sub(r"^([ \t]*)from (\.+)([\w.]*) import (.*)$", fix, text, flags=re.M)


ABS = re.compile(r"(?<![\w.])autotune(?:\.\w+)+")


def rewrite_absolute(text):
    return ABS.sub(lambda m: new_name(m.group(0)) if m.group(0) in MODULES_BEFORE or any(
        m.group(0).startswith(o + ".") for o in MODULES_BEFORE) else m.group(0), text)


def main():
    for f in Path("autotune").rglob("*.py"):
        parts = list(f.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        MODULES_BEFORE.add(".".join(parts))
    old_of = {}  # new file path -> (old module, init)
    for f in Path("autotune").rglob("*.py"):
        old_of[f] = None
    for pkg in NEW_PACKAGES:
        Path(pkg).mkdir(exist_ok=True)
    for old, new in MOVES.items():
        src, dst = path_of(old, old in PACKAGES), path_of(new, old in PACKAGES)
        if not src.exists():
            continue
        if old == "autotune.recipe" or old == "autotune.search" or old == "autotune.plan":
            pass  # a module that becomes a package of the same name: move before creating __init__
        git("mv", str(src), str(dst))
    for pkg in NEW_PACKAGES:
        init = Path(pkg) / "__init__.py"
        if not init.exists():
            init.write_text(DOCS[pkg])
            git("add", str(init))
    for f in sorted(Path("autotune").rglob("*.py")):
        text = f.read_text()
        old_mod, init = old_location(f)
        new = rewrite_relative(text, f, old_mod, init)
        new = rewrite_absolute(new)
        if new != text:
            f.write_text(new)
    for f in [*Path("tests").rglob("*.py"), *Path("scripts").rglob("*.py"), *Path("scripts").rglob("*.sh"), Path("pyproject.toml")]:
        if f.exists():
            text = f.read_text()
            new = rewrite_absolute(text)
            if new != text:
                f.write_text(new)
    src = Path("autotune/model/source.py")
    if src.exists():
        t = src.read_text()
        src.write_text(t.replace('BUILTIN_DIR = Path(__file__).parent / "configs"', 'BUILTIN_DIR = Path(__file__).parent.parent / "configs"'))


DOCS = {
    "autotune/model": '"""The model a probe trains: where its config comes from, building it on a device (LoRA, QLoRA,\nfreezing), vision-language families, worst-case inputs, and `--dataset` measurement."""\n',
    "autotune/trials": '"""One configuration, run: the real `Trainer` under the device\'s counter (`trial.py`,\n`trainer_run.py`), and the step model for where the Trainer cannot drive (`step_model.py`)."""\n',
    "autotune/search": '"""What to run next: the frontier search (pure), the candidates\' space, strategy and allocator\ndimensions, validation of the winner, and the global-batch split."""\n',
    "autotune/plan": '"""`autotune plan`: the same step under fake tensors, split into rows, extended to a card."""\n',
    "autotune/recipe": '"""The recipe: data (dataclasses and their YAML form, `schema.py`), the `TrainingArguments`\nvalues of its settings (`training_args.py`) and `recipe.apply` (`apply.py`). Imports no emitter."""\n',
}

if __name__ == "__main__":
    main()
