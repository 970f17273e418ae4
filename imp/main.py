r"""Command line: train or evaluate an experiment.

  python -m imp.main --config experiments/digits.py --workdir /tmp/digits \
      --config.total_steps=500 --config.model.depth=2
  python -m imp.main                       # the default experiment into ./workdirs/digits
  python -m imp.main --mode=eval --config experiments/digits.py --workdir /tmp/digits
  python -m imp.main --mode=dry_run --config experiments/imp_moe_l.py --cpu_devices=8 \
      --dry_run_batch_divisor=2048      # compile every task for the mesh; no data, no params
  python -m imp.main --mode=describe --config experiments/digits.py   # every config key
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

import imp.config.digits
from imp import flag_errors

_DEFAULT_CONFIG = str(Path(imp.config.digits.__file__))


def _fatal(message: str) -> None:
  """A bad command line, config or run: one line on stderr, exit status 2."""
  sys.stderr.write(f"FATAL {message}\n")
  sys.exit(2)


def _bad_command_line(error: BaseException, argv: list[str]) -> None:
  if "--debug" in argv:
    raise error
  _fatal(flag_errors.diagnose(argv[1:], _DEFAULT_CONFIG)
         or flag_errors.one_line(flag_errors.innermost(error)))


def _define_config_flag():
  """--config, whose `--config.a.b=v` overrides ml_collections applies as flags are parsed."""
  try:
    # New attributes are accepted so that every key the schema declares can be set, also one
    # the experiment file leaves at its default; `diagnose` then rejects any other key.
    return config_flags.DEFINE_config_file(
        "config", _DEFAULT_CONFIG, "Experiment config file (get_config), optionally `path:arg`.",
        lock_config=False, accept_new_attributes=True)
  except Exception as e:  # the default config file itself failed to load
    _bad_command_line(e, sys.argv)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every error (an unknown override key, a value of the wrong
  type, a config variant that fails) as one line naming the flag; `--debug` shows the
  traceback instead."""
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:
    _bad_command_line(e, argv)
  problem = flag_errors.diagnose(argv[1:], _DEFAULT_CONFIG)  # an override no schema declares
  if problem and "--debug" in argv:
    raise ValueError(problem)
  if problem:
    _fatal(problem)
  return rest


_CONFIG = _define_config_flag()
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics and summary (default ./workdirs/<name>).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "dry_run", "describe"],
                          "What to run (describe: every config key, value, default, meaning).")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", None, "Simulate this many CPU devices (XLA host platform), e.g. to dry-run "
    "a pod config's mesh on a laptop.")
_BATCH_DIVISOR = flags.DEFINE_integer(
    "dry_run_batch_divisor", 1, "dry_run: divide every variant's batch_size by this.")
_DEBUG = flags.DEFINE_bool(
    "debug", False, "Show the traceback of a bad command line or config instead of one line.")
_MEMORY_BUDGET = flags.DEFINE_float(
    "memory_budget_gb", None, "dry_run: fail if a task's peak memory per device exceeds this "
    "many GiB.")


def _summary_lines(summary: dict) -> list[str]:
  cache = summary["step_cache"]
  speed = summary["steps_per_second"]  # None when this run took no step (resumed at the end)
  lines = [
      f"steps: {summary['steps']} ({summary['steps_this_run']} this run) in "
      f"{summary['wall_seconds']:.1f}s" + (f", {speed} steps/s" if speed is not None else ""),
      f"step cache: {cache['size']} programs, {cache['misses']} compiles, {cache['hits']} hits, "
      f"{cache['compile_seconds']:.1f}s compiling = {100 * cache['compile_share']:.1f}% of wall, "
      f"{cache['xla_compiles_after_warmup']} XLA compiles after warm-up",
      f"data wait: {100 * (summary['data_wait_share'] or 0):.1f}% of loop time",
      "task steps: " + ", ".join(f"{k}={v}" for k, v in summary["task_steps"].items()),
  ]
  lines += [f"{k}: {v:.4f}" for k, v in summary["eval"].items()]
  return lines


def _dry_run(config, workdir: str) -> None:
  """--mode=dry_run: a header, a line per program as it compiles, the tables; XLA's own
  messages kept in <workdir>/xla_compile.log. Ctrl-C exits at once (status 130): the
  compiles in progress run in C++ threads that cannot be stopped, so the process ends."""
  from imp.plan import dry_run
  from imp.plan import programs as plan_programs

  Path(workdir).mkdir(parents=True, exist_ok=True)
  if _MEMORY_BUDGET.value is not None and config.get("device_memory_limit") is None:
    # the budget model.remat_policy="auto" fits each program in, as on a device of that size
    config.device_memory_limit = int(_MEMORY_BUDGET.value * dry_run.GIB)
  try:
    reports, facts = dry_run.plan(config, batch_divisor=_BATCH_DIVISOR.value,
                                  xla_log_path=Path(workdir) / "xla_compile.log",
                                  echo=lambda line: print(line, flush=True))
  except KeyboardInterrupt:
    print("dry run interrupted (Ctrl-C)", flush=True)
    os._exit(130)
  print("\n".join(dry_run.report_lines(reports, facts)))
  written = plan_programs.write_json(
      facts["programs"], Path(workdir) / "programs.json", dry_run=True,
      mesh=facts["mesh"], devices=facts["devices"], platform=facts["platform"],
      compile_wall_seconds=facts["compile_wall_seconds"])
  print(f"wrote {written}")
  if _MEMORY_BUDGET.value is not None:
    dry_run.check_budget(reports, _MEMORY_BUDGET.value)


def _config_path() -> str:
  return config_flags.get_config_filename(flags.FLAGS["config"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Our own INFO lines (compiles, resume) go to the console once, through our handler; they
  # do not propagate to absl's root handler, which would print each a second time. Libraries
  # (orbax) only warn.
  absl_logging.set_verbosity(absl_logging.WARNING)
  handler = logging.StreamHandler()
  handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
  imp_logger = logging.getLogger("imp")
  imp_logger.setLevel(logging.INFO)
  imp_logger.addHandler(handler)
  imp_logger.propagate = False
  if _CPU_DEVICES.value:  # must precede the first use of a device
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                               f"device_count={_CPU_DEVICES.value}").strip()
  import jax  # after flags, like the imports below: keeps `--help` fast

  from imp import experiment
  from imp.parallel.distributed import finish, initialize_from_env

  initialize_from_env()  # multi-host jobs: before anything touches a device

  config = _CONFIG.value
  try:
    config.keys()  # ml_collections defers the error of a config file that failed to load
  except OSError as e:
    if _DEBUG.value:
      raise
    cause = flag_errors.innermost(e)
    _fatal(flag_errors.diagnose(sys.argv[1:], _DEFAULT_CONFIG) or
           f"--config={_config_path()}: {type(cause).__name__}: {flag_errors.one_line(cause)}")
  workdir = _WORKDIR.value or str(Path("workdirs") / Path(_config_path()).stem)
  if _MODE.value == "describe":
    from imp.config import schema

    print("\n".join(schema.describe(config)))
    return
  try:
    if _MODE.value == "dry_run":
      _dry_run(config, workdir)
      return
    if _MODE.value == "eval":
      print(json.dumps(experiment.evaluate(config, workdir), indent=2))
      finish()
      return
    summary = experiment.train(config, workdir)
  except (experiment.ConfigError, experiment.NonFiniteError) as e:
    if _DEBUG.value:
      raise
    _fatal(str(e))
  if jax.process_index() == 0:  # one summary per job, not one per process
    print("\n".join(["", f"== summary ({workdir}/summary.json) =="] + _summary_lines(summary)))
  finish()  # several processes: all end together


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
