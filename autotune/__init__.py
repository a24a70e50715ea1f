"""autotune: an empirical out-of-memory auto-tuner for fine-tuning with real training steps."""

__version__ = "0.1.0"

__all__ = ["Recipe", "load_recipe", "__version__"]


def __getattr__(name):
    # Loaded on first use, so that `python -m autotune` imports nothing before its Ctrl-C handler.
    if name in ("Recipe", "load_recipe"):
        from .recipe import schema as recipe

        return getattr(recipe, name)
    raise AttributeError(f"module 'autotune' has no attribute {name!r}")
