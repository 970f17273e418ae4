"""Test set-up: CPU only. `slow` marks the full default experiment (run with `-m slow`)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
