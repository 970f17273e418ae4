"""The step and what it updates: the pure train and inference steps (`step.py`), the train
state and optimizer (`state.py`), shardings and sharded initialisation (`placement.py`), and
checkpoints with their checksums (`checkpoint.py`, `checksums.py`). Below imp.plan, imp.run
and the loop; imports none of them."""
