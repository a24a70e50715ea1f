"""What to run next: the frontier search (pure), the candidates' space, strategy and allocator
dimensions, validation of the winner, and the global-batch split."""
