"""Never lose a run: exact resume, the NaN/Inf guard, checkpoint compatibility, preemption."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_digits_config as _small

from imp import experiment
from imp.model import embedders

ROOT = Path(__file__).resolve().parents[1]


def _final_params(config, workdir):
  exp = experiment.build(config, workdir)
  state, _ = exp.checkpointer.restore(exp.state)
  exp.checkpointer.close()
  return jax.device_get(state)


def _assert_bit_identical(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_resumed_run_is_bit_identical_to_a_straight_run(tmp_path):
  straight = experiment.train(_small(), tmp_path / "straight")
  first = experiment.train(_small(), tmp_path / "resumed", stop_after=6)
  assert first["steps"] == 6 and first["stopped_early"]
  lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
  records = [json.loads(x) for x in lines]
  assert [r["step"] for r in records if r["kind"] == "summary"] == [6]  # the last step run
  second = experiment.train(_small(), tmp_path / "resumed")
  assert second["steps_this_run"] == 6 and straight["steps_this_run"] == 12
  _assert_bit_identical(_final_params(_small(), tmp_path / "straight"),
                        _final_params(_small(), tmp_path / "resumed"))


def test_nonfinite_steps_are_skipped_and_counted(tmp_path, monkeypatch):
  normalize = embedders.normalize_pixels

  def poisoned(x, dtype):  # fault injection inside the step: images whose pixels sum to 7k
    out = normalize(x, dtype)
    hit = x.reshape(len(x), -1).astype(jnp.int32).sum(axis=1) % 7 == 0
    return jnp.where(hit.reshape((-1,) + (1,) * (x.ndim - 1)), jnp.nan, out)

  monkeypatch.setattr(embedders, "normalize_pixels", poisoned)  # evaluation images too
  summary = experiment.train(_small(total_steps=10), tmp_path)
  assert summary["steps"] == 10
  assert summary["nonfinite_skipped_steps"] > 0
  records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  flagged = [v for r in records for k, v in r.items() if k.endswith("/nonfinite")]
  assert flagged and max(flagged) > 0
  state = _final_params(_small(total_steps=10), tmp_path)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_nonfinite_stop_policy_names_task_and_step(tmp_path, monkeypatch):
  monkeypatch.setattr(embedders, "normalize_pixels",
                      lambda x, dtype: jnp.full(x.shape, jnp.nan, dtype))
  with pytest.raises(experiment.NonFiniteError, match=r"non-finite loss or gradient in task "
                                                r"'digits_\w+/\w+' at step 0 \(config.nonfinite"
                                                r".policy='stop'\)"):
    experiment.train(_small(**{"nonfinite": dict(policy="stop")}), tmp_path)


def test_resume_with_a_different_model_lists_the_mismatched_parameters(tmp_path):
  experiment.train(_small(total_steps=2), tmp_path)
  with pytest.raises(ValueError, match=r"does not fit this config's model") as error:
    experiment.train(_small(total_steps=4, **{"model.width": 16}), tmp_path)
  message = str(error.value)
  assert "params/encoder/layers/mlp/wi/kernel: checkpoint (1, 32, 64) vs config (1, 16, 64)" in (
      message)


def _main(workdir, *flags):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  cmd = [sys.executable, "-m", "imp.main", "--config", "experiments/digits.py:smoke",
         f"--workdir={workdir}", "--config.model.depth=1", "--config.model.width=32",
         "--config.model.mlp_dim=64", "--config.eval_every=0", "--config.log_every=1", *flags]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait_for_step(proc, step):
  """Reads output until the line of `step` shows the run is in its loop."""
  for line in proc.stdout:
    if line.startswith(f"step {step}:"):
      return
  raise AssertionError(f"process ended before step {step}")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm", "sigkill_during_saves"])
def test_interrupted_run_resumes_to_the_same_parameters(tmp_path, how):
  total = "--config.total_steps=30"
  straight = _main(tmp_path / "straight", total)
  assert straight.wait(timeout=600) == 0
  flags = [total, "--config.checkpoint_every=1" if how != "sigterm" else
           "--config.checkpoint_every=100"]
  proc = _main(tmp_path / "cut", *flags)
  _wait_for_step(proc, 12)
  if how == "sigterm":
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    assert "received; saved a checkpoint at step" in out
  else:
    time.sleep(0.05)  # land inside one of the every-step asynchronous saves
    proc.kill()
    proc.wait(timeout=60)
  steps = sorted(int(p.name) for p in (tmp_path / "cut" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert steps and steps[-1] < 30
  resume = _main(tmp_path / "cut", *flags)
  out = resume.communicate(timeout=600)[0]
  assert resume.returncode == 0, out
  assert "resumed from step" in out
  config = _small(total_steps=30)
  _assert_bit_identical(_final_params(config, tmp_path / "straight"),
                        _final_params(config, tmp_path / "cut"))


def test_run_killed_before_its_final_evaluation_evaluates_on_rerun(tmp_path, monkeypatch):
  straight = experiment.train(_small(total_steps=4), tmp_path / "straight")
  real_run = experiment.EvalSuite.run

  def killed(self, infer):  # the process dies after the final save, inside the evaluation
    raise KeyboardInterrupt

  monkeypatch.setattr(experiment.EvalSuite, "run", killed)
  with pytest.raises(KeyboardInterrupt):
    experiment.train(_small(total_steps=4), tmp_path / "killed")
  monkeypatch.setattr(experiment.EvalSuite, "run", real_run)
  rerun = experiment.train(_small(total_steps=4), tmp_path / "killed")
  assert rerun["steps_this_run"] == 0 and not rerun["stopped_early"]
  assert straight["eval"] and rerun["eval"] == straight["eval"]
  # Rerunning the command of a finished run keeps its results too.
  assert experiment.train(_small(total_steps=4), tmp_path / "straight")["eval"] == straight["eval"]


def test_best_checkpoint_is_kept_beside_the_newest(tmp_path):
  config = _small(total_steps=8, eval_every=4, checkpoint_keep=1)
  summary = experiment.train(config, tmp_path)
  assert summary["steps"] == 8
  assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()] == ["8"]
  best = [p.name for p in (tmp_path / "checkpoints_best").iterdir() if p.name.isdigit()]
  records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  scores = {r["step"]: r["digits/zero_shot_top1"] for r in records if r["kind"] == "eval"}
  assert len(best) == 1 and scores[int(best[0])] == max(scores.values()), (best, scores)
