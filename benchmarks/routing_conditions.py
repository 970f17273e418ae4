r"""Routing-condition comparison (Uni-Perceiver-MoE Table 3 on this machine's real data).

Trains `experiments/uniperceiver_moe_ti.py:grid,condition=<c>` for every routing condition
and seed (same tasks, steps and seeds for all), then writes the held-out classifier accuracy
as mean +- std over seeds to benchmarks/results/routing_conditions.json and into the table of
docs/routing_conditions.md (between the `<!-- table -->` markers).

  python -m benchmarks.routing_conditions                      # 5 conditions x 3 seeds
  python -m benchmarks.routing_conditions --seeds 0 --conditions token attribute
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import measure
from imp.config import files as config_files
from imp.experiment import train
from imp.model.conditions import CONDITIONS

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "experiments" / "uniperceiver_moe_ti.py"
DOC = ROOT / "docs" / "routing_conditions.md"
RESULTS = ROOT / "benchmarks" / "results" / "routing_conditions.json"
METRICS = ("digits/classifier_top1",)


def run_grid(conditions: list[str], seeds: list[int]) -> dict:
  preset = config_files.load(PRESET)
  runs = []
  for condition in conditions:
    for seed in seeds:
      config = preset.get_config(f"grid,condition={condition}")
      config.seed = seed
      start = time.perf_counter()
      with tempfile.TemporaryDirectory() as workdir:
        summary = train(config, workdir)
      runs.append({"condition": condition, "seed": seed, "steps": summary["steps"],
                   "wall_seconds": round(time.perf_counter() - start, 1),
                   **{m: summary["eval"][m] for m in METRICS}})
      print(json.dumps(runs[-1]), flush=True)
  return {"preset": "experiments/uniperceiver_moe_ti.py:grid", "seeds": seeds, "runs": runs}


def table(results: dict) -> str:
  lines = ["| condition | " + " | ".join(f"{m} (mean ± std)" for m in METRICS)
           + " | mean wall s/run |", "| --- |" + " --- |" * (len(METRICS) + 1)]
  for condition in dict.fromkeys(r["condition"] for r in results["runs"]):
    runs = [r for r in results["runs"] if r["condition"] == condition]
    cells = []
    for m in METRICS:
      values = 100 * np.asarray([r[m] for r in runs])
      cells.append(f"{values.mean():.1f} ± {values.std():.1f}")
    wall = np.mean([r["wall_seconds"] for r in runs])
    lines.append(f"| {condition} | " + " | ".join(cells) + f" | {wall:.0f} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS),
                      choices=list(CONDITIONS))
  parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  args = parser.parse_args()
  results = run_grid(args.conditions, args.seeds)
  RESULTS.parent.mkdir(parents=True, exist_ok=True)
  RESULTS.write_text(json.dumps(results, indent=1) + "\n")
  text = table(results)
  print(text)
  measure.write_marked(DOC, "table", text)


if __name__ == "__main__":
  main()
