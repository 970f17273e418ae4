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

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory with checkpoints/.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from imp import experiment, paths
  from imp.plan import ConfigError

  try:
    experiment.evaluate(_CONFIG.value, _WORKDIR.value)
  except (ConfigError, FileNotFoundError) as e:
    sys.stderr.write(f"FATAL {e}\n")
    sys.exit(2)
  print((paths.as_path(_WORKDIR.value) / "evaluation.md").read_text())


if __name__ == "__main__":
  from imp.config import files

  # `--config NAME` or experiments/X.py from any folder, as `imp.main` takes it; a config
  # file that is not there is one line with a did-you-mean, as in `imp.main`.
  try:
    argv = files.resolve_argv(sys.argv, strict=True)
  except FileNotFoundError as e:
    sys.stderr.write(f"FATAL {e}\n")
    sys.exit(2)
  app.run(main, argv=argv)
