"""The AGD train step: one task's loss, its gradient, and an update of only what it used.

`make_train_step` returns a pure function `(state, batch) -> (state, metrics)` for one
`StepSpec`. Everything static about a step (objective, head, modalities, DropToken rate, loss
weight, objective arguments) is in the spec, so the step cache compiles one program per
(spec, batch signature).

`make_weighted_sum_step` is the schedule `config.sampling.schedule="weighted_sum"` (M3SAT §3):
one batch of EVERY task per step, one update on sum_i loss_weight_i * L_i (+ MoE aux). Its
gradient is the sum of the tasks' gradients (`accumulated_grads`); the NaN/Inf guard and the
masking of unread parameters are the AGD step's (`_guarded_update`).

Only parameters the task reads move (DESIGN: AGD updates). Adam would otherwise move another
dataset's head on every step through its momentum; the set of parameters a task reads is
found once, from the jaxpr of its loss, and the update and optimizer state of every other
parameter are left exactly as they were.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from imp.model import IMPModel, Request
from imp.model.conditions import roles_of, token_attributes
from imp.model.heads import BATCH_STATS, with_running_stats
from imp.objectives import get_objective
from imp.step.state import TrainState
from imp.tasks import Task

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """What a compiled train step depends on besides shapes (hashable)."""

  objective: str
  head: str
  modalities: tuple[str, ...]
  drop_token: float = 0.0
  loss_weight: float = 1.0
  args: tuple[tuple[str, Any], ...] = ()
  task: str | None = None  # the task entry (None: a step no task table knows, id 0)
  task_id: int = 0  # the entry's index in config order: the id task-routed MoEs read

  @classmethod
  def from_task(cls, task: Task, task_id: int = 0) -> StepSpec:
    """The spec of `task`; `task_id` is its entry's index (imp.plan gives every spec its own)."""
    return cls(task.objective, task.dataset, task.modalities, task.variant.drop_token,
               task.loss_weight, task.args, task=task.entry, task_id=task_id)

  @property
  def request(self) -> Request:
    needs = get_objective(self.objective).needs(self.head, self.modalities, **dict(self.args))
    # A classification task over several modalities classifies them encoded together (M3SAT).
    fuse = self.modalities if needs.classify and len(self.modalities) > 1 else ()
    request = Request(classify=needs.classify, embed=needs.embed, fuse=fuse)
    # A training step routes its tokens as its own task (task id, its inputs and targets).
    return request if self.task is None else as_task(request, self.task_id)


def as_task(request: Request, task_id: int) -> Request:
  """`request` with the tokens of every modality routed as task `task_id`, with the attributes
  of the request's own inputs and targets (Uni-Perceiver-MoE eq. 7-9)."""
  inputs, targets = roles_of(request.classify, request.embed, request.features,
                             request.fuse if request.classify else ())
  modalities = dict.fromkeys(request.modalities + request.fuse)
  return dataclasses.replace(request, routes=tuple(
      (m, task_id, token_attributes(inputs, targets, m)) for m in modalities))


def params_read_by(fn: Callable[..., Any], params: Any, *args: Any) -> Any:
  """Bool pytree like `params`: True where `fn(params, *args)` reads the leaf.

  Traces `fn` abstractly (no compute) and marks the parameter inputs that any equation of
  its jaxpr consumes or that it returns.
  """
  closed = jax.make_jaxpr(fn)(params, *args)
  leaves, treedef = jax.tree.flatten(params)
  param_vars = closed.jaxpr.invars[: len(leaves)]
  read = {id(v) for eqn in closed.jaxpr.eqns for v in eqn.invars}
  read |= {id(v) for v in closed.jaxpr.outvars}
  return jax.tree.unflatten(treedef, [id(v) in read for v in param_vars])


def moe_summary(intermediates: dict) -> tuple[jax.Array, Metrics]:
  """Total MoE auxiliary loss and per-modality routing metrics of one forward pass.

  Args:
    intermediates: the model's sown "moe_<modality>" entries, each a tuple of metric dicts
      with a leading [moe_layers] axis.

  Returns:
    (aux loss summed over layers and modalities, {"moe/<modality>/<metric>": [layers, ...]}).
  """
  aux = jnp.zeros((), jnp.float32)
  metrics = {}
  for key, calls in intermediates.items():
    if not key.startswith("moe_"):
      continue
    modality = key[len("moe_"):]
    for name in calls[0]:
      metrics[f"moe/{modality}/{name}"] = jnp.mean(jnp.stack([c[name] for c in calls]), 0)
    aux = aux + sum(c["aux_loss"].sum() for c in calls)
  if metrics:
    metrics["moe/aux_loss"] = aux
  return aux, metrics


def _keep_unread(new: Any, old: Any, read: Any) -> Any:
  """new where read else old; `read` is static, so this costs nothing when compiled."""
  return jax.tree.map(lambda n, o, r: n if r else o, new, old, read)


def make_loss_fn(model: IMPModel, spec: StepSpec) -> Callable[..., tuple[jax.Array, tuple]]:
  """The loss a train step of `spec` differentiates.

  The AGD step differentiates it; the non-AGD baselines (imp/train/baselines.py) and
  imp.analysis.interference reuse it.

  Returns:
    loss_fn(params, batch, rng) -> (weighted loss + MoE aux loss, (objective loss, metrics)).
    With BatchNorm heads, metrics[BATCH_STATS] holds the heads' new running statistics
    (a params-shaped subtree; see imp.model.heads), which the steps write into params.
  """
  objective = get_objective(spec.objective)
  request = spec.request
  args = dict(spec.args)

  def loss_fn(params, batch, rng):
    drop_rng, router_rng = jax.random.split(rng)
    rngs = {"droptoken": drop_rng, "router": router_rng}
    if model.config.stochastic_depth:  # a third stream only when used: old streams unchanged
      rngs["stochastic_depth"] = jax.random.fold_in(rng, 2)
    outputs, state = model.apply(
        {"params": params}, batch, request, train=True, drop_token=spec.drop_token,
        rngs=rngs,
        mutable=["intermediates", BATCH_STATS])
    loss, metrics = objective.loss(outputs, batch, head=spec.head,
                                   modalities=spec.modalities, **args)
    aux, moe_metrics = moe_summary(state.get("intermediates", {}))
    metrics = dict(metrics, **moe_metrics)
    if state.get(BATCH_STATS):
      metrics[BATCH_STATS] = state[BATCH_STATS]
    return loss * spec.loss_weight + aux, (loss, metrics)

  return loss_fn


def accumulated_grads(model: IMPModel, specs: Sequence[StepSpec]) -> Callable[..., Any]:
  """(params, batches, rng) -> (summed gradient, per-task losses [tasks], per-task metrics).

  Each task's gradient is that of its AGD step's loss (weighted, plus MoE aux) on its own
  batch, so the sum is the gradient of sum_i loss_weight_i * L_i + aux; task i draws its
  randomness from fold_in(rng, i). Per-task metrics are each objective's and MoE metrics.
  """
  loss_fns = [make_loss_fn(model, spec) for spec in specs]

  def grads_fn(params, batches: Sequence[Batch], rng):
    if len(batches) != len(loss_fns):
      raise ValueError(f"a summed step got {len(batches)} batches for {len(loss_fns)} tasks.")
    total, losses, metrics = None, [], []
    for i, (loss_fn, batch) in enumerate(zip(loss_fns, batches, strict=True)):
      (_, (loss, task_metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, batch, jax.random.fold_in(rng, i))
      total = grads if total is None else jax.tree.map(jnp.add, total, grads)
      losses.append(loss)
      metrics.append(task_metrics)
    return total, jnp.stack(losses), tuple(metrics)

  return grads_fn


def _abstract(tree: Any) -> Any:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _read_mask(loss_fn: Callable[..., Any], state: TrainState, batch: Batch) -> Any:
  """Which parameters `loss_fn(params, batch, rng)` reads (bool pytree; traced, not run)."""
  return params_read_by(lambda p, b, r: loss_fn(p, b, r)[0], _abstract(state.params),
                        _abstract(batch), _abstract(state.rng))


def _guarded_update(tx: optax.GradientTransformation, state: TrainState, grads: Any,
                    loss: jax.Array, read_mask: Any) -> tuple[TrainState, jax.Array, jax.Array]:
  """One optimizer update of the parameters in `read_mask`, skipped when non-finite.

  Returns:
    (new state, gradient norm, 1.0 if the NaN/Inf guard skipped the update else 0.0).
  """
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = _keep_unread(optax.apply_updates(state.params, updates), state.params, read_mask)
  # Optimizer-state leaves that mirror a parameter follow its mask; counters always advance.
  state_mask = optax.tree_map_params(tx, lambda _, r: r, opt_state, read_mask,
                                     transform_non_params=lambda _: True)
  opt_state = _keep_unread(opt_state, state.opt_state, state_mask)
  # NaN/Inf guard inside the step: a non-finite loss or gradient leaves params and optimizer
  # state as they were. The host reads the flag with the other metrics, never per step.
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
  params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, grad_norm, 1.0 - finite


def _float32(metrics: Metrics) -> Metrics:
  return {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def _running_stats(state: TrainState, metrics: Sequence[dict], nonfinite: jax.Array
                   ) -> tuple[TrainState, list[dict]]:
  """Writes the BatchNorm heads' new running statistics (popped from each task's metrics)
  into params, unless the NaN/Inf guard skipped the update."""
  params, rest = state.params, []
  for m in metrics:
    m = dict(m)
    sown = m.pop(BATCH_STATS, None)
    if sown:
      new = with_running_stats(params, sown)
      params = jax.tree.map(lambda n, o: jnp.where(nonfinite > 0, o, n), new, params)
    rest.append(m)
  return state.replace(params=params), rest


def make_train_step(model: IMPModel, tx: optax.GradientTransformation, spec: StepSpec,
                    state: TrainState, batch: Batch,
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """Builds the pure train step of one spec.

  Args:
    model, tx: the model and optimizer.
    spec: the step's static description.
    state, batch: examples (arrays or ShapeDtypeStructs) of the step's arguments, used to
      find which parameters this task reads.
  """
  loss_fn = make_loss_fn(model, spec)
  read_mask = _read_mask(loss_fn, state, batch)

  def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    rng = jax.random.fold_in(state.rng, state.step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, (loss, metrics)), grads = grad_fn(state.params, batch, rng)
    state, grad_norm, nonfinite = _guarded_update(tx, state, grads, loss, read_mask)
    state, (metrics,) = _running_stats(state, [metrics], nonfinite)
    return state, _float32(dict(metrics, loss=loss, grad_norm=grad_norm, nonfinite=nonfinite))

  step.read_mask = read_mask  # which parameters the step moves, for reports (dry run)
  return step


def make_weighted_sum_step(model: IMPModel, tx: optax.GradientTransformation,
                           specs: Sequence[StepSpec], state: TrainState,
                           batches: Sequence[Batch],
                           ) -> Callable[..., tuple[TrainState, tuple[Metrics, ...]]]:
  """Builds the pure step (state, batches: one per spec) -> (state, per-task metrics).

  One update on sum_i loss_weight_i * L_i (+ every task's MoE aux loss). Parameters that no
  task reads stay exactly as they were, as under AGD.

  Args:
    model, tx: the model and optimizer.
    specs: the tasks, in the order of `batches`.
    state, batches: examples (arrays or ShapeDtypeStructs) of the step's arguments.

  Returns:
    The step. Its metrics are one dict per task: the task's unweighted `loss` and objective
    and MoE metrics, plus the step's `grad_norm`, `nonfinite` and `weighted_sum_loss`
    (the summed objective the update minimised, without aux).
  """
  specs = tuple(specs)
  grads_fn = accumulated_grads(model, specs)
  reads = [_read_mask(make_loss_fn(model, spec), state, batch)
           for spec, batch in zip(specs, batches, strict=True)]
  read_mask = jax.tree.map(lambda *r: any(r), *reads)
  weights = jnp.asarray([spec.loss_weight for spec in specs], jnp.float32)

  def step(state: TrainState, batches: Sequence[Batch]) -> tuple[TrainState, tuple[Metrics, ...]]:
    rng = jax.random.fold_in(state.rng, state.step)
    grads, losses, task_metrics = grads_fn(state.params, tuple(batches), rng)
    total = jnp.sum(weights * losses)
    state, grad_norm, nonfinite = _guarded_update(tx, state, grads, total, read_mask)
    state, task_metrics = _running_stats(state, task_metrics, nonfinite)
    shared = dict(grad_norm=grad_norm, nonfinite=nonfinite, weighted_sum_loss=total)
    return state, tuple(_float32(dict(m, loss=loss, **shared))
                        for m, loss in zip(task_metrics, losses, strict=True))

  step.read_mask = read_mask
  return step


def make_infer_step(model: IMPModel, request: Request) -> Callable[[Any, Batch], dict]:
  """Pure evaluation forward pass: (params, batch) -> requested outputs."""

  def infer(params, batch):
    return model.apply({"params": params}, batch, request, train=False)

  return infer
