"""What every benchmark shares: medians with their spread, interleaved timing, the report.

Timings on a shared machine drift; variants are therefore timed round by round, interleaved,
and summarised by the median of the rounds with the min-max spread beside it. Nothing here
(or in any benchmark) asserts on time.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Stat:
  """Median and min-max spread of repeated measurements of one quantity."""

  median: float
  low: float
  high: float
  samples: tuple[float, ...]

  @classmethod
  def of(cls, samples: Sequence[float]) -> Stat:
    values = np.asarray(samples, np.float64)
    if values.size == 0:
      raise ValueError("Stat.of needs at least one sample.")
    return cls(float(np.median(values)), float(values.min()), float(values.max()),
               tuple(float(v) for v in values))

  def scaled(self, factor: float) -> Stat:
    return Stat(self.median * factor, self.low * factor, self.high * factor,
                tuple(v * factor for v in self.samples))

  def show(self, fmt: str = "{:.2f}", unit: str = "") -> str:
    """e.g. '12.3 ms (11.9-13.0)'."""
    return (f"{fmt.format(self.median)}{unit} "
            f"({fmt.format(self.low)}-{fmt.format(self.high)})")

  def to_json(self) -> dict[str, Any]:
    return {"median": self.median, "low": self.low, "high": self.high,
            "samples": list(self.samples)}


def ratio(numerators: Sequence[float], denominators: Sequence[float]) -> Stat:
  """Per-round ratios (rounds paired, as they were measured side by side)."""
  return Stat.of([n / d for n, d in zip(numerators, denominators, strict=True)])


def interleaved(programs: Mapping[str, Callable[[], Any]], *, rounds: int, repeats: int,
                warmup: int = 2) -> dict[str, list[float]]:
  """Seconds per call of each program, one sample per round, programs interleaved.

  Args:
    programs: name -> a call that runs one unit of work and returns something to block on.
    rounds: samples per program.
    repeats: calls per sample (the sample is their mean).
    warmup: untimed calls per program before the first round.
  """
  for run in programs.values():
    for _ in range(warmup):
      jax.block_until_ready(run())
  times: dict[str, list[float]] = {name: [] for name in programs}
  for _ in range(rounds):
    for name, run in programs.items():
      start = time.perf_counter()
      for _ in range(repeats):
        out = run()
      jax.block_until_ready(out)
      times[name].append((time.perf_counter() - start) / repeats)
  return times


@dataclasses.dataclass
class Report:
  """A benchmark's result: table rows for people and everything measured for JSON.

  rows: (case, result, goal or paper figure) strings, one table row each.
  data: the raw measurements (JSON-serialisable).
  """

  rows: list[tuple[str, str, str]]
  data: dict[str, Any]


def machine() -> str:
  """One line naming the machine the numbers come from."""
  device = jax.devices()[0]
  return (f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPU cores, "
          f"JAX {jax.__version__} on {device.platform} ({device.device_kind})").replace("  ", " ")


def write_marked(doc: Path, marker: str, text: str) -> None:
  """Replaces what lies between `<!-- marker -->` and `<!-- /marker -->` in `doc` with
  `text`; a doc without the marker is left as it is."""
  if not doc.exists() or f"<!-- {marker} -->" not in doc.read_text():
    return
  head, _, rest = doc.read_text().partition(f"<!-- {marker} -->")
  _, _, tail = rest.partition(f"<!-- /{marker} -->")
  doc.write_text(f"{head}<!-- {marker} -->\n{text}\n<!-- /{marker} -->{tail}")
