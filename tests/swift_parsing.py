"""Checking ms-swift argument files: a YAML value against a field's type text (the checked-in
field lists), and a file through ms-swift's own loader and parser where `import swift` works.
Shared by the `swift sft` and `swift rlhf` tests."""

import dataclasses


def matches(type_text: str, value) -> bool:
    """Does a YAML value fit a field's type text (as written by scripts/extract_swift_fields.py)?"""
    t = type_text.strip()
    if t.startswith("Optional["):
        return value is None or matches(t[len("Optional["):-1], value)
    if t.startswith("Union["):
        return any(matches(part, value) for part in _split(t[len("Union["):-1]))
    if t.startswith("Literal["):
        return value in [eval(x) for x in _split(t[len("Literal["):-1])]  # noqa: S307 - our own repr text
    if t.startswith("List["):
        return isinstance(value, list) and all(matches(t[5:-1], v) for v in value)
    simple = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool), "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str), "dict": lambda v: isinstance(v, (dict, str)),
              "Dict": lambda v: isinstance(v, (dict, str)), "OptimizerNames": lambda v: isinstance(v, str)}
    if t in simple:
        return simple[t](value)
    raise AssertionError(f"type text {t!r} not understood by the test")


def _split(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return parts + [cur.strip()] if cur.strip() else parts


SWIFT_CLASSES = {("sft", "4"): ("swift.arguments", "SftArguments"), ("sft", "3"): ("swift.llm", "TrainArguments"),
                 ("rlhf", "4"): ("swift.arguments", "RLHFArguments"), ("rlhf", "3"): ("swift.llm", "RLHFArguments")}


def file_argv(path, major: str) -> list[str]:
    """The argv ms-swift makes of an argument file: `swift CMD FILE` (4.x) replaces the file with
    its flags (parse_yaml_args); `swift CMD --config FILE` (3.x) appends them (prepare_config_args)."""
    if major == "3":
        from swift.cli.main import prepare_config_args
        argv = ["--config", str(path)]
        prepare_config_args(argv)
    else:
        from swift.cli.main import parse_yaml_args
        argv = [str(path)]
        parse_yaml_args(argv)
    return argv


def parse_argv(argv: list[str], command: str, major: str):
    """HfArgumentParser over ms-swift's real argument dataclass, as `swift COMMAND` builds it.
    Returns (namespace, unknown argv, field names)."""
    import importlib

    from swift.utils.utils import _patch_get_type_hints
    from transformers import HfArgumentParser

    module, name = SWIFT_CLASSES[(command, major)]
    cls = getattr(importlib.import_module(module), name)
    with _patch_get_type_hints():
        parser = HfArgumentParser([cls])
    namespace, unknown = parser.parse_known_args(argv)
    return namespace, unknown, {f.name for f in dataclasses.fields(cls)}


def assert_real_swift_accepts(path, command: str, major: str, argv: list[str] | None = None) -> None:
    """ms-swift's parser takes every key of the file (no unknown argv) and reads back each value.
    `argv`: parse these flags (a script's) instead of the file's, checked against the same file."""
    import yaml

    namespace, unknown, names = parse_argv(file_argv(path, major) if argv is None else argv, command, major)
    assert unknown == [], f"ms-swift {major}.x `swift {command}` does not accept {unknown}"
    data = yaml.safe_load(open(path).read())
    data.pop("ENV", None)
    for key, value in data.items():
        assert key in names
        got = getattr(namespace, key)
        assert got == value or str(got) == str(value) or (isinstance(value, list) and list(got) == value), (key, got, value)
