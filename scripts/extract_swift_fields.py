"""Extract the argument names and types `swift sft` (or `swift rlhf`) accepts from the installed ms-swift.

Run it with the python of a venv that has ms-swift installed (not autotune's own venv: ms-swift
pins its own transformers):

    /work/venvs/swift46/bin/python scripts/extract_swift_fields.py autotune/emit/swift_fields/4.6.json
    /work/venvs/swift312/bin/python scripts/extract_swift_fields.py autotune/emit/swift_fields/3.12.json
    /work/venvs/swift46/bin/python scripts/extract_swift_fields.py autotune/emit/swift_fields/4.6-rlhf.json rlhf
    /work/venvs/swift312/bin/python scripts/extract_swift_fields.py autotune/emit/swift_fields/3.12-rlhf.json rlhf

`sft`: `swift.arguments.SftArguments` in 4.x, `swift.llm.TrainArguments` in 3.x; `rlhf`:
`swift.arguments.RLHFArguments` in 4.x, `swift.llm.RLHFArguments` in 3.x -- the dataclasses
`swift sft` / `swift rlhf` parse their command line (and YAML file) into. One file per
(version, command), each of the same shape, so the SFT lists stay as they were."""

import dataclasses
import json
import sys
import typing
from importlib import metadata


def type_text(tp) -> str:
    """A stable text for a type hint: int, str, bool, float, Optional[X], List[X], Literal['a', 'b'], Union[...]."""
    if isinstance(tp, str):
        return tp
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return "Literal[" + ", ".join(repr(a) for a in args) + "]"
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        inner = [a for a in args if a is not type(None)]
        text = type_text(inner[0]) if len(inner) == 1 else "Union[" + ", ".join(type_text(a) for a in inner) + "]"
        return f"Optional[{text}]" if len(inner) < len(args) else text
    if origin in (list, typing.List):
        return f"List[{type_text(args[0])}]" if args else "List"
    if origin in (dict, typing.Dict):
        return "Dict"
    return getattr(tp, "__name__", str(tp))


CLASSES = {("sft", 4): ("swift.arguments", "SftArguments"), ("sft", 3): ("swift.llm", "TrainArguments"),
           ("rlhf", 4): ("swift.arguments", "RLHFArguments"), ("rlhf", 3): ("swift.llm", "RLHFArguments")}


def main(out: str, command: str = "sft") -> None:
    import importlib

    version = metadata.version("ms-swift")
    module, attr = CLASSES[(command, 4 if int(version.split(".")[0]) >= 4 else 3)]
    cls = getattr(importlib.import_module(module), attr)
    name = f"{module}.{attr}"
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - a forward reference that does not resolve: fall back per field
        hints = {}
    fields = {f.name: type_text(hints.get(f.name, f.type)) for f in dataclasses.fields(cls) if f.init}
    data = {"ms_swift": version, "class": name, "extracted_by": "scripts/extract_swift_fields.py",
            "fields": dict(sorted(fields.items()))}
    with open(out, "w") as handle:
        json.dump(data, handle, indent=1)
        handle.write("\n")
    print(f"{name} from ms-swift {version}: {len(fields)} fields -> {out}")


if __name__ == "__main__":
    main(sys.argv[1], *sys.argv[2:3])
