r"""Runs the benchmarks, prints one table and writes JSON plus a Markdown table.

  python -m benchmarks.run                      # all, full sizes (~10 min on 2 CPU cores)
  python -m benchmarks.run --quick              # all, tiny sizes, into workdirs/benchmarks_quick
  python -m benchmarks.run --only remat --only scan_layers

Each benchmark is a module with `NAME` and `benchmark(quick) -> Report`, registered below by
name. Results go to <out-dir>/<name>.json, <out-dir>/latest.json and <out-dir>/latest.md (the
table with the machine and the command, for docs/performance.md). Nothing here asserts on
time. Quick results are not measurements, so by default they go to the git-ignored
workdirs/benchmarks_quick and never over the committed benchmarks/results/.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import logging
import sys
import time
from pathlib import Path

from benchmarks.measure import Report, machine

FULL_RESULTS = "benchmarks/results"  # committed: the measured tables of docs/performance.md
QUICK_RESULTS = "workdirs/benchmarks_quick"  # git-ignored (workdirs/)

# Benchmark name -> module (imported only when it runs).
BENCHMARKS = {
    "loop_overhead": "benchmarks.loop_overhead",
    "compile_cost": "benchmarks.compile_cost",
    "scan_layers": "benchmarks.scan_layers",
    "remat": "benchmarks.remat",
    "batching": "benchmarks.batching",
    "moe_vs_dense": "benchmarks.moe_vs_dense",
    "input_pipeline": "benchmarks.input_pipeline",
    "bucket_input": "benchmarks.bucket_input",
    "gpu_mfu": "benchmarks.gpu_mfu",
    "bare_loop": "benchmarks.bare_loop",
}


def run_one(name: str, quick: bool) -> tuple[Report, float]:
  if name not in BENCHMARKS:
    raise ValueError(f"--only {name!r} is not a benchmark; valid: {', '.join(BENCHMARKS)}.")
  module = importlib.import_module(BENCHMARKS[name])
  start = time.perf_counter()
  report = module.benchmark(quick)
  return report, time.perf_counter() - start


def markdown(results: dict[str, tuple[Report, float]], command: str, when: str) -> str:
  lines = [f"Measured on {machine()}, {when}, with `{command}`.", "",
           "| benchmark | case | result (median, min-max) | goal / paper |",
           "| --- | --- | --- | --- |"]
  cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731  (a "|" in a cell splits it)
  for name, (report, _) in results.items():
    for case, result, goal in report.rows:
      lines.append(f"| {name} | {cell(case)} | {cell(result)} | {cell(goal)} |")
  return "\n".join(lines) + "\n"


def console(results: dict[str, tuple[Report, float]]) -> str:
  width = max(len(case) for report, _ in results.values() for case, _, _ in report.rows)
  lines = []
  for name, (report, seconds) in results.items():
    lines.append(f"\n{name} ({seconds:.0f} s)")
    lines += [f"  {case:<{width}}  {result}" + (f"   [goal: {goal}]" if goal else "")
              for case, result, goal in report.rows]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", action="append", choices=list(BENCHMARKS), metavar="NAME",
                      help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
  parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
  parser.add_argument("--out-dir", default=None, type=Path,
                      help=f"default {FULL_RESULTS}, or {QUICK_RESULTS} with --quick")
  args = parser.parse_args(argv)
  args.out_dir = args.out_dir or Path(QUICK_RESULTS if args.quick else FULL_RESULTS)
  logging.getLogger("imp").setLevel(logging.WARNING)
  names = args.only or list(BENCHMARKS)
  command = "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv)
  when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
  results = {}
  for name in names:
    results[name] = run_one(name, args.quick)
    print(console({name: results[name]}), flush=True)
  args.out_dir.mkdir(parents=True, exist_ok=True)
  records = {}
  for name, (report, seconds) in results.items():
    records[name] = {"name": name, "quick": args.quick, "machine": machine(),
                     "command": command.strip(), "when": when, "seconds": seconds,
                     **dataclasses.asdict(report)}
    (args.out_dir / f"{name}.json").write_text(json.dumps(records[name], indent=2) + "\n")
  (args.out_dir / "latest.json").write_text(json.dumps(records, indent=2) + "\n")
  (args.out_dir / "latest.md").write_text(markdown(results, command.strip(), when))
  print(f"\nwrote {args.out_dir}/latest.md, latest.json and one JSON per benchmark")


if __name__ == "__main__":
  main()
