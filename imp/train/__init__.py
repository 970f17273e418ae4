"""Training: state and optimizer, the compiled AGD step, the step cache, the loop."""
