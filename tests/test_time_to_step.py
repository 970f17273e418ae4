"""Time to step 1 and time per step: the user's persistent compilation cache (a new workdir
loads what an earlier run compiled, and the programs table says which), XLA's C++ messages kept
out of the console and attributed to the program whose compile wrote them, the profiler
window, per-program throughput and the auto attention choice."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import jax
import pytest
from conftest import tiny_digits_config

from imp.plan import xla_log
from imp.run.restore import cache_dir_of, default_cache_dir

ROOT = Path(__file__).resolve().parents[1]


def test_the_cache_is_the_users_unless_set(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  config = tiny_digits_config()
  assert cache_dir_of(config) == str(tmp_path / "xdg" / "imp" / "jax") == default_cache_dir()
  monkeypatch.delenv("XDG_CACHE_HOME")
  assert cache_dir_of(config) == os.path.expanduser("~/.cache/imp/jax")
  config.compilation_cache_dir = "off"
  assert cache_dir_of(config) is None
  config.compilation_cache_dir = str(tmp_path / "mine")
  assert cache_dir_of(config) == str(tmp_path / "mine")
  config.compilation_cache_dir = "ftp://host/cache"
  with pytest.raises(ValueError, match=r"config.compilation_cache_dir='ftp://host/cache': "
                     r"unknown scheme"):
    cache_dir_of(config)


def test_a_new_workdir_loads_the_programs_an_earlier_run_compiled(monkeypatch, tmp_path):
  """Two runs of one config in two workdirs, the default cache under a fresh XDG_CACHE_HOME:
  the first compiles every program, the second loads every one (JAX's cache_hits event in the
  compiling thread). Every compile is stored (min compile time 0): a fast machine's sub-second
  compiles would otherwise not be, and the second run would compile them again.
  The second run also profiles its step 1 (config.profile): a trace for TensorBoard's profile
  plugin (xplane.pb) and one for Perfetto."""
  from imp.train import loop
  from imp.train.profile_window import ProfileWindow

  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  previous = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  try:
    for name, profile in (("first", {}), ("second", dict(start_step=1, num_steps=1))):
      config = tiny_digits_config(total_steps=3, checkpoint_best_metric=None, profile=profile)
      del config.tasks["digits_label_nce"]
      loop.train(config, tmp_path / name)
  finally:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", previous)
  first, second = ({p["name"]: p for p in json.loads(
      (tmp_path / name / "programs.json").read_text())["programs"]} for name in ("first", "second"))
  assert len(first) == 2 and first.keys() == second.keys()
  assert {p["source"] for p in first.values()} == {"compiled"}
  assert {p["source"] for p in second.values()} == {"cache"}
  assert any((tmp_path / "xdg" / "imp" / "jax").iterdir())
  # Per-program throughput at each log interval and over the run.
  summary = json.loads((tmp_path / "second" / "summary.json").read_text())
  assert set(summary["throughput"]) <= {"digits_cls/base", "digits_cls/hires"}
  for figures in summary["throughput"].values():
    assert figures["ms_per_step"] > 0 and figures["tflops_per_device"] > 0
    assert "mfu" not in figures  # a CPU: no peak in the table
  records = [json.loads(line) for line in (tmp_path / "second" / "metrics.jsonl").open()]
  assert any(k.endswith("/examples_per_s") for r in records if r["kind"] == "throughput"
             for k in r)
  assert not (tmp_path / "first" / "profile").exists()
  traces = tmp_path / "second" / "profile" / "plugins" / "profile"
  assert len(list(traces.glob("*/*.xplane.pb"))) == 1 and list(traces.glob("*/*.trace.json.gz"))
  with pytest.raises(ValueError, match=r"config.profile.num_steps=0 must be an integer of at "
                     r"least 1"):
    ProfileWindow(dict(start_step=2, num_steps=0), tmp_path)
  print("compile seconds, second run / first:",
        sum(p["compile_seconds"] for p in second.values())
        / sum(p["compile_seconds"] for p in first.values()))


def test_capture_attributes_lines_to_the_thread_that_wrote_them(tmp_path):
  """Two threads write absl-prefixed lines to fd 2 at once; each span keeps its own."""
  barrier = threading.Barrier(2)
  found = {}

  def write(name, remats):
    with capture.span() as lines:
      barrier.wait()
      tid = threading.get_native_id()
      for i in range(3):
        text = f"W1206 03:34:56.456164 {tid:>8} spmd_partitioner.cc:666] [SPMD] " + (
            f"{xla_log.REMAT}. {name} {i}\n" if i < remats else f"other {name} {i}\n")
        os.write(2, text.encode())
      barrier.wait()
    found[name] = lines

  with xla_log.Capture(tmp_path / "xla.log") as capture:
    threads = [threading.Thread(target=write, args=a) for a in (("a", 1), ("b", 3))]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
  assert (found["a"].involuntary_remats, found["b"].involuntary_remats) == (1, 3)
  assert found["a"].warnings == found["b"].warnings == 3
  assert all(" a " in line for line in found["a"].lines)
  assert len((tmp_path / "xla.log").read_text().splitlines()) == 6


REMAT = """
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from imp.plan import xla_log
mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))
def f(x):  # [6, 256] split over b then a, reshaped: XLA replicates it whole to reshard
  y = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(("a", "b"), None)))
  return jax.lax.with_sharding_constraint(y.reshape(2, 3, 256) * 2,
                                          NamedSharding(mesh, P(None, "a", "b")))
with xla_log.Capture("xla.log") as capture, capture.span() as lines:
  jax.jit(f, in_shardings=NamedSharding(mesh, P("b", "a"))).trace(
      jax.ShapeDtypeStruct((6, 256), np.float32)).lower().compile()
print("remats", lines.involuntary_remats)
"""


def test_an_involuntary_rematerialization_is_counted_not_printed(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, "-c", REMAT], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  count = int(proc.stdout.split("remats")[1])
  assert count >= 1 and xla_log.REMAT not in proc.stderr
  assert xla_log.REMAT in (tmp_path / "xla.log").read_text()



# IMP-MoE-L's image-text NCE at a tiny width on its own mesh (fsdp 2 x expert 4): the text
# tokens came out of the width-split embedding table split over the width, and XLA replicated
# the encoder backward loop's batch-split gradients whole (2 remats) until the table was
# gathered before the lookup (imp.model.embedders.TextEmbedder).
TEXT_PASS = """
import sys
from imp.config import files
from imp.plan import dry_run
config = files.from_file(sys.argv[1])
task = config.tasks.laion_nce.to_dict()
task["variants"] = {"base": dict(batch_size=8, resolution=32, text_length=16)}
config.tasks = {"laion_nce": task}
config.model.update(width=64, depth=2, num_heads=2, mlp_dim=128)
config.model.moe.num_experts = 4
config.compilation_cache_dir = "off"
_, facts = dry_run.plan(config, workers=1, xla_log_path="xla.log")
(program,) = facts["programs"]
print("mesh", facts["mesh"], "remats", program.involuntary_remats)
"""


def test_the_fsdp_text_pass_compiles_without_involuntary_rematerialization(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  config = str(ROOT / "experiments" / "imp_moe_l.py")
  proc = subprocess.run([sys.executable, "-c", TEXT_PASS, config], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "'fsdp': 2, 'expert': 4" in proc.stdout  # the mesh that showed them
  assert proc.stdout.split("remats")[1].strip() == "0", proc.stdout


def test_throughput_figures_from_a_hand_timed_step():
  """A program of 2,000 GFLOPs per device and 256 examples, 4 steps in 2 s on an H100 SXM
  (989.4 TFLOP/s): 500 ms/step, 512 examples/s, 4 TFLOP/s, MFU 4/989.4."""
  from imp.train.throughput import Throughput, peak_flops

  assert peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12 and peak_flops("cpu") is None
  assert peak_flops("TPU v5 lite") == 197e12
  figures = Throughput({"a": 2000.0}, {"a": 256}, "NVIDIA H100 80GB HBM3").figures("a", 4, 2.0)
  assert figures == {"ms_per_step": 500.0, "examples_per_s": 512.0, "tflops_per_device": 4.0,
                     "mfu": round(4 / 989.4, 4)}


def test_auto_attention_is_xla_without_a_gpu():
  from imp.model import ModelConfig

  assert jax.default_backend() != "gpu" or pytest.skip("a GPU: auto may pick cuDNN")
  config = ModelConfig.from_config(dict(attention_impl="auto", dtype="bfloat16"))
  assert config.attention_impl == "xla"
  with pytest.raises(ValueError, match=r"model.attention_impl='flash' is not known; valid: "
                     r"'auto', 'xla', 'cudnn'"):
    ModelConfig.from_config(dict(attention_impl="flash"))


def test_a_dry_run_divisor_that_breaks_a_batch_is_refused_naming_one_that_works():
  """Batches 64 and 16 on one device: 32 leaves 16 / 32 rows; 16 is the largest that works."""
  from imp.plan import dry_run

  config = tiny_digits_config()
  config.dry_run = dict(datasets=dict(digits=dict(train_examples=1437, num_classes=10,
                                                  modalities=("image", "text"))))
  with pytest.raises(dry_run.DryRunError, match=r"--dry_run_batch_divisor=32: tasks.digits_cls"
                     r".variants.hires.batch_size=16 does not divide into a multiple of the 1 "
                     r"data-parallel devices of config.mesh; the largest divisor that keeps "
                     r"every batch split is 16."):
    dry_run.plan(config, batch_divisor=32)
