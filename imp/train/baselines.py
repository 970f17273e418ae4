"""Non-AGD baselines: mixed batching and gradient accumulation (DESIGN: baselines only).

Both update the model once per round of several tasks, to be compared with AGD (one task per
step) in `benchmarks/batching.py`. They reuse the model, the objectives and the optimizer.

- **Mixed batching** puts every task's examples into one batch. Per modality, each task's input
  is zero-padded to the union (largest) shape of that modality over the tasks and the batches
  are concatenated; a token mask hides the padding from attention and pooling (image padding
  by its real extent, text by the padding id 0). One encoder pass per modality covers every
  task's examples, then each task's objective reads its own rows; the weighted losses are
  summed into one gradient and one update.
- **Gradient accumulation** runs each task's mini-batch at its own shape through the loss of
  its AGD step, sums the gradients (`imp.step.step.accumulated_grads`, which the
  weighted-sum schedule also uses) and applies one update.

Shapes: R rows of a modality in the mixed batch (the tasks' batches concatenated), N tokens
of the union shape, D width.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from imp.model import IMPModel
from imp.model.imp_model import EMBEDDER_OF, masked_mean
from imp.objectives import get_objective
from imp.step.state import TrainState
from imp.step.step import StepSpec, accumulated_grads, moe_summary

Batch = dict[str, Any]
MIXABLE = ("image", "text")


# ---- Gradient accumulation --------------------------------------------------------------------

def make_accumulation_step(model: IMPModel, tx: optax.GradientTransformation,
                           specs: Sequence[StepSpec]) -> Callable[..., Any]:
  """Pure step (state, batches: tuple of task batches) -> (state, metrics): one update."""
  grads_fn = accumulated_grads(model, specs)

  def step(state: TrainState, batches: Sequence[Batch]):
    grads, losses, _ = grads_fn(state.params, batches, jax.random.fold_in(state.rng, state.step))
    return _apply(tx, state, grads, losses)

  return step


def _apply(tx: optax.GradientTransformation, state: TrainState, grads: Any, losses: jax.Array):
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": losses.sum(), "task_losses": losses, "grad_norm": optax.tree.norm(grads)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


# ---- Mixed batching ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MixedLayout:
  """Where each task's rows lie in the mixed batch (static: part of the compiled step).

  Attributes:
    specs: the tasks, in order.
    rows: per task, (modality, start, stop) of its rows in that modality's padded input.
  """

  specs: tuple[StepSpec, ...]
  rows: tuple[tuple[tuple[str, int, int], ...], ...]


def mix_batches(specs: Sequence[StepSpec], batches: Sequence[Batch]) -> tuple[Batch, MixedLayout]:
  """Host side: pads and concatenates task batches into one mixed batch.

  Args:
    specs, batches: the tasks and one batch each ("image" [B, H, W, C], "text" [B, L],
      "label" [B]).

  Returns:
    ({"<modality>": [R, *union shape] zero-padded, "<modality>_extent": int32 [R, 2] real
      height and width (images), "label_<i>": task i's labels}, its layout).
  """
  rows: list[list[tuple[str, int, int]]] = [[] for _ in specs]
  parts: dict[str, list[np.ndarray]] = {}
  for i, (spec, batch) in enumerate(zip(specs, batches, strict=True)):
    for modality in spec.modalities:
      if modality not in MIXABLE:
        raise ValueError(f"mixed batching supports {', '.join(MIXABLE)} inputs; task {i} "
                         f"({spec.objective} on {spec.head}) reads {modality!r}.")
      start = sum(len(p) for p in parts.get(modality, []))
      parts.setdefault(modality, []).append(np.asarray(batch[modality]))
      rows[i].append((modality, start, start + len(batch[modality])))
  mixed: Batch = {}
  for modality, arrays in parts.items():
    union = np.max([a.shape[1:] for a in arrays], axis=0)
    mixed[modality] = np.concatenate([
        np.pad(a, [(0, 0)] + [(0, u - s) for s, u in zip(a.shape[1:], union, strict=True)])
        for a in arrays])
    if modality == "image":
      mixed["image_extent"] = np.concatenate([
          np.tile(np.asarray(a.shape[1:3], np.int32), (len(a), 1)) for a in arrays])
  for i, batch in enumerate(batches):
    mixed[f"label_{i}"] = np.asarray(batch["label"])
  return mixed, MixedLayout(tuple(specs), tuple(tuple(r) for r in rows))


def image_token_mask(extent: jax.Array, shape: tuple[int, int], patch: tuple[int, int]
                     ) -> jax.Array:
  """bool [R, (H/ph) * (W/pw)]: the patches inside each image's real [h, w] extent.

  Patches are numbered row-major over the (H/ph, W/pw) grid, as the vision embedder orders
  its tokens.
  """
  rows = jnp.arange(shape[0] // patch[0])[None, :, None] < (extent[:, 0] // patch[0])[:, None,
                                                                                      None]
  cols = jnp.arange(shape[1] // patch[1])[None, None, :] < (extent[:, 1] // patch[1])[:, None,
                                                                                      None]
  return (rows & cols).reshape(extent.shape[0], -1)


def _mixed_forward(module: IMPModel, mixed: Batch, requests: Sequence[Any], layout: MixedLayout,
                   train: bool) -> list[dict[str, jax.Array]]:
  """Bound-module method: one encoder pass per modality, then each task's heads on its rows.

  The heads repeat IMPModel.__call__'s (classifier on pooled features, normalised projection,
  clipped temperature) because the padding mask has to enter between embedder and encoder.
  """
  pooled = {}
  for modality in {m for task_rows in layout.rows for m, _, _ in task_rows}:
    x = mixed[modality]
    tokens = module.embedders[EMBEDDER_OF[modality]](x)
    if modality == "text":
      mask = x != 0
    else:
      mask = image_token_mask(mixed["image_extent"], x.shape[1:3],
                              module.config.vision_patch[1:])
    chex.assert_shape(mask, tokens.shape[:2])
    tokens, moe_metrics = module.encoder(tokens, mask, train=train)
    if moe_metrics:
      module.sow("intermediates", f"moe_{modality}", moe_metrics)
    pooled[modality] = masked_mean(tokens, mask)  # [R, D]
  outputs = []
  for request, task_rows in zip(requests, layout.rows, strict=True):
    mine = {m: pooled[m][start:stop] for m, start, stop in task_rows}
    out = {f"logits/{head}": module.classify(head, mine[m], train) for m, head in request.classify}
    for m in request.embed:
      z = module.projections[m](mine[m])
      out[f"embedding/{m}"] = z / jnp.linalg.norm(z, axis=-1, keepdims=True).clip(1e-6)
    if request.embed:
      out["logit_scale"] = jnp.exp(jnp.minimum(module.log_logit_scale,
                                               math.log(module.config.logit_scale_max)))
    outputs.append(out)
  return outputs


def mixed_loss_fn(model: IMPModel, layout: MixedLayout) -> Callable[..., Any]:
  """(params, mixed batch, rng) -> (summed weighted loss + MoE aux, per-task losses [tasks])."""
  for spec in layout.specs:
    if spec.drop_token:
      raise ValueError(f"mixed batching has no DropToken; task {spec.objective} on {spec.head} "
                       f"sets drop_token={spec.drop_token}.")
  requests = [spec.request for spec in layout.specs]

  def loss_fn(params, mixed: Batch, rng):
    rngs = {"router": rng}
    if model.config.stochastic_depth:
      rngs["stochastic_depth"] = jax.random.fold_in(rng, 2)
    outputs, state = model.apply(
        {"params": params}, mixed, requests, layout, True, method=_mixed_forward,
        rngs=rngs, mutable=["intermediates"])
    total, losses = 0.0, []
    for i, (spec, out) in enumerate(zip(layout.specs, outputs, strict=True)):
      loss, _ = get_objective(spec.objective).loss(
          out, {"label": mixed[f"label_{i}"]}, head=spec.head, modalities=spec.modalities,
          **dict(spec.args))
      total = total + spec.loss_weight * loss
      losses.append(loss)
    aux, _ = moe_summary(state.get("intermediates", {}))
    return total + aux, jnp.stack(losses)

  return loss_fn


def make_mixed_step(model: IMPModel, tx: optax.GradientTransformation,
                    layout: MixedLayout) -> Callable[..., Any]:
  """Pure step (state, mixed batch) -> (state, metrics): one update on the summed loss."""
  loss_fn = mixed_loss_fn(model, layout)

  def step(state: TrainState, mixed: Batch):
    rng = jax.random.fold_in(state.rng, state.step)
    (_, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, mixed, rng)
    return _apply(tx, state, grads, losses)

  return step


def useful_tokens(spec: StepSpec, batch: Batch, vision_patch: Sequence[int]) -> int:
  """Tokens a task's batch holds at its own shape (what AGD computes on; no padding)."""
  total = 0
  for modality in spec.modalities:
    x = np.asarray(batch[modality])
    if modality == "text":
      total += x.size
    else:
      total += x.shape[0] * (x.shape[1] // vision_patch[1]) * (x.shape[2] // vision_patch[2])
  return total
