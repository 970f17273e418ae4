"""`python -m imp.main` end to end in a subprocess: metrics, summary, checkpoint, resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--config.model.depth=1", "--config.model.width=32", "--config.model.mlp_dim=64",
         "--config.log_every=4", "--config.checkpoint_every=6", "--config.eval_every=0"]


def _run(workdir, *flags):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  cmd = [sys.executable, "-m", "imp.main", "--config", "experiments/digits.py:smoke",
         f"--workdir={workdir}", *SMALL, *flags]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout + proc.stderr


def test_main_trains_writes_metrics_summary_checkpoint_and_resumes(tmp_path):
  out = _run(tmp_path, "--config.total_steps=12")
  assert "== summary" in out and "digits/zero_shot_top1" in out

  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if r["kind"] == "train"]
  assert [r["step"] for r in train] == [4, 8, 12]
  assert any(k.endswith("/loss") for k in train[-1])
  assert all(v > 0 for k, v in train[-1].items() if k.endswith("/loss"))
  evals = [r for r in records if r["kind"] == "eval"]
  assert [r["step"] for r in evals] == [12]
  assert 0.0 <= evals[0]["digits/zero_shot_top1"] <= 1.0

  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["steps"] == 12 and summary["steps_this_run"] == 12
  assert sum(summary["task_steps"].values()) == 12
  cache = summary["step_cache"]
  assert cache["misses"] == cache["size"] and cache["xla_compiles_after_warmup"] == 0
  assert set(summary["eval"]) == {"digits/zero_shot_top1", "digits/linear_probe_top1",
                                  "digits/raw_pixel_probe_top1"}
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["12", "6"]
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))

  # Starting again with more steps resumes from step 12 instead of starting over.
  out = _run(tmp_path, "--config.total_steps=16")
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["steps"] == 16 and summary["steps_this_run"] == 4
  assert "resumed from step 12" in out


def test_main_rejects_unknown_override(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  proc = subprocess.run(
      [sys.executable, "-m", "imp.main", f"--workdir={tmp_path}", "--config.model.depht=2"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "depht" in proc.stderr
