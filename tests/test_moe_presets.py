"""The Uni-Perceiver-MoE and M3SAT presets train end to end through `python -m imp.main`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _main(workdir: Path, config: str) -> dict:
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  cmd = [sys.executable, "-m", "imp.main", "--config", config, f"--workdir={workdir}"]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return json.loads((workdir / "summary.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("config, metrics", [
    ("experiments/uniperceiver_moe_ti.py:smoke",
     ("digits/classifier_top1", "fashion/classifier_top1", "fashion/zero_shot_top1")),
    ("experiments/m3sat.py:smoke", ("digits/classifier_top1", "fashion/classifier_top1")),
])
def test_preset_trains_and_reports_held_out_accuracy(tmp_path, config, metrics):
  summary = _main(tmp_path, config)
  assert summary["steps"] == 6 and summary["nonfinite_skipped_steps"] == 0
  assert summary["step_cache"]["xla_compiles_after_warmup"] == 0
  for name in metrics:
    assert 0.0 <= summary["eval"][name] <= 1.0
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  moe = {k for r in records if r["kind"] == "train" for k in r if "/moe/" in k}
  # Attention experts report their own routing statistics next to the FFN's.
  assert any("attn_" in k for k in moe) and any("/expert_fraction/" in k for k in moe), moe


def test_condition_grid_is_a_config_option():
  sys.path.insert(0, str(ROOT / "experiments"))
  try:
    import uniperceiver_moe_ti as preset
  finally:
    sys.path.pop(0)
  for condition in ("token", "context", "modality", "task", "attribute"):
    config = preset.get_config(f"grid,condition={condition}")
    assert config.model.moe.condition == condition and config.total_steps == 800
  default = preset.get_config()
  assert (default.model.moe.condition, default.model.moe.num_experts) == ("attribute", 8)
  assert default.model.moe.router_args["k"] == 2 and default.model.moe.attention == "shared"
  with pytest.raises(ValueError, match="condition='expert'; valid: token, context"):
    preset.get_config("condition=expert")
