"""Metric writers: a JSONL file and TensorBoard event files in the workdir."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class MetricWriter:
  """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard (`<workdir>/tensorboard`).

  Only process 0 of a multi-host run should create one (the others pass enabled=False).
  """

  def __init__(self, workdir: str | Path, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if enabled:
      from tensorboardX import SummaryWriter

      workdir = Path(workdir)
      workdir.mkdir(parents=True, exist_ok=True)
      self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
      self._tb = SummaryWriter(str(workdir / "tensorboard"))

  def write(self, step: int, scalars: Mapping[str, float], kind: str = "train") -> None:
    """One JSONL record {"step", "kind", **scalars}; each scalar also goes to TensorBoard."""
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    record: dict[str, Any] = {"step": int(step), "kind": kind}
    record.update({k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for name, value in clean.items():
      if math.isfinite(value):  # the JSONL record keeps non-finite values as strings
        self._tb.add_scalar(f"{kind}/{name}", value, int(step))

  def flush(self) -> None:
    if self.enabled:
      self._jsonl.flush()
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
