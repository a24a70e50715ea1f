"""Probing at the real world size: torchrun launch, trials in supervised worker processes that
agree across ranks, sharding through existing engines, a journal to resume from."""
