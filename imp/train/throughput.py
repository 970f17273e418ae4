"""Throughput per train program (a task under AGD): ms per step, examples/s, achieved TFLOP/s
from the plan's FLOPs count, and MFU where the device's peak is known.

A step's time is the time between the host seeing the previous step's metrics ready and seeing
its own ready: the loop waits for step i-1 only after dispatching step i, so the host still
prepares one step ahead of the device and the figure is the step's device time once the device
is the bottleneck (and the host's time per step when the host is). `Throughput.step` is the
only wait it adds.

Achieved TFLOP/s per device = the program's FLOPs per device and call (`ProgramReport.gflops`,
every scanned layer counted) / seconds per step. MFU = that / the device's peak dense bf16
FLOP/s (`PEAK_BF16`), a model FLOPs figure: remat's recomputation is not counted as useful.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax

# Peak dense (no sparsity) bf16 FLOP/s of one JAX device, by a substring of its device_kind.
# Sources: NVIDIA's H100 and H200 datasheets (SXM 989.4 TFLOP/s, H100 PCIe 756), A100
# datasheet (312), L4 datasheet (121); Google Cloud's TPU system-architecture pages per chip
# (v4 275, v5e 197, v5p 459, v6e 918; a v3 chip is 123 over two JAX devices, one per core).
PEAK_BF16 = (
    ("H100 PCIe", 756e12), ("H100", 989.4e12), ("H200", 989.4e12), ("A100", 312e12),
    ("L4", 121e12), ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12),
    ("TPU v5p", 459e12), ("TPU v5", 459e12), ("TPU v6 lite", 918e12), ("TPU v6e", 918e12),
    ("TPU v3", 61.5e12),
)


def peak_flops(device_kind: str) -> float | None:
  """The device's peak dense bf16 FLOP/s, None where the table has no entry (e.g. a CPU)."""
  for name, peak in PEAK_BF16:
    if name.lower() in device_kind.lower():
      return peak
  return None


class Throughput:
  """Per-program step times, as an interval since the last write and as totals for the run.

  Args:
    gflops: program name -> GFLOPs per device and call (the programs table).
    examples: program name -> examples per step (every batch the program takes).
    device_kind: the device, for its peak FLOP/s.
  """

  def __init__(self, gflops: Mapping[str, float], examples: Mapping[str, int],
               device_kind: str):
    self.gflops, self.examples = dict(gflops), dict(examples)
    self.peak = peak_flops(device_kind)
    self._pending: tuple[str, Any] | None = None
    self._ready = None
    self.interval = collections.defaultdict(lambda: [0, 0.0])  # name -> [steps, seconds]
    self.total = collections.defaultdict(lambda: [0, 0.0])

  def step(self, program: str, metrics: Any) -> None:
    """After dispatching a step of `program`: waits for the previous step and times it."""
    if self._pending is None:
      self._ready = time.perf_counter()  # after a pause: the step's time starts at dispatch
    else:
      self._settle()
    self._pending = (program, metrics)

  def pause(self) -> None:
    """Before work that is not a step (a log write, a checkpoint, an evaluation): the pending
    step is timed now, and the next step's time starts at its own dispatch."""
    if self._pending is not None:
      self._settle()
      self._pending = None

  def _settle(self) -> None:
    jax.block_until_ready(self._pending[1])
    now = time.perf_counter()
    for table in (self.interval, self.total):
      table[self._pending[0]][0] += 1
      table[self._pending[0]][1] += now - self._ready
    self._ready = now

  def figures(self, name: str, steps: int, seconds: float) -> dict[str, float]:
    """One program's figures over `steps` steps that took `seconds`."""
    per_step = seconds / steps
    out = {"ms_per_step": 1e3 * per_step, "examples_per_s": self.examples.get(name, 0) / per_step}
    if name in self.gflops:
      out["tflops_per_device"] = self.gflops[name] / 1e3 / per_step
      if self.peak:
        out["mfu"] = self.gflops[name] * 1e9 / per_step / self.peak
    return {k: round(v, 4) for k, v in out.items()}

  def _timed(self, table: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    return {name: self.figures(name, steps, seconds)
            for name, (steps, seconds) in sorted(table.items()) if steps and seconds > 0}

  def interval_scalars(self) -> dict[str, float]:
    """"throughput/<program>/<figure>" since the last call (one log interval: metrics.jsonl
    and TensorBoard); starts the next interval."""
    out = {f"throughput/{name}/{k}": v for name, figures in self._timed(self.interval).items()
           for k, v in figures.items()}
    self.interval.clear()
    return out

  def summary(self) -> dict[str, dict[str, float]]:
    """program -> figures over the whole run (summary.json)."""
    return self._timed(self.total)
