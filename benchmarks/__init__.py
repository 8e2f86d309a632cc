"""Side-by-side timings of pyroopt, pyro.optim and torch: ``python -m benchmarks.run``."""
