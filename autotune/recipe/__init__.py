"""The recipe: data (dataclasses and their YAML form, `schema.py`), the `TrainingArguments`
values of its settings (`training_args.py`) and `recipe.apply` (`apply.py`). Imports no emitter."""
