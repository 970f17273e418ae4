"""The AGD step: only what a task reads moves; the step cache compiles each signature once."""

import jax
import numpy as np
import optax
import pytest

from imp.model import IMPModel, ModelConfig
from imp.objectives import get_objective
from imp.plan.step_cache import StepCache, covered_seconds, signature, xla_compiles
from imp.step.state import init_state, logical_axes, make_optimizer
from imp.step.step import StepSpec, make_train_step, params_read_by

CFG = ModelConfig(width=16, depth=2, num_heads=2, mlp_dim=32, embed_dim=8, text_max_length=8)


def _setup(optimizer=None):
  model = IMPModel(CFG, heads=(("a", 4), ("b", 3)), modalities=("image", "text"))
  tx = make_optimizer(optimizer or dict(name="adam", learning_rate=1e-2, warmup_steps=0,
                                        schedule="constant"), 100, logical_axes(model))
  return model, tx, init_state(model, tx, seed=0)


def _batch(rng, classes, size=8, text=False, batch=4):
  out = {"image": rng.normal(size=(batch, size, size, 1)).astype(np.float32),
         "label": rng.integers(0, classes, batch).astype(np.int32)}
  if text:
    out["text"] = rng.integers(2, 200, (batch, 6)).astype(np.int32)
  return out


def _step(model, tx, state, spec, batch, cache=None):
  cache = StepCache() if cache is None else cache
  program = cache.compiled(("train", spec), lambda: make_train_step(model, tx, spec, state, batch),
                           (state, batch))
  return program(state, batch)


def test_params_read_by_marks_only_the_tasks_head():
  model, _, state = _setup()
  spec = StepSpec("softmax", "a", ("image",))
  batch = _batch(np.random.default_rng(0), 4)

  def loss(params, batch, rng):
    out = model.apply({"params": params}, batch, spec.request, rngs={"droptoken": rng})
    return out["logits/a"].sum()

  read = params_read_by(loss, state.params, batch, state.rng)
  assert all(jax.tree.leaves(read["classifiers_a"]))
  assert not any(jax.tree.leaves(read["classifiers_b"]))
  assert not any(jax.tree.leaves(read["embedders_text"]))
  assert all(jax.tree.leaves(read["encoder"]))


@pytest.mark.parametrize("optimizer", [
    dict(name="adam", learning_rate=1e-2, warmup_steps=0, schedule="constant"),
    dict(name="adamw", learning_rate=1e-2, warmup_steps=0, weight_decay=0.1, grad_clip_norm=1.0),
])
def test_untouched_head_stays_bit_identical_despite_momentum(optimizer):
  model, tx, state = _setup(optimizer)
  rng = np.random.default_rng(0)
  cache = StepCache()  # one program per task, as in a run
  spec_a = StepSpec("softmax", "a", ("image",))
  spec_b = StepSpec("softmax", "b", ("image",))
  spec_nce = StepSpec("nce", "a", ("image", "text"))
  # Give head b momentum first, so plain Adam would keep moving it.
  for _ in range(2):
    state, _ = _step(model, tx, state, spec_b, _batch(rng, 3), cache)
  head_b = jax.device_get(state.params["classifiers_b"])
  text = jax.device_get(state.params["embedders_text"])
  mu_b = jax.device_get(optax.tree_utils.tree_get(state.opt_state, "mu")["classifiers_b"])
  for _ in range(3):
    state, metrics = _step(model, tx, state, spec_a, _batch(rng, 4), cache)
  assert np.isfinite(metrics["loss"])
  jax.tree.map(np.testing.assert_array_equal, head_b, jax.device_get(state.params["classifiers_b"]))
  jax.tree.map(np.testing.assert_array_equal, mu_b, jax.device_get(
      optax.tree_utils.tree_get(state.opt_state, "mu")["classifiers_b"]))
  jax.tree.map(np.testing.assert_array_equal, text, jax.device_get(state.params["embedders_text"]))
  # The NCE step does read text: the text embedder moves, head b still does not.
  state, _ = _step(model, tx, state, spec_nce, _batch(rng, 4, text=True), cache)
  assert not np.array_equal(text["token"]["embedding"],
                            state.params["embedders_text"]["token"]["embedding"])
  jax.tree.map(np.testing.assert_array_equal, head_b, jax.device_get(state.params["classifiers_b"]))


def test_sum_objective_adds_its_parts():
  model, tx, state = _setup()
  batch = _batch(np.random.default_rng(1), 4, text=True)
  spec = StepSpec("sum", "a", ("image", "text"),
                  args=(("objectives", ("softmax", "nce")), ("weights", (1.0, 0.5))))
  _, metrics = _step(model, tx, state, spec, batch)
  np.testing.assert_allclose(metrics["loss"],
                             metrics["softmax_loss"] + 0.5 * metrics["nce_loss"], rtol=1e-5)
  # The first step at zero-initialised heads: softmax over 4 classes gives ln 4.
  np.testing.assert_allclose(metrics["softmax_loss"], np.log(4), rtol=1e-5)


def test_objective_argument_errors():
  with pytest.raises(ValueError, match=r"tasks.t.args.smoothing is not an argument of objective "
                                       r"'softmax'; valid: label_smoothing"):
    get_objective("softmax").check_args("t", {"smoothing": 0.1}, ("image",))
  with pytest.raises(ValueError, match=r"objective 'nce' needs at least 2"):
    get_objective("nce").check_args("t", {}, ("image",))
  with pytest.raises(ValueError, match=r"tasks.t.args.objectives='bce' is not a known objective"):
    get_objective("sum").check_args("t", {"objectives": ("softmax", "bce")}, ("image", "text"))


def test_step_cache_compiles_each_signature_once():
  model, tx, state = _setup()
  rng = np.random.default_rng(2)
  specs = [(StepSpec("softmax", "a", ("image",)), dict(classes=4, size=8)),
           (StepSpec("softmax", "a", ("image",)), dict(classes=4, size=16)),
           (StepSpec("softmax", "b", ("image",)), dict(classes=3, size=8)),
           (StepSpec("nce", "a", ("image", "text")), dict(classes=4, size=8, text=True))]
  cache = StepCache()
  for spec, kw in specs:  # warm-up: one compile per signature
    state, _ = _step(model, tx, state, spec, _batch(rng, **kw), cache)
  assert (len(cache), cache.misses, cache.hits) == (4, 4, 0)
  before = xla_compiles()
  for i in range(12):
    spec, kw = specs[i % 4]
    state, metrics = _step(model, tx, state, spec, _batch(rng, **kw), cache)
  jax.block_until_ready(metrics)
  assert (len(cache), cache.misses, cache.hits) == (4, 4, 12)
  assert xla_compiles() == before  # nothing compiled behind the cache's back
  assert cache.compile_seconds > 0 and cache.stats(wall_seconds=100.0)["compile_share"] > 0


def test_signature_distinguishes_shapes_and_dtypes():
  a = {"image": np.zeros((2, 8, 8, 1), np.float32), "label": np.zeros(2, np.int32)}
  b = {"image": np.zeros((2, 16, 16, 1), np.float32), "label": np.zeros(2, np.int32)}
  c = {"image": np.zeros((2, 8, 8, 1), np.float16), "label": np.zeros(2, np.int32)}
  assert signature(a) == signature(dict(a)) != signature(b) != signature(c) != signature(a)


def test_xla_compile_counter_rises_on_a_real_compile():
  """The witness behind `xla_compiles_after_warmup == 0` counts: a fresh jitted function (a
  constant no earlier program has) compiles once, and running it again compiles nothing."""
  offset = float(np.random.default_rng().integers(1, 2**30))  # a program no cache holds
  fresh = jax.jit(lambda x: x * 3.0 + offset)
  x = np.ones((5, 7), np.float32)
  before = xla_compiles()
  jax.block_until_ready(fresh(x))
  after_first = xla_compiles()
  assert after_first > before
  jax.block_until_ready(fresh(x))
  assert xla_compiles() == after_first  # served by jit's own cache
  jax.block_until_ready(fresh(np.ones((6, 7), np.float32)))  # a new shape compiles again
  assert xla_compiles() > after_first
  # A StepCache miss is a real compile too, and its hit is not.
  cache = StepCache()
  start = xla_compiles()
  program = cache.compiled("fresh", lambda: lambda y: y - offset, (x,))
  assert xla_compiles() == start + 1 and cache.misses == 1
  cache.compiled("fresh", lambda: lambda y: y - offset, (x,))
  np.testing.assert_allclose(program(x), x - offset)
  assert xla_compiles() == start + 1 and cache.hits == 1


def test_covered_seconds_counts_overlapping_compiles_once():
  # [0, 2] and [1, 3] overlap on [1, 2]; [5, 6] stands apart; [5.2, 5.5] lies inside it.
  assert covered_seconds([(1.0, 3.0), (5.0, 6.0), (0.0, 2.0), (5.2, 5.5)]) == pytest.approx(4.0)
  assert covered_seconds([(0.0, 1.0), (1.0, 2.0)]) == pytest.approx(2.0)  # touching
  assert covered_seconds([]) == 0.0
