"""`autotune plan`: the same step under fake tensors, split into rows, extended to a card."""
