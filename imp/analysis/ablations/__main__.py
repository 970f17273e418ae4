"""`python -m imp.analysis.ablations`: every (variant, seed) of a study trained with
`imp.experiment.train`, and its table (imp/analysis/ablations/__init__.py). A command line
composes the layers, as imp.main does, so it sits above them."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jax

from imp import experiment, paths
from imp.analysis import ablations


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m imp.analysis.ablations",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--study", default="all", choices=[*ablations.STUDIES, "all"])
  parser.add_argument("--root", default="/tmp/ablations", help="parent of the run workdirs")
  parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
  parser.add_argument("--short", action="store_true", help="12 steps per run (smoke test)")
  parser.add_argument("--budget", default="", choices=["", "short", "long"],
                      help="steps per run: the study's own (200; modality_mix 1,500), short "
                      "(12) or long (1,000; modality_mix 3,000)")
  parser.add_argument("--compile-cache", default=None,
                      help="persistent compilation cache of every run (config."
                      "compilation_cache_dir; default: the user's, which the seeds of a "
                      "variant share: they compile the same programs)")
  args = parser.parse_args(argv)
  root = paths.command_line_path(args.root, key="--root")
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  seeds = [int(s) for s in args.seeds.split(",")]
  budget = "short" if args.short else args.budget

  def train(config, workdir):
    # Each run opens config.compilation_cache_dir (imp.run.restore.compilation_cache): a
    # process-wide JAX setting made here would be replaced for the run's duration.
    if args.compile_cache:
      config.compilation_cache_dir = args.compile_cache
    return experiment.train(config, workdir)

  for study in ablations.STUDIES if args.study == "all" else [args.study]:
    results = ablations.run_study(study, args.root, seeds, budget=budget, train=train)
    text = ablations.table(study, results)
    if study in ablations.INTERFERENCE:  # the mix arms' task interference, at their last step
      found = ablations.run_interference(study, args.root, seeds, budget=budget)
      text += "\n\nTask interference (encoder):\n\n" + ablations.interference_table(study, found)
    paths.write_text(root / f"{study}.md", text + "\n")
    print(f"\n## {study}\n\n{text}\n", flush=True)


if __name__ == "__main__":
  main()
