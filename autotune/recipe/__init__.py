"""The recipe: data (dataclasses and their YAML form, `schema.py`), the `TrainingArguments`
values of its settings (`recipe/training_args.py`) and `recipe.apply` (`recipe/apply.py`). Imports no emitter."""
