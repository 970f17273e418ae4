"""Sharded training on simulated 8-device CPU meshes matches one device; bad meshes fail.

Each multi-device run is a subprocess: XLA fixes the number of host devices at start-up.
"""

import json
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
from imp.config.digits import get_config
from imp import experiment
config = get_config("smoke")
config.total_steps, config.eval_every, config.log_every = 6, 0, 3
config.model.depth, config.model.width, config.model.mlp_dim = 1, 32, 64
config.evals, config.checkpoint_best_metric = {}, None
config.mesh = dict(data=-1)
experiment.train(config, sys.argv[1])
exp = experiment.build(config, sys.argv[1])
state, _ = exp.checkpointer.restore(exp.state)
exp.checkpointer.close()
leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
np.savez(sys.argv[1] + "/params.npz", **{jax.tree_util.keystr(p): v for p, v in leaves})
print("devices", jax.device_count())
"""


def _run(script, devices, *args):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"devices {devices}" in proc.stdout
  return proc.stdout


def _train(workdir, devices):
  _run(TRAIN, devices, workdir)


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


# A small expert-choice MoE (4 experts, einsum dispatch: the all-to-all form) on two tasks,
# trained for 4 steps on each mesh of argv[2]; writes per-step losses, the final parameters
# and where every parameter and optimizer-state leaf lives after a restore.
TRAIN_MOE = """
import json, sys, jax, numpy as np
from imp.config.digits import get_config
from imp import experiment
out, meshes = sys.argv[1], json.loads(sys.argv[2])
for i, (mesh, rules) in enumerate(meshes):
  config = get_config("smoke")
  config.total_steps, config.eval_every, config.log_every = 4, 0, 1
  config.model.update(dict(depth=2, width=32, mlp_dim=64))
  config.model.moe = dict(num_experts=4, every=2, dispatch="einsum")
  config.evals, config.checkpoint_best_metric = {}, None
  for task in config.tasks.values():
    task.variants = dict(base=task.variants.base.to_dict())
  config.mesh, config.mesh_rules = mesh, rules
  workdir = f"{out}/{i}"
  experiment.train(config, workdir)
  exp = experiment.build(config, workdir)
  state, _ = exp.checkpointer.restore(exp.state, shardings=exp.shardings)
  exp.checkpointer.close()
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  placement = {jax.tree_util.keystr(p): [str(x.sharding.spec), list(x.shape),
               list(x.addressable_shards[0].data.shape)] for p, x in leaves}
  params = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
  np.savez(f"{workdir}/params.npz", **{jax.tree_util.keystr(p): v for p, v in params})
  with open(f"{workdir}/placement.json", "w") as f:
    json.dump(placement, f)
print("devices", jax.device_count())
"""

MESHES = [({"data": 8}, "fsdp"), ({"data": 2, "expert": 4}, "fsdp"),
          ({"fsdp": 2, "expert": 2, "data": 2}, "fsdp")]


def _losses(workdir):
  losses = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    for key, value in record.items():
      if key.endswith("/loss"):
        losses[(record["step"], key)] = value
  return losses


def _sharded(placement, suffix):
  """(spec, shape, shard shape) of the leaves whose path ends with `suffix`."""
  found = [v for k, v in placement.items() if k.endswith(suffix)]
  assert found, suffix
  return found


@pytest.mark.slow
def test_moe_on_sharded_meshes_matches_one_device(tmp_path):
  _run(TRAIN_MOE, 1, tmp_path / "one", json.dumps([({"data": 1}, "fsdp")]))
  _run(TRAIN_MOE, 8, tmp_path / "eight", json.dumps(MESHES))
  one_loss, one = _losses(tmp_path / "one" / "0"), _params(tmp_path / "one" / "0")
  assert len(one_loss) == 4
  for i, (mesh, _) in enumerate(MESHES):
    workdir = tmp_path / "eight" / str(i)
    losses, params = _losses(workdir), _params(workdir)
    assert losses.keys() == one_loss.keys(), mesh
    for key, value in one_loss.items():
      assert losses[key] == pytest.approx(value, rel=1e-5), (mesh, key)
    assert params.keys() == one.keys()
    for name in one:
      # atol as in the data-parallel test: rounding-noise gradients scaled up by Adam.
      np.testing.assert_allclose(params[name], one[name], rtol=1e-5, atol=1e-5,
                                 err_msg=f"{mesh} {name}")

  placement = [json.loads((tmp_path / "eight" / str(i) / "placement.json").read_text())
               for i in range(len(MESHES))]
  # 8 x data: everything replicated (each shard is the whole array).
  assert all(shape == shard for _, shape, shard in placement[0].values())
  # 2 data x 4 expert: expert weights, and Adam's moments of them, split 4 ways on experts.
  for spec, shape, shard in _sharded(placement[1], "['experts']['wi']"):
    assert "expert" in spec and shard[1] == shape[1] // 4, (spec, shape, shard)
  assert len(_sharded(placement[1], "['experts']['wi']")) == 3  # params, mu, nu
  # 2 fsdp x 2 expert x 2 data: experts split on experts and width; dense kernels on width.
  for spec, shape, shard in _sharded(placement[2], "['experts']['wo']"):
    assert shard == [shape[0], shape[1] // 2, shape[2], shape[3] // 2], (spec, shape, shard)
  for spec, shape, shard in _sharded(placement[2], "['query']['kernel']"):
    assert "fsdp" in spec and shard[1] == shape[1] // 2, (spec, shape, shard)


# The MoE step of a small IMP-MoE-B-shaped config compiled for a mesh (no data, no training).
COMPILE_MOE = """
import json, sys, jax
from experiments.imp_moe_b import get_config
from imp.plan import dry_run
config = get_config()
config.model.update(dict(width=64, depth=2, num_heads=4, mlp_dim=128, embed_dim=32,
                         remat_policy="none"))
config.model.moe.num_experts = 4  # dispatch="einsum", as the paper configs
config.tasks = {"imagenet_cls": config.tasks.imagenet_cls.to_dict()}
config.tasks.imagenet_cls.variants = dict(base=dict(batch_size=16, resolution=32))
out = {}
for name, mesh in (("expert", dict(data=2, expert=4)), ("data", dict(data=8))):
  config.mesh = mesh
  reports, facts = dry_run.plan(config)
  out[name] = dict(collectives=reports[0].collectives, lines=dry_run.report_lines(reports, facts))
print(json.dumps(out))
print("devices", jax.device_count())
"""


@pytest.mark.slow
def test_expert_parallel_moe_step_lowers_to_all_to_all():
  out = json.loads(_run(COMPILE_MOE, 8).splitlines()[-2])
  # Tokens arrive split over (data, expert) by example; the dispatch buffers [G, E, C, D] are
  # split over data by group and over expert by expert, so XLA moves them with all-to-all
  # (forward dispatch and combine, and both again in the backward pass).
  assert out["expert"]["collectives"]["all-to-all"] >= 2, out["expert"]
  # Pure data parallelism needs no all-to-all: only the gradient all-reduce.
  assert out["data"]["collectives"]["all-to-all"] == 0, out["data"]
  assert out["data"]["collectives"]["all-reduce"] >= 1, out["data"]
  assert "imagenet_cls/base" in out["expert"]["lines"][3]
