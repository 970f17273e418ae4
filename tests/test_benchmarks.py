"""Benchmarks run in their quick mode (they report ratios; nothing here asserts on time)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_moe_vs_dense_quick(tmp_path):
  out = tmp_path / "moe.json"
  proc = subprocess.run([sys.executable, "-m", "benchmarks.moe_vs_dense", "--quick",
                         f"--out={out}"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(out.read_text())["results"]
  for rows in results.values():
    assert rows["dense"]["ratio_to_dense"] == 1.0
    assert {"expert_choice_e4", "expert_choice_e16", "top2_e4"} <= set(rows)
    assert all(rows[k]["median_ms"] > 0 for k in ("expert_choice_e4", "top2_e4"))
