r"""LIMoE's routing fixes on the audio-visual digits, with and without, over seeds.

Trains `experiments/ablation_limoe.py:<arm>` for each arm and seed, then reports, as mean +-
sample std over seeds: held-out accuracy (spoken classifier on unseen voices, audio -> image R@1),
and per modality the entropy (nats; log 8 = 2.08 is uniform over the 8 experts) of the expert
usage, i.e. each expert's share of the filled slots (`moe/<modality>/expert_fraction`),
averaged over the MoE layers and over the last two logged training windows, plus the share
of that modality's tokens no expert processed (`dropped_fraction`). Writes
benchmarks/results/limoe_ablation.json and the table of docs/ablations.md (between the
`<!-- limoe -->` markers).

  python -m imp.data.spoken_digits --output data/av_digits
  python -m benchmarks.limoe_ablation --data data/av_digits/prepared
  python -m benchmarks.limoe_ablation --data DIR --arms top1 --seeds 0
  python -m benchmarks.limoe_ablation --table_only   # the table again from the JSON
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import measure
from imp.config import files as config_files
from imp.train.loop import train

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "experiments" / "ablation_limoe.py"
DOC = ROOT / "docs" / "ablations.md"
RESULTS = ROOT / "benchmarks" / "results" / "limoe_ablation.json"
METRICS = ("spoken/classifier_top1", "av/retrieval/audio_to_image/R@1")
MODALITIES = ("image", "audio")
_FRACTION = re.compile(r"^[^/]+/[^/]+/moe/(\w+)/expert_fraction/l(\d+)/e(\d+)$")
_DROPPED = re.compile(r"^[^/]+/[^/]+/moe/(\w+)/dropped_fraction/l(\d+)$")


def usage_stats(metrics_path: Path, windows: int = 2) -> dict[str, float]:
  """Per modality: mean entropy of the per-layer expert usage and mean dropped share, over
  every task's last `windows` logged training records."""
  records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
  train_records = [r for r in records if r.get("kind") == "train"]
  steps = sorted({r["step"] for r in train_records})[-windows:]
  entropies, dropped = collections.defaultdict(list), collections.defaultdict(list)
  for record in (r for r in train_records if r["step"] in steps):
    fractions = collections.defaultdict(dict)  # (task, modality, layer) -> {expert: share}
    for key, value in record.items():
      if (m := _FRACTION.match(key)):
        fractions[(key.split("/")[0], m[1], int(m[2]))][int(m[3])] = value
      elif (m := _DROPPED.match(key)):
        dropped[m[1]].append(value)
    for (_, modality, _), shares in fractions.items():
      p = np.asarray([shares[e] for e in sorted(shares)], np.float64)
      p = p / max(p.sum(), 1e-12)
      entropies[modality].append(float(-(p[p > 0] * np.log(p[p > 0])).sum()))
  out = {}
  for modality in MODALITIES:
    out[f"{modality}_usage_entropy"] = float(np.mean(entropies[modality]))
    out[f"{modality}_dropped"] = float(np.mean(dropped[modality]))
  return out


def run(arms: list[str], seeds: list[int], data: str, cache: str) -> dict:
  preset = config_files.load(PRESET)
  runs = []
  for seed in seeds:  # seed-major: every arm has a run before any arm has two
    for arm in arms:
      config = preset.get_config(arm)
      config.seed = seed
      config.datasets.images.directory = f"{data}/images"
      config.datasets.spoken.directory = f"{data}/spoken"
      config.compilation_cache_dir = cache  # seeds of an arm share their compiled programs
      start = time.perf_counter()
      with tempfile.TemporaryDirectory() as workdir:
        summary = train(config, workdir)
        usage = usage_stats(Path(workdir) / "metrics.jsonl")
      runs.append({"arm": arm, "seed": seed, "steps": summary["steps"],
                   "wall_seconds": round(time.perf_counter() - start, 1),
                   **{m: summary["eval"][m] for m in METRICS}, **usage})
      print(json.dumps(runs[-1]), flush=True)
  return {"preset": "experiments/ablation_limoe.py", "seeds": seeds, "runs": runs}


def table(results: dict) -> str:
  columns = ([(m, f"{m} (%)", 100) for m in METRICS]
             + [(f"{m}_usage_entropy", f"{m} usage entropy (nats)", 1) for m in MODALITIES]
             + [(f"{m}_dropped", f"{m} tokens dropped (%)", 100) for m in MODALITIES])
  lines = ["| arm | " + " | ".join(h for _, h, _ in columns) + " | mean wall s/run |",
           "| --- |" + " --- |" * (len(columns) + 1)]
  for arm in dict.fromkeys(r["arm"] for r in results["runs"]):
    runs = [r for r in results["runs"] if r["arm"] == arm]
    cells = []
    for key, _, scale in columns:
      values = scale * np.asarray([r[key] for r in runs])
      digits = 2 if scale == 1 else 1
      # Sample std over seeds, as the other tables of docs/ablations.md.
      spread = f" ± {values.std(ddof=1):.{digits}f}" if len(values) > 1 else " (1 seed)"
      cells.append(f"{values.mean():.{digits}f}{spread}")
    wall = np.mean([r["wall_seconds"] for r in runs])
    lines.append(f"| {arm} | " + " | ".join(cells) + f" | {wall:.0f} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default="data/av_digits/prepared",
                      help="the prepared folder of python -m imp.data.spoken_digits")
  parser.add_argument("--arms", nargs="+", default=["top1", "limoe"])
  parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  parser.add_argument("--cache", default="/tmp/imp_limoe_ablation_cache",
                      help="JAX compilation cache shared by the runs")
  parser.add_argument("--table_only", action="store_true",
                      help=f"rewrite the table from {RESULTS.relative_to(ROOT)}, train nothing")
  args = parser.parse_args()
  if args.table_only:
    results = json.loads(RESULTS.read_text())
  else:
    results = run(args.arms, args.seeds, args.data, args.cache)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
  text = table(results)
  print(text)
  measure.write_marked(DOC, "limoe", text)


if __name__ == "__main__":
  main()
