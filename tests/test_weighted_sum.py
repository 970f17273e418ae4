"""The weighted-sum schedule (M3SAT): every task's batch, one update on sum_i w_i L_i."""

import json

import jax
import numpy as np
import optax
import pytest
from conftest import tiny_digits_config

from imp import experiment
from imp.model import IMPModel, ModelConfig
from imp.objectives import get_objective
from imp.step.state import init_state
from imp.step.step import StepSpec, make_weighted_sum_step

TINY = ModelConfig(width=16, depth=1, num_heads=2, mlp_dim=32, embed_dim=8, text_max_length=8)
SPECS = (StepSpec("softmax", "a", ("image",), loss_weight=0.9),
         StepSpec("nce", "a", ("image", "text"), loss_weight=0.3,
                  args=(("positives", "same_label"),)))


def _setup():
  model = IMPModel(TINY, heads=(("a", 4), ("unused", 5)),
                   modalities=("image", "text"))
  # SGD at learning rate 1: the parameter change is minus the gradient itself.
  tx = optax.sgd(1.0)
  state = init_state(model, tx, seed=0)
  return model, tx, state


def _batches(seed=0):
  rng = np.random.default_rng(seed)
  image = lambda n, r: rng.normal(size=(n, r, r, 1)).astype(np.float32)  # noqa: E731
  return ({"image": image(4, 8), "label": rng.integers(0, 4, 4).astype(np.int32)},
          {"image": image(3, 16), "text": rng.integers(2, 200, (3, 6)).astype(np.int32),
           "label": rng.integers(0, 4, 3).astype(np.int32)})


def _reference_grad(model, params, spec, batch):
  """w * grad of the task's objective loss, straight from the model and the objective."""

  def loss(p):
    out = model.apply({"params": p}, batch, spec.request, train=True,
                      rngs={"droptoken": jax.random.PRNGKey(0), "router": jax.random.PRNGKey(1)})
    value, _ = get_objective(spec.objective).loss(out, batch, head=spec.head,
                                                  modalities=spec.modalities, **dict(spec.args))
    return spec.loss_weight * value, value

  grads, value = jax.jit(jax.grad(loss, has_aux=True))(params)
  return jax.tree.map(np.asarray, grads), float(value)


def test_weighted_sum_step_applies_the_weighted_sum_of_task_gradients():
  model, tx, state = _setup()
  batches = _batches()
  step = jax.jit(make_weighted_sum_step(model, tx, SPECS, state, batches))
  new_state, metrics = step(state, batches)
  per_task = [_reference_grad(model, state.params, spec, batch)
              for spec, batch in zip(SPECS, batches, strict=True)]
  losses = [loss for _, loss in per_task]
  reference = jax.tree.map(lambda *g: sum(g), *[grads for grads, _ in per_task])
  change = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), state.params,
                        new_state.params)
  for x, y in zip(jax.tree.leaves(change), jax.tree.leaves(reference), strict=True):
    np.testing.assert_allclose(x, y, atol=2e-6, rtol=1e-4)
  assert float(optax.tree.norm(reference)) > 0
  # The weights matter: an unweighted sum is a different update.
  unweighted = jax.tree.map(
      lambda *g: sum(x / s.loss_weight for x, s in zip(g, SPECS, strict=True)),
      *[grads for grads, _ in per_task])
  assert not np.allclose(change["classifiers_a"]["kernel"], unweighted["classifiers_a"]["kernel"])
  # A head no task reads does not move; every task logs its own unweighted loss.
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params["classifiers_unused"]),
               jax.device_get(new_state.params["classifiers_unused"]))
  assert len(metrics) == 2 and int(new_state.step) == 1
  np.testing.assert_allclose([float(m["loss"]) for m in metrics], losses, rtol=1e-5)
  expected_total = sum(s.loss_weight * loss for s, loss in zip(SPECS, losses, strict=True))
  for m in metrics:
    assert float(m["nonfinite"]) == 0.0
    np.testing.assert_allclose(float(m["weighted_sum_loss"]), expected_total, rtol=1e-5)
    np.testing.assert_allclose(float(m["grad_norm"]), float(optax.tree.norm(reference)),
                               rtol=1e-4)


def test_weighted_sum_step_skips_a_nonfinite_update():
  model, tx, state = _setup()
  batches = list(_batches())
  batches[1] = dict(batches[1], image=batches[1]["image"] * np.nan)  # one task is poisoned
  step = jax.jit(make_weighted_sum_step(model, tx, SPECS, state, batches))
  new_state, metrics = step(state, tuple(batches))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
               jax.device_get(new_state.params))
  assert all(float(m["nonfinite"]) == 1.0 for m in metrics)
  assert int(new_state.step) == 1


def _small(total_steps=6, schedule="weighted_sum"):
  return tiny_digits_config(total_steps, checkpoint_every=3, **{"sampling.schedule": schedule})


@pytest.mark.slow  # about 2 minutes on the shared 2-core machine
def test_loop_trains_every_task_each_step_and_resumes_bit_identically(tmp_path):
  straight = experiment.train(_small(), tmp_path / "straight")
  names = [t.name for t in experiment.build(_small(), tmp_path / "names").registry]
  assert len(names) == 4
  assert straight["task_steps"] == {n: 6 for n in sorted(names)}
  assert straight["steps"] == 6 and straight["nonfinite_skipped_steps"] == 0
  records = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text()
             .splitlines() if json.loads(x)["kind"] == "train"]
  # One program for the tuple of tasks (and the two eval programs), all compiled before step
  # 1: every step is a hit.
  assert (records[-1]["step_cache/size"], records[-1]["step_cache/hits"]) == (3, 6)
  assert straight["step_cache"]["xla_compiles_after_warmup"] == 0
  for name in names:  # per-task curves exist, one per task, every logged step
    assert all(np.isfinite(r[f"{name}/loss"]) for r in records)
  assert len({r[f"{names[0]}/loss"] for r in records}) == len(records)

  first = experiment.train(_small(), tmp_path / "resumed", stop_after=4)
  assert first["steps"] == 4 and first["stopped_early"]
  second = experiment.train(_small(), tmp_path / "resumed")
  assert second["steps_this_run"] == 2 and second["task_steps"] == {n: 2 for n in sorted(names)}
  params = []
  for workdir in ("straight", "resumed"):
    exp = experiment.build(_small(), tmp_path / workdir)
    state, _ = exp.checkpointer.restore(exp.state)
    exp.checkpointer.close()
    params.append(jax.device_get(state.params))
  jax.tree.map(np.testing.assert_array_equal, *params)


def test_unknown_schedule_names_the_key_and_the_valid_values(tmp_path):
  with pytest.raises(experiment.ConfigError,
                     match=r"config.sampling.schedule='round_robin'; valid: agd, weighted_sum"):
    experiment.build(_small(schedule="round_robin"), tmp_path)


@pytest.mark.slow  # about 30 s: compiles the M3SAT step
def test_dry_run_compiles_the_weighted_sum_program():
  from experiments.m3sat import get_config as m3sat_config
  from imp.plan import dry_run

  reports, facts = dry_run.plan(m3sat_config("smoke"))
  assert [r.task for r in reports] == ["weighted_sum of 2 tasks"]
  assert reports[0].batch["av_cls/base/audio"] == (40, 96, 32, 1)
  assert reports[0].batch["images_cls/base/image"] == (32, 8, 8, 1)
  assert facts["compiles"]["misses"] == 1
  assert "weighted_sum of 2 tasks" in "\n".join(dry_run.report_lines(reports, facts))
