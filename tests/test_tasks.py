"""Task registry validation, sampling weights, and the seeded task schedule."""

import math

import numpy as np
import pytest

from imp.tasks import TaskRegistry, TaskSampler
from imp.tasks.registry import entry_weights

SIZES = {"big": 900, "small": 100}
MODALITIES = {"big": ("image", "text"), "small": ("image",)}
OBJECTIVES = ["softmax", "nce"]


def _tasks(**overrides):
  tasks = {
      "big_cls": dict(dataset="big", objective="softmax", modalities=("image",),
                      variants=dict(base=dict(batch_size=8, resolution=8),
                                    hires=dict(batch_size=2, resolution=16))),
      "small_cls": dict(dataset="small", objective="softmax", modalities=("image",),
                        variants=dict(base=dict(batch_size=8, resolution=8))),
  }
  for key, value in overrides.items():
    entry, field = key.split("__")
    tasks[entry][field] = value
  return tasks


def _registry(tasks=None, weighting="size"):
  return TaskRegistry.from_config(tasks or _tasks(), dataset_sizes=SIZES,
                                  dataset_modalities=MODALITIES, objectives=OBJECTIVES,
                                  weighting=weighting)


def test_variants_become_tasks_with_shared_entry_weight():
  reg = _registry()
  assert reg.names == ("big_cls/base", "big_cls/hires", "small_cls/base")
  # size weighting: big 0.9, small 0.1; big's two variants split its 0.9 equally.
  np.testing.assert_allclose(reg.weights, [0.45, 0.45, 0.1])
  hires = reg.by_name("big_cls/hires").variant
  assert hires.resolution == (16, 16) and hires.batch_size == 2


@pytest.mark.parametrize("weighting, expected", [
    ("sqrt", [30 / 40, 10 / 40]),  # sqrt(900)=30, sqrt(100)=10
    ("uniform", [0.5, 0.5]),
])
def test_weightings(weighting, expected):
  got = entry_weights({"a": 900, "b": 100}, weighting, {})
  np.testing.assert_allclose([got["a"], got["b"]], expected)


def test_explicit_weights_and_missing_weight_error():
  got = entry_weights({"a": 900, "b": 100}, "explicit", {"a": 1.0, "b": 3.0})
  assert math.isclose(got["b"], 0.75)
  with pytest.raises(ValueError, match=r"tasks.b.weight must be a non-negative number"):
    entry_weights({"a": 900, "b": 100}, "explicit", {"a": 1.0})


@pytest.mark.parametrize("override, message", [
    ({"big_cls__dataset": "nope"}, r"tasks.big_cls.dataset='nope' is not a known dataset; "
                                   r"valid datasets: big, small"),
    ({"big_cls__objective": "mse"}, r"tasks.big_cls.objective='mse' is not a known objective; "
                                    r"valid objectives: nce, softmax"),
    ({"big_cls__modalities": ("smell",)}, r"tasks.big_cls.modalities='smell' is not a known "
                                          r"modality; valid modalities: audio, image, text, video"),
    ({"small_cls__modalities": ("image", "text")}, r"tasks.small_cls.modalities: dataset 'small' "
                                                   r"provides \['image'\], not 'text'"),
    ({"big_cls__colour": 1}, r"tasks.big_cls.colour is not a task setting"),
])
def test_registry_rejects_bad_entries(override, message):
  with pytest.raises(ValueError, match=message):
    _registry(_tasks(**override))


def test_bad_variant_settings():
  bad = _tasks(big_cls__variants=dict(base=dict(batch_size=8, resoluton=8)))
  with pytest.raises(ValueError, match=r"tasks.big_cls.variants.base.resoluton is not a variant"):
    _registry(bad)
  bad = _tasks(big_cls__variants=dict(base=dict(batch_size=8, drop_token=1.0)))
  with pytest.raises(ValueError, match=r"drop_token=1.0 must be in \[0, 1\)"):
    _registry(bad)
  with pytest.raises(ValueError, match="sampling.weighting='zipf' is not a known weighting"):
    _registry(weighting="zipf")


def test_sampler_frequencies_match_weights():
  weights = [0.5, 0.3, 0.15, 0.05]
  sampler = TaskSampler(weights, seed=3)
  n = 20000
  counts = np.bincount(sampler.schedule(0, n), minlength=4)
  expected = np.array(weights) * n
  chi2 = ((counts - expected) ** 2 / expected).sum()
  # 3 degrees of freedom: P(chi2 > 16.27) = 0.001, so a correct sampler fails 1 in 1000 seeds;
  # the seed is fixed, so this test is deterministic.
  assert chi2 < 16.27, (counts, expected)


def test_schedule_is_a_pure_function_of_seed_and_step():
  a = TaskSampler([0.2, 0.8], seed=1)
  b = TaskSampler([0.2, 0.8], seed=1)
  assert a.schedule(0, 200).tolist() == b.schedule(0, 200).tolist()
  # Resuming at step 100 gives the same tasks as running straight through.
  assert a.schedule(100, 50).tolist() == a.schedule(0, 150)[100:].tolist()
  assert a.schedule(0, 200).tolist() != TaskSampler([0.2, 0.8], seed=2).schedule(0, 200).tolist()
  # A zero-weight task is never drawn.
  assert 0 not in TaskSampler([0.0, 1.0], seed=0).schedule(0, 500)


def test_sampler_state_round_trip_and_mismatch():
  sampler = TaskSampler([1, 3], seed=7)
  state = sampler.state_dict()
  TaskSampler([0.25, 0.75], seed=7).check_state(state)
  with pytest.raises(ValueError, match="task schedule differs"):
    TaskSampler([0.5, 0.5], seed=7).check_state(state)


def test_loss_weight_zero_is_honoured_and_bad_weights_are_rejected():
  reg = _registry(_tasks(big_cls__loss_weight=0, small_cls__loss_weight=2.5))
  assert [t.loss_weight for t in reg] == [0.0, 0.0, 2.5]
  assert _registry().by_name("small_cls/base").loss_weight == 1.0  # missing -> 1.0
  for bad in (-1.0, "heavy", float("nan"), True):
    with pytest.raises(ValueError, match=r"tasks.big_cls.loss_weight=.* must be a finite number "
                                         r">= 0"):
      _registry(_tasks(big_cls__loss_weight=bad))


def test_loss_weight_zero_takes_the_objective_out_of_the_gradient():
  import jax

  from imp.model import IMPModel, ModelConfig
  from imp.step.state import init_state, make_optimizer
  from imp.step.step import StepSpec, make_loss_fn

  model = IMPModel(ModelConfig(width=16, depth=1, num_heads=2, mlp_dim=32, embed_dim=8),
                   heads=(("a", 4),), modalities=("image",))
  state = init_state(model, make_optimizer(dict(learning_rate=1e-2), 10), seed=0)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(4, 8, 8, 1)).astype(np.float32),
           "label": np.array([0, 1, 2, 3], np.int32)}
  loss_fn = make_loss_fn(model, StepSpec("softmax", "a", ("image",), loss_weight=0.0))
  (total, (loss, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, batch, state.rng)
  assert float(loss) > 0 and float(total) == 0.0  # the objective is still computed
  assert all(not np.any(g) for g in jax.tree.leaves(grads))
