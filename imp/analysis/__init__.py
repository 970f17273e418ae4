"""Analysis of trained models and runs: expert utilisation (and, later, task interference)."""
