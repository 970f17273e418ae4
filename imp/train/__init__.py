"""Training: state and optimizer, the compiled AGD step, the step cache, the training log,
checkpoints, and the AGD loop (`loop.py`, the top of this package; imp.plan and imp.run sit
between the loop and the step's building blocks)."""
