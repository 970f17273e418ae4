"""cProfile of the AGD loop on the default experiment (evidence for docs/benchmarks.md).

  python -m benchmarks.profile_loop [STEPS]

A first run of 40 steps fills the persistent compilation cache; the profiled run of STEPS
(default 150) then loads its programs from it. Prints the summary and the top functions by
own time. Not part of the registry: it explains a ratio, it does not measure one.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import tempfile
from pathlib import Path

from benchmarks.loop_overhead import experiment
from imp import experiment as imp_experiment


def main() -> None:
  steps = int(sys.argv[1]) if len(sys.argv) > 1 else 150
  with tempfile.TemporaryDirectory() as root:
    root = Path(root)
    config = experiment(steps + 50, root / "compilation_cache")
    imp_experiment.train(config, root / "warm", stop_after=40)
    profile = cProfile.Profile()
    profile.enable()
    summary = imp_experiment.train(config, root / "profiled", stop_after=steps)
    profile.disable()
  print({k: summary[k] for k in ("steps_per_second", "data_wait_share", "step_cache")})
  pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
  main()
