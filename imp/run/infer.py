"""Inference programs of a run: `infer(request, batch)` for the eval suite and analysis.

Each (Request, batch signature) is one program in the run's StepCache, keyed as
`imp.plan.programs` compiles it before step 1, so an evaluation during training compiles
nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from imp.model import Request
from imp.parallel.mesh import data_parallel_size, process_rows, put_batch
from imp.parallel.rules import under_rules
from imp.plan.programs import eval_shardings, infer_key
from imp.plan.routing import route_eval
from imp.run.restore import Run
from imp.step.step import make_infer_step

Infer = Callable[[Request, Mapping[str, np.ndarray]], dict[str, np.ndarray]]


def infer_fn(run: Run, params: Any) -> Infer:
  """`infer(request, batch) -> outputs` (host arrays), backed by the run's step cache.

  `batch` holds this process's rows of a global batch (`imp.parallel.mesh.process_rows`);
  the program runs on the rows split over the data-parallel devices, and every process gets
  the outputs of the whole global batch.
  """
  shardings = eval_shardings(run.plan)

  def infer(request: Request, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    request = route_eval(request, run.plan.task_table)  # the task ids conditional MoEs read
    batch = put_batch(batch, run.mesh)
    program = run.cache.compiled(
        infer_key(request),
        lambda: under_rules(make_infer_step(run.model, request), run.mesh, run.rules),
        (params, batch), **shardings)
    return jax.device_get(program(params, batch))

  return infer


def eval_rows(run: Run) -> Callable[[int], tuple[int, int]]:
  """global eval batch size -> this process's [start, stop) of its rows (the eval programs
  split a batch over the data-parallel devices, so its size must be a multiple of them)."""
  devices = data_parallel_size(run.mesh)

  def rows(batch_size: int) -> tuple[int, int]:
    if batch_size % devices:
      raise ValueError(f"an eval batch_size of {batch_size} does not split over the {devices} "
                       "data-parallel devices of config.mesh; use a multiple of "
                       f"{devices}.")
    return process_rows(run.mesh, batch_size)

  return rows
