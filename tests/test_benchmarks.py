"""Benchmarks run in their quick mode (they report ratios; nothing here asserts on time)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from benchmarks import gpu_mfu, input_bytes, programs
from benchmarks.measure import Stat, ratio
from benchmarks.run import BENCHMARKS
from imp.model import IMPModel, ModelConfig
from imp.step.state import init_state, make_optimizer

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def test_input_bytes_of_imp_b_are_uint8_pixels(capsys):
  """IMP-B's classification batch at base resolution, on one device: 65,536 RGB images of
  256x256 as uint8 (1 byte a pixel; 4 in float32) and 65,536 int32 labels."""
  table = {name: (now, before) for name, now, before in
           input_bytes.main(["--config", str(ROOT / "experiments/imp_b.py")])}
  images, labels = 65536 * 256 * 256 * 3, 65536 * 4
  assert table["imagenet_cls/base"] == (images + labels, 4 * images + labels)
  assert "imagenet_cls/base" in capsys.readouterr().out


def test_benchmark_programs_are_the_plans():
  """The model benchmarks build the run's plan from a config and compile its programs."""
  tiny = dict(width=16, depth=2, num_heads=2, mlp_dim=32, embed_dim=8, text_max_length=8)
  plan = programs.plan_of(tiny, [programs.TaskShape("softmax", 8, 16),
                                 programs.TaskShape("nce", 4, 8, 6)])
  assert [p.name for p in plan.programs] == ["task0/base", "task1/base"]
  nce = plan.batch_of(plan.programs[1])
  assert {k: (v.shape, v.dtype.name) for k, v in nce.items()} == {
      "image": ((4, 8, 8, 1), "uint8"), "text": ((4, 6), "int32"), "label": ((4,), "int32")}
  batch = programs.synthetic_batch(nce, seed=3)
  assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
      k: (v.shape, v.dtype.name) for k, v in nce.items()}
  assert batch["text"].min() >= 1 and batch["label"].max() < programs.CLASSES
  program = programs.compile_train_program(plan, plan.programs[0])
  metrics = program()
  assert int(program.state.step) == 1 and np.isfinite(float(metrics["loss"]))
  assert program.temp_bytes > 0 and program.compile_seconds > program.lower_seconds > 0


def test_gpu_mfu_plans_the_paper_step_without_allocating():
  """IMP-B's MFU step: 256 uint8 RGB images of 256x256 per step, bf16 compute, float32
  parameters; planned abstractly (nothing allocated, so this runs on any CPU)."""
  config = gpu_mfu.mfu_config(gpu_mfu.paper_model(moe=False), 256)
  plan = gpu_mfu.plan_of(config)
  (program,) = plan.programs
  batch = plan.batch_of(program)
  assert batch["image"].shape == (256, 256, 256, 3) and batch["image"].dtype == np.uint8
  assert plan.model_config.dtype == "bfloat16" and plan.model_config.moe.num_experts == 0
  assert {leaf.dtype for leaf in jax.tree.leaves(plan.state.params)} == {np.dtype("float32")}
  flops = gpu_mfu.train_flops(plan.model, plan.state.params, 256, 256)
  assert flops.tokens == 256 * 256


def test_stat_is_median_and_min_max_like_numpy():
  samples = [3.0, 1.0, 4.0, 1.5, 9.0]
  stat = Stat.of(samples)
  assert (stat.median, stat.low, stat.high) == (np.median(samples), 1.0, 9.0)
  assert stat.scaled(1e3).median == pytest.approx(3e3)
  # Ratios pair the rounds measured side by side: (2/1, 6/2, 3/3) -> median 2.
  assert ratio([2.0, 6.0, 3.0], [1.0, 2.0, 3.0]).median == 2.0
  with pytest.raises(ValueError, match="at least one sample"):
    Stat.of([])


@pytest.mark.parametrize("moe", [None, dict(num_experts=4, every=2)])
def test_analytic_flops_match_xla_cost_analysis(moe):
  # Unrolled layers: XLA's cost analysis counts a scanned loop body only once.
  cfg = dict(width=64, depth=4, num_heads=4, mlp_dim=256, embed_dim=16, text_max_length=8,
             scan_layers=False, moe=moe or {})
  model = IMPModel(ModelConfig.from_config(cfg), heads=(("digits", 10),), modalities=("image",))
  state = init_state(model, make_optimizer(dict(name="adam", learning_rate=1e-3), 10), seed=0)
  batch = {"image": np.zeros((8, 16, 16, 1), np.float32), "label": np.zeros(8, np.int32)}
  analytic = gpu_mfu.train_flops(model, state.params, 8, gpu_mfu.vision_tokens(
      model.config, (16, 16)))
  # Hand check of the attention term: 12 * L * N^2 * D * B = 12 * 4 * 64^2 * 64 * 8.
  assert analytic.attention == 12 * 4 * 64 * 64 * 64 * 8
  assert analytic.tokens == 8 * 64
  xla = gpu_mfu.xla_flops(gpu_mfu.grad_program(model, state.params, batch, "digits"))
  # XLA also counts elementwise ops (LayerNorm, GELU, softmax) the 6PT rule leaves out.
  assert 0.95 < xla / analytic.total < 1.10, (xla, analytic)


def test_gpu_mfu_on_cpu_exits_saying_so():
  proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_mfu"], cwd=ROOT, env=ENV,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "no GPU on this machine" in proc.stdout


def test_run_rejects_an_unknown_benchmark_by_name():
  proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--only", "nope"], cwd=ROOT,
                        env=ENV, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and "invalid choice: 'nope'" in proc.stderr


def test_quick_mode_never_writes_the_committed_results(tmp_path, monkeypatch):
  """--quick without --out-dir writes under the git-ignored workdirs/, not benchmarks/results."""
  import types

  from benchmarks import run
  from benchmarks.measure import Report

  fake = types.ModuleType("fake_bench")
  fake.benchmark = lambda quick: Report(rows=[("case", "1.0x", "")], data={"quick": quick})
  monkeypatch.setitem(sys.modules, "fake_bench", fake)
  monkeypatch.setitem(run.BENCHMARKS, "fake", "fake_bench")
  monkeypatch.chdir(tmp_path)
  run.main(["--quick", "--only", "fake"])
  assert json.loads((tmp_path / run.QUICK_RESULTS / "fake.json").read_text())["quick"]
  assert not (tmp_path / run.FULL_RESULTS).exists()
  assert run.QUICK_RESULTS.startswith("workdirs/")  # .gitignore ignores workdirs/
  run.main(["--only", "fake"])  # a full run still writes the committed folder
  assert (tmp_path / run.FULL_RESULTS / "fake.json").exists()


@pytest.mark.slow
def test_gpu_mfu_measure_runs_in_bf16_on_a_tiny_model():
  tiny = dict(width=32, depth=2, num_heads=2, mlp_dim=64, embed_dim=16, text_max_length=8,
              vision_patch=(1, 4, 4), vision_base_grid=(1, 4, 4), remat_policy="full",
              moe=dict(num_experts=4, every=2))
  out = gpu_mfu.measure(tiny, 4, rounds=1, repeats=1, peak=1e12)
  assert out["dtype"] == "bfloat16" and out["tokens"] == 4 * 16
  # Full remat recomputes the forward pass: the step does more than the model's FLOPs.
  assert out["step_flops"] > out["model_flops"] > 0 and 0 < out["mfu"] < out["hfu"]


@pytest.mark.slow
def test_gpu_mfu_remat_policies_trade_memory_on_a_tiny_model():
  tiny = dict(width=32, depth=2, num_heads=2, mlp_dim=64, embed_dim=16, text_max_length=8,
              vision_patch=(1, 4, 4), vision_base_grid=(1, 4, 4))
  out = gpu_mfu.remat_policies(tiny, 4, rounds=1, repeats=1)
  assert set(out) == set(gpu_mfu.REMAT_POLICIES)
  assert out["full"]["temp_bytes"] < out["none"]["temp_bytes"]
  assert out["none"]["memory_saved"] == 0.0 and 0 < out["full"]["memory_saved"] < 1
  assert out["dots_saveable"]["step_ratio_to_none"]["median"] > 0


# What each benchmark's quick run must show whatever the machine's load (never a time).
def _check_compile_cost(data):
  assert data["xla_compiles_after_warmup"] == 0
  assert data["programs_compiled"] == data["signatures"]


def _check_remat(data):
  full = data["policies"]["full"]
  assert full["temp_bytes"] < data["policies"]["none"]["temp_bytes"]
  assert full["flops_vs_none"] > 1.0  # remat recomputes the forward pass


def _check_scan_layers(data):
  for name, depth in data.items():
    if isinstance(depth, dict) and "trace_lower_seconds" in depth:
      for kind, lower in depth["trace_lower_seconds"].items():
        assert 0 < lower["median"] < depth["compile_seconds"][kind]["median"]
      # Each scan_unroll setting, a fully unrolled loop (unroll = depth) among them.
      layers = int(name.removeprefix("depth_"))
      assert f"scanned_unroll{layers}" in depth["step_ratio_over_unrolled"]


def _check_batching(data):
  for counts in data["counts"].values():  # padding to the union of shapes adds tokens
    assert counts["mixed_tokens_computed"] > counts["useful_tokens_per_round"]


def _check_moe_vs_dense(data):
  for rows in data["results"].values():
    assert rows["dense"]["ratio_to_dense"] == 1.0
    assert {"expert_choice_e4", "expert_choice_e16", "top2_e4"} <= set(rows)


def _check_bare_loop(data):
  for name, case in data.items():
    if not name.startswith("steps_"):
      continue
    runs = case["runs"]
    rounds = data["rounds"][name.removeprefix("steps_")]
    assert len(runs["imp"]) == len(runs["bare"]) == len(runs["bare_unrolled"]) == rounds
    for imp_run, bare_run, unrolled in zip(runs["imp"], runs["bare"], runs["bare_unrolled"],
                                           strict=True):
      assert imp_run["steps"] == bare_run["steps"] == int(name.removeprefix("steps_"))
      # The same seeded AGD draw on every side: the same steps of each task.
      nonzero = lambda counts: {k: v for k, v in counts.items() if v}  # noqa: E731
      assert nonzero(imp_run["task_steps"]) == nonzero(bare_run["task_steps"])
      assert nonzero(unrolled["task_steps"]) == nonzero(bare_run["task_steps"])
      assert 0.0 <= imp_run["accuracy"] <= 1.0 and 0.0 <= bare_run["accuracy"] <= 1.0
    for key in ("wall", "user", "system", "wall_vs_unrolled"):
      assert 0.0 < case[f"{key}_ratio"]["median"] < float("inf")


def _check_bucket_input(data):
  assert data["bucket"].startswith("fake-gcs-server")  # the bucket side read an emulator bucket
  for stats in (data["data_wait_over_step_time"], data["ms_per_step"]):
    assert set(stats) == {"disk", "bucket"}


CHECKS = {"compile_cost": _check_compile_cost, "bucket_input": _check_bucket_input,
          "remat": _check_remat, "scan_layers": _check_scan_layers, "bare_loop": _check_bare_loop,
          "batching": _check_batching, "moe_vs_dense": _check_moe_vs_dense}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_benchmark_runs_in_quick_mode(name, tmp_path):
  proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--only", name,
                         f"--out-dir={tmp_path}"], cwd=ROOT, env=ENV, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  table = (tmp_path / "latest.md").read_text()
  assert f"--only {name}" in table and f"| {name} |" in table
  record = json.loads((tmp_path / f"{name}.json").read_text())
  assert record["rows"] and record["quick"] and record["machine"]
  CHECKS.get(name, lambda data: None)(record["data"])
