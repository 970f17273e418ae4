"""The AGD loop (`loop.py`, read it top to bottom) and what only it uses: the per-task training
log, step throughput, preemption, the workdir lease, the profile window, and the batching
baselines it is compared with. Above imp.run, imp.plan and imp.step; a peer of imp.evaluate
and imp.analysis, which it never imports (tests/test_layers.py)."""
