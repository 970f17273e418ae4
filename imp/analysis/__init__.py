"""Analysis of trained models and runs: expert utilisation, task interference and affinity,
run plots, the ablation runner."""
