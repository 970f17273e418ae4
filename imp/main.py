r"""Command line: train or evaluate an experiment.

  python -m imp.main --config experiments/digits.py --workdir /tmp/digits \
      --config.total_steps=500 --config.model.depth=2
  python -m imp.main                       # the default experiment into ./workdirs/digits
  python -m imp.main --config digits_moe:smoke   # a shipped experiment by name, from any folder
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
from imp.config import files

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
  argv = files.resolve_argv(argv)
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
  from imp.train.train_log import wrap

  cache = summary["step_cache"]
  speed = summary["steps_per_second"]  # None when this run took no step (resumed at the end)
  lines = [
      f"steps: {summary['steps']} ({summary['steps_this_run']} this run) in "
      f"{summary['wall_seconds']:.1f}s" + (f", {speed} steps/s" if speed is not None else ""),
      f"compiling: {cache['size']} programs, {cache['compile_seconds']:.1f} s of wall time = "
      f"{100 * cache['compile_share']:.1f}% of the run; {cache['xla_compiles_after_warmup']} "
      "XLA compiles after warm-up",
      f"data wait: {100 * (summary['data_wait_share'] or 0):.1f}% of loop time",
      *wrap("task steps:", [f"{k}={v}" for k, v in summary["task_steps"].items()]),
  ]
  lines += [f"{k}: {v:.4f}" for k, v in summary["eval"].items()]
  return lines


def _check_workdir(workdir: str) -> None:
  """An unwritable workdir stops here, before anything compiles (else the run would find out
  at its first write, minutes later)."""
  import uuid

  from imp import paths

  try:
    path = paths.as_path(workdir, key="--workdir")
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".imp_write_check_{uuid.uuid4().hex[:8]}"  # one per process
    paths.write_text(probe, "")
    probe.unlink()
  except (OSError, paths.PathError) as e:
    if _DEBUG.value:
      raise
    _fatal(f"--workdir={workdir}: cannot write there ({type(e).__name__}: "
           f"{flag_errors.one_line(e)}); valid: a folder you may write (it is created), "
           f"e.g. --workdir=/tmp/{Path(_config_path()).stem}.")


DRY_RUN = "--mode=dry_run --cpu_devices=8 --dry_run_batch_divisor=2048"  # one recipe, docs too


def _check_data(config) -> None:
  """Datasets not prepared (paper configs: their data is not shipped): one message listing
  each with the key to set, and the dry run that needs no data, before anything loads."""
  from imp.data import readiness

  missing = readiness.unprepared(config.datasets)
  if not missing or _DEBUG.value:  # --debug: the sources' own error with its traceback
    return
  lines = [f"{len(missing)} dataset(s) of --config={_config_path()} are not prepared: "
           f"{', '.join(missing)}. Set, for each:"]
  lines += [f"  {name}: {need}" for name, needs in missing.items() for need in needs]
  lines += ["Preparing folders: python -m imp.data.prepare (docs/own_data.md). The dry run "
            "compiles every program without any data:",
            f"  python -m imp.main --config {_config_path()} {DRY_RUN}"]
  _fatal("\n".join(lines))


def _without_traceback(record: logging.LogRecord) -> bool:
  record.exc_info, record.exc_text, record.stack_info = None, None, None
  return True


def _dry_run(config, workdir: str) -> None:
  """--mode=dry_run: a header, a line per program as it compiles, the tables; XLA's own
  messages kept in <workdir>/xla_compile.log. Ctrl-C exits at once (status 130): the
  compiles in progress run in C++ threads that cannot be stopped, so the process ends."""
  from imp import paths
  from imp.plan import dry_run
  from imp.plan import programs as plan_programs
  from imp.train.loop import xla_log_path

  out = paths.as_path(workdir, key="--workdir")
  out.mkdir(parents=True, exist_ok=True)
  if _MEMORY_BUDGET.value is not None and config.get("device_memory_limit") is None:
    # the budget model.remat_policy="auto" fits each program in, as on a device of that size
    config.device_memory_limit = int(_MEMORY_BUDGET.value * dry_run.GIB)
  try:
    reports, facts = dry_run.plan(config, batch_divisor=_BATCH_DIVISOR.value,
                                  xla_log_path=xla_log_path(out),
                                  echo=lambda line: print(line, flush=True))
  except KeyboardInterrupt:
    print("dry run interrupted (Ctrl-C)", flush=True)
    os._exit(130)
  print("\n".join(dry_run.report_lines(reports, facts)))
  written = plan_programs.write_json(
      facts["programs"], out / "programs.json", dry_run=True,
      mesh=facts["mesh"], devices=facts["devices"], platform=facts["platform"],
      compile_wall_seconds=facts["compile_wall_seconds"], **facts["choices"])
  print(f"wrote {written}")
  if _MEMORY_BUDGET.value is not None:
    dry_run.check_budget(reports, _MEMORY_BUDGET.value)


def _config_path() -> str:
  return config_flags.get_config_filename(flags.FLAGS["config"])


def _console() -> None:
  """Lines reach a redirected stdout as printed; imp's own log lines are printed once."""
  # A redirected stdout (`> log`, a pipe) is block-buffered: flush every line as printed.
  sys.stdout.reconfigure(line_buffering=True)
  # Our own INFO lines (compiles, resume) go to the console once, through our handler; they
  # do not propagate to absl's root handler, which would print each a second time. Libraries
  # (orbax) only warn.
  absl_logging.set_verbosity(absl_logging.WARNING)
  # orbax logs each failure of an asynchronous save with its traceback from several threads
  # (hundreds of lines on a full disk); imp reports it in one FATAL line, so one line each.
  for name in ("absl", "asyncio"):  # asyncio: the failed writes' "never retrieved" tasks
    logging.getLogger(name).addFilter(_without_traceback)
  handler = logging.StreamHandler()
  handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
  imp_logger = logging.getLogger("imp")
  imp_logger.setLevel(logging.INFO)
  imp_logger.addHandler(handler)
  imp_logger.propagate = False


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _console()
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
    from imp.plan import config_keys

    print("\n".join(config_keys.describe(config)))
    return
  from imp import paths

  try:  # a bad scheme or an unreachable bucket: one line now, not after a minute of compiling
    paths.check_reachable(workdir, key="--workdir")
  except paths.PathError as e:
    _fatal(str(e))
  if _MODE.value != "dry_run" or _WORKDIR.value:
    _check_workdir(workdir)
  if _MODE.value in ("train", "eval"):
    _check_data(config)
  try:
    if _MODE.value == "dry_run":
      _dry_run(config, workdir)
      return
    if _MODE.value == "eval":
      print(json.dumps(experiment.evaluate(config, workdir), indent=2))
      finish()
      return
    summary = experiment.train(config, workdir)
  except (experiment.ConfigError, experiment.NonFiniteError, experiment.CheckpointSaveError,
          experiment.MetricWriteError, experiment.WorkdirBusyError) as e:
    if _DEBUG.value:
      raise
    _fatal(str(e))
  if jax.process_index() == 0:  # one summary per job, not one per process
    print("\n".join(["", f"== summary ({workdir}/summary.json) =="] + _summary_lines(summary)))
  finish()  # several processes: all end together


if __name__ == "__main__":
  try:
    app.run(main, flags_parser=_parse_flags)
  except BrokenPipeError:  # `| head` closed the pipe (lines are flushed as printed): stop quietly
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(1)
