r"""Evaluate the latest checkpoint of a run: every entry of the config's eval suite.

  python -m imp.evaluate --config experiments/digits.py --workdir /tmp/digits
  python -m imp.evaluate --config experiments/digits.py --workdir /tmp/digits \
      --config.evals.digits.linear_probe=False

Runs zero-shot classification (prompt-template ensembles), cross-modal retrieval R@1/5/10 in
both directions and the linear probe (logistic regression, L2 chosen by cross-validation) as
`config.evals` configures them (see `imp.evaluate.suite`), and writes
`<workdir>/evaluation.json` and `<workdir>/evaluation.md` (a Markdown table).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory with checkpoints/.")
flags.mark_flags_as_required(["config", "workdir"])


def markdown_table(results: Mapping[str, float], step: int) -> str:
  """One row per result: entry, metric, value (accuracies and recalls in percent)."""
  lines = [f"Evaluation of the checkpoint at step {step}.", "",
           "| entry | metric | value (%) |", "| --- | --- | --- |"]
  for name, value in results.items():
    entry, _, metric = name.partition("/")
    lines.append(f"| {entry} | {metric} | {100 * value:.2f} |")
  return "\n".join(lines) + "\n"


def evaluate_and_write(config, workdir: str | Path) -> dict[str, float]:
  """The suite on the latest checkpoint; writes evaluation.json and evaluation.md."""
  from imp.evaluate.suite import EvalSuite
  from imp.run.infer import eval_rows, infer_fn
  from imp.run.restore import restore_latest

  run, state = restore_latest(config, workdir)
  try:
    results = EvalSuite(config.evals, run.sources, rows=eval_rows(run)).run(
        infer_fn(run, state.params))
  finally:
    run.checkpointer.close()
  step, workdir = int(state.step), Path(workdir)
  (workdir / "evaluation.json").write_text(
      json.dumps({"step": step, "results": results}, indent=2) + "\n")
  (workdir / "evaluation.md").write_text(markdown_table(results, step))
  return results


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from imp.plan import ConfigError

  try:
    evaluate_and_write(_CONFIG.value, _WORKDIR.value)
  except (ConfigError, FileNotFoundError) as e:
    sys.stderr.write(f"FATAL {e}\n")
    sys.exit(2)
  print((Path(_WORKDIR.value) / "evaluation.md").read_text())


if __name__ == "__main__":
  app.run(main)
