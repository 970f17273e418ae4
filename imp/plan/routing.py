"""Task and attribute routes of Requests: the task ids and token attributes that conditional
MoE routers read (Uni-Perceiver-MoE eq. 7-9), computed here so the model never looks a task up.

A training step routes its tokens as its own task: the task id is the index of its task entry
(config order) and the attributes follow from its own inputs and targets. An evaluation
request names no task; each of its modalities gets the training task that produced the same
output: for an embedded modality, the first task that embeds it; otherwise the first that
trains the same head, else the first that classifies it, else the first that reads it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from imp.model import Request
from imp.model.conditions import roles_of, token_attributes
from imp.step.step import StepSpec
from imp.tasks import Task

# (task entry, its Request) of every task entry, in config order: index = task id.
TaskTable = tuple[tuple[str, Request], ...]


def _roles(request: Request) -> tuple[tuple[str, ...], tuple[str, ...]]:
  return roles_of(request.classify, request.embed, request.features,
                  request.fuse if request.classify else ())


def _modalities(request: Request) -> tuple[str, ...]:
  return tuple(dict.fromkeys(request.modalities + request.fuse))


def task_table(registry: Iterable[Task]) -> TaskTable:
  """(entry, Request) of every task entry in config order (variants of one entry share it)."""
  table: dict[str, Request] = {}
  for task in registry:
    table.setdefault(task.entry, StepSpec.from_task(task).request)
  return tuple(table.items())


def task_ids(table: TaskTable) -> dict[str, int]:
  """Task entry -> its task id."""
  return {entry: i for i, (entry, _) in enumerate(table)}


def _eval_task(table: Sequence[Request], request: Request, modality: str) -> int:
  classifies = lambda r: modality in [m for m, _ in r.classify] + list(  # noqa: E731
      r.fuse if r.classify else ())
  same_head = lambda r: bool(set(request.classify) & set(r.classify))  # noqa: E731
  tests = ([lambda r: modality in r.embed] if modality in request.embed else []) + [
      same_head, classifies, lambda r: modality in r.modalities]
  for test in tests:
    for i, r in enumerate(table):
      if test(r):
        return i
  return -1


def route_eval(request: Request, table: TaskTable) -> Request:
  """An evaluation request with each modality routed as the training task that produced the
  same output (module docstring); unrouted (task 0, own attributes) without a match."""
  if request.routes or not table:
    return request
  requests = [r for _, r in table]
  routes = []
  for modality in _modalities(request):
    index = _eval_task(requests, request, modality)
    source = requests[index] if index >= 0 else request
    inputs, targets = _roles(source)
    routes.append((modality, max(index, 0), token_attributes(inputs, targets, modality)))
  return dataclasses.replace(request, routes=tuple(routes))
