"""Data parallelism on a simulated 8-device CPU mesh matches one device; bad meshes fail."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imp.parallel.mesh import mesh_shape

ROOT = Path(__file__).resolve().parents[1]

TRAIN = """
import jax, numpy as np, sys
from imp.configs.digits import get_config
from imp.train import loop
config = get_config("smoke")
config.total_steps, config.eval_every, config.log_every = 6, 0, 3
config.model.depth, config.model.width, config.model.mlp_dim = 1, 32, 64
config.evals, config.checkpoint_best_metric = {}, None
config.mesh = dict(data=-1)
loop.train(config, sys.argv[1])
exp = loop.build(config, sys.argv[1])
state, _ = exp.checkpointer.restore(exp.state)
exp.checkpointer.close()
leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
np.savez(sys.argv[1] + "/params.npz", **{jax.tree_util.keystr(p): v for p, v in leaves})
print("devices", jax.device_count())
"""


def _train(workdir, devices):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  proc = subprocess.run([sys.executable, "-c", TRAIN, str(workdir)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"devices {devices}" in proc.stdout


def _params(workdir):
  with np.load(workdir / "params.npz") as data:
    return dict(data)


@pytest.mark.slow
def test_eight_device_data_parallel_matches_one_device(tmp_path):
  _train(tmp_path / "one", 1)
  _train(tmp_path / "eight", 8)
  one, eight = _params(tmp_path / "one"), _params(tmp_path / "eight")
  assert one.keys() == eight.keys() and len(one) > 10
  for name in one:
    # atol: the key bias gets only rounding-noise gradients (softmax ignores a per-query shift
    # of the logits), which Adam scales up to ~1e-6 values that differ with reduction order.
    np.testing.assert_allclose(one[name], eight[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_mesh_shape_resolution_and_errors():
  assert mesh_shape({"data": -1}, 8) == {"data": 8, "fsdp": 1, "expert": 1, "tensor": 1}
  assert mesh_shape({"data": 2, "expert": -1}, 8)["expert"] == 4
  with pytest.raises(ValueError, match=r"config.mesh=\{'data': 3\} has 3 devices, but this run "
                                       r"has 8"):
    mesh_shape({"data": 3}, 8)
  with pytest.raises(ValueError, match=r"config.mesh.model is not a mesh axis; valid: data, "
                                       r"fsdp, expert, tensor"):
    mesh_shape({"model": 2}, 8)
  with pytest.raises(ValueError, match=r"do not divide the 8 devices"):
    mesh_shape({"data": -1, "expert": 3}, 8)
