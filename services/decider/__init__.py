"""decider package."""
