"""autotune: an empirical out-of-memory auto-tuner for fine-tuning with real training steps."""

__version__ = "0.1.0"

from .recipe import Recipe, load_recipe  # noqa: E402

__all__ = ["Recipe", "load_recipe", "__version__"]
