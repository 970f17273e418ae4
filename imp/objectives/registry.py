"""The objective registry: softmax CE, sigmoid BCE, symmetric (pairwise or triplet) NCE, and
their sum.

An objective is called with the model outputs of one step, the batch, and its static
arguments (head name, modalities, and the task's `args` from config). Objectives never see
parameters or optimizer state.

Model output keys it reads: "logits/<head>", "embedding/<modality>", "logit_scale".
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from imp.objectives import losses

Array = jax.Array
Metrics = dict[str, Array]


@dataclasses.dataclass(frozen=True)
class Needs:
  """Model outputs an objective needs: (modality, head) logits and modality embeddings."""

  classify: tuple[tuple[str, str], ...] = ()
  embed: tuple[str, ...] = ()

  def __or__(self, other: Needs) -> Needs:
    return Needs(tuple(dict.fromkeys(self.classify + other.classify)),
                 tuple(dict.fromkeys(self.embed + other.embed)))


@dataclasses.dataclass(frozen=True)
class Objective:
  """A named loss.

  Attributes:
    name: registry name.
    needs: fn(head, modalities, **args) -> Needs.
    loss: fn(outputs, batch, *, head, modalities, **args) -> (scalar loss, metrics).
    min_modalities: how many modalities a task must give it.
  """

  name: str
  needs: Callable[..., Needs]
  loss: Callable[..., tuple[Array, Metrics]]
  min_modalities: int = 1

  @property
  def arg_names(self) -> tuple[str, ...]:
    params = inspect.signature(self.loss).parameters.values()
    return tuple(p.name for p in params
                 if p.kind == p.KEYWORD_ONLY and p.name not in ("head", "modalities"))

  def check_args(self, task: str, args: Mapping[str, Any], modalities: tuple[str, ...]) -> None:
    """Raises a clear error for unknown arguments, parts or too few modalities."""
    valid = set(self.arg_names)
    parts = [get_objective(p, key=f"tasks.{task}.args.objectives")
             for p in args.get("objectives", ())] if self.name == "sum" else [self]
    for part in parts:
      valid |= set(part.arg_names)
      if len(modalities) < part.min_modalities:
        raise ValueError(
            f"tasks.{task}.modalities={list(modalities)}: objective {part.name!r} needs at "
            f"least {part.min_modalities}.")
    unknown = sorted(set(args) - valid)
    if unknown:
      raise ValueError(
          f"tasks.{task}.args.{unknown[0]} is not an argument of objective {self.name!r}; "
          f"valid: {', '.join(sorted(valid)) or '(none)'}.")


OBJECTIVES: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
  OBJECTIVES[objective.name] = objective
  return objective


def get_objective(name: str, key: str = "objective") -> Objective:
  if name not in OBJECTIVES:
    raise ValueError(
        f"{key}={name!r} is not a known objective; valid: {', '.join(sorted(OBJECTIVES))}.")
  return OBJECTIVES[name]


def _softmax_loss(outputs, batch, *, head, modalities, label_smoothing: float = 0.0):
  del modalities
  logits, labels = outputs[f"logits/{head}"], batch["label"]
  loss = losses.softmax_cross_entropy(logits, labels, label_smoothing).mean()
  return loss, {"accuracy": losses.top1_correct(logits, labels).mean()}


def _sigmoid_loss(outputs, batch, *, head, modalities):
  del modalities
  logits = outputs[f"logits/{head}"]
  if "labels" in batch:  # multi-hot [B, C]
    targets = batch["labels"].astype(jnp.float32)
    metrics = {}
  else:
    targets = jax.nn.one_hot(batch["label"], logits.shape[-1])
    metrics = {"accuracy": losses.top1_correct(logits, batch["label"]).mean()}
  return losses.sigmoid_binary_cross_entropy(logits, targets).mean(), metrics


def _pair_nce(a: Array, b: Array, scale: Array, mask: Array | None) -> tuple[Array, Array]:
  """Symmetric NCE of one embedding pair and its in-batch retrieval accuracy (a -> b)."""
  loss, logits = losses.nce_loss(a, b, scale, mask)
  top = jnp.argmax(logits, axis=1)
  if mask is None:
    hit = top == jnp.arange(a.shape[0])
  else:  # the top match of each a is a positive b
    hit = jnp.take_along_axis(mask, top[:, None], 1)[:, 0]
  return loss, hit.astype(jnp.float32).mean()


def _nce_loss(outputs, batch, *, head, modalities, positives: str = "diagonal"):
  """Symmetric NCE between the task's modalities.

  Two modalities: one symmetric InfoNCE. Three or more (IMP's video-audio-text triplet,
  §4.1): the sum of the symmetric losses of every pair, (a, b), (a, c), (b, c); the metrics
  then also carry each pair's `<a>_<b>_loss` and `<a>_<b>_accuracy`, and `accuracy` is their
  mean.

  positives="same_label" treats every pair with equal labels as positive (label-text NCE:
  a batch of images holds many examples of each class, and all share one class-name text).
  """
  del head
  if positives not in ("diagonal", "same_label"):
    raise ValueError(f"nce positives={positives!r}; valid: 'diagonal', 'same_label'.")
  mask = losses.positives_from_labels(batch["label"]) if positives == "same_label" else None
  scale = outputs["logit_scale"]
  pairs = list(itertools.combinations(modalities, 2))
  total, accuracies, metrics = 0.0, [], {}
  for a, b in pairs:
    loss, accuracy = _pair_nce(outputs[f"embedding/{a}"], outputs[f"embedding/{b}"], scale,
                               mask)
    total = total + loss
    accuracies.append(accuracy)
    if len(pairs) > 1:
      metrics.update({f"{a}_{b}_loss": loss, f"{a}_{b}_accuracy": accuracy})
  return total, dict(metrics, accuracy=sum(accuracies) / len(accuracies), logit_scale=scale)


def _sum_loss(outputs, batch, *, head, modalities, objectives: tuple[str, ...] = (),
              weights: tuple[float, ...] = (), **part_args):
  """Baseline for ablations: several objectives added in one step (not AGD)."""
  weights = weights or (1.0,) * len(objectives)
  total, metrics = 0.0, {}
  for name, weight in zip(objectives, weights, strict=True):
    part = OBJECTIVES[name]
    args = {k: v for k, v in part_args.items() if k in part.arg_names}
    loss, part_metrics = part.loss(outputs, batch, head=head, modalities=modalities, **args)
    total = total + weight * loss
    metrics[f"{name}_loss"] = loss
    metrics.update({f"{name}_{k}": v for k, v in part_metrics.items()})
  return total, metrics


def _sum_needs(head, modalities, *, objectives=(), **part_args):
  needs = Needs()
  for name in objectives:
    part = OBJECTIVES[name]
    needs = needs | part.needs(head, modalities,
                               **{k: v for k, v in part_args.items() if k in part.arg_names})
  return needs


register(Objective("softmax", lambda head, modalities, **_: Needs(((modalities[0], head),)),
                   _softmax_loss))
register(Objective("sigmoid_bce", lambda head, modalities, **_: Needs(((modalities[0], head),)),
                   _sigmoid_loss))
register(Objective("nce", lambda head, modalities, **_: Needs(embed=tuple(modalities)),
                   _nce_loss, min_modalities=2))
register(Objective("sum", _sum_needs, _sum_loss))
