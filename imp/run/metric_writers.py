"""Metric writers: JSONL records and TensorBoard event files in the workdir (local or bucket).

A local workdir keeps one `metrics.jsonl`, appended to and flushed at every write. An object
in a bucket cannot be appended to, so a bucket workdir gets segments
`metrics.jsonl.d/<first step, 10 digits>.jsonl`: each write puts the current segment again
whole (one object put), and a new segment starts every `SEGMENT_RECORDS` records, so a kill -9
loses at most the records since the last write (one log interval) and no put rewrites more
than `SEGMENT_RECORDS` lines. `read_metrics(workdir)` reads either layout.
"""

from __future__ import annotations

import copy
import io
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from imp import paths
from imp.step.checkpoint import free_space

METRICS_FILE = "metrics.jsonl"
SEGMENTS_DIR = "metrics.jsonl.d"
SEGMENT_RECORDS = 200


class _JsonlSegments:
  """`metrics.jsonl` as segment objects in a bucket (see the module docstring)."""

  def __init__(self, workdir: paths.Path):
    self.directory = workdir / SEGMENTS_DIR
    self.lines: list[str] = []
    self.first_step: int | None = None

  def write(self, step: int, line: str) -> None:
    if len(self.lines) >= SEGMENT_RECORDS:
      self.lines, self.first_step = [], None
    if self.first_step is None:
      self.first_step = step
    self.lines.append(line)
    paths.write_text(self.directory / f"{self.first_step:010d}.jsonl", "".join(self.lines))

  def flush(self) -> None:  # every write is already in the bucket
    pass

  def close(self) -> None:
    pass


def read_metrics(workdir: paths.PathLike) -> list[dict[str, Any]]:
  """Every record of a run, in the order written: `metrics.jsonl`, then the segments in
  step order (a resumed run that logs a step again starts a segment of that name anew)."""
  workdir = paths.as_path(workdir, key="workdir")
  texts = []
  if (workdir / METRICS_FILE).exists():
    texts.append((workdir / METRICS_FILE).read_text())
  if (workdir / SEGMENTS_DIR).exists():
    texts += [p.read_text() for p in sorted((workdir / SEGMENTS_DIR).glob("*.jsonl"))]
  return [json.loads(line) for text in texts for line in text.splitlines() if line.strip()]


class _BucketEventFile:
  """A TensorBoard event file in a bucket: tensorboardX's records, kept in memory and put
  whole at every flush (tensorboardX's own gs:// writer needs google-cloud-storage and its
  s3:// one boto3; this one goes through imp.paths like every other write)."""

  def __init__(self, path: str):
    self.path = path
    self.buffer = io.BytesIO()

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self) -> None:
    paths.write_bytes(self.path, copy.copy(self.buffer).getvalue())

  def close(self) -> None:
    self.flush()


class _BucketEventFiles:
  """tensorboardX's writer factory (`record_writer.register_writer_factory`) for buckets."""

  def open(self, path: str) -> _BucketEventFile:
    return _BucketEventFile(path)

  def directory_check(self, path: str) -> None:  # a bucket has no folders to make
    pass


def summary_writer(logdir: paths.PathLike):
  """tensorboardX's SummaryWriter for a local folder or a bucket prefix."""
  from tensorboardX import SummaryWriter, record_writer

  for scheme in paths.URL_SCHEMES:
    record_writer.register_writer_factory(scheme.split(":")[0], _BucketEventFiles())
  return SummaryWriter(str(paths.as_path(logdir)))


class MetricWriteError(RuntimeError):
  """The workdir's metric records could not be written (full disk, lost bucket): the run stops."""


class MetricWriter:
  """Writes scalars to the workdir's JSONL records and TensorBoard (`<workdir>/tensorboard`).

  Only process 0 of a multi-host run should create one (the others pass enabled=False).
  A failed write is a MetricWriteError; `kept()` (if given) runs first and says what a rerun
  resumes from, or raises an error of its own that explains the failure better (the training
  loop's waits for the pending checkpoint save, whose failure is the likely cause).
  """

  def __init__(self, workdir: paths.PathLike, enabled: bool = True,
               kept: Callable[[], str] | None = None):
    self.enabled = enabled
    self._kept = kept
    self._workdir = workdir = paths.as_path(workdir, key="workdir")
    self._tb = None
    self._jsonl = None
    if enabled:
      workdir.mkdir(parents=True, exist_ok=True)
      if paths.is_url(workdir):
        self._jsonl = _JsonlSegments(workdir)
      else:
        self._jsonl = open(workdir / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115
      self._tb = summary_writer(workdir / "tensorboard")

  def write(self, step: int, scalars: Mapping[str, float], kind: str = "train") -> None:
    """One JSONL record {"step", "kind", **scalars}; each scalar also goes to TensorBoard."""
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    record: dict[str, Any] = {"step": int(step), "kind": kind}
    record.update({k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()})
    try:
      self._append(int(step), json.dumps(record) + "\n")
    except OSError as e:
      self._failed(e)
    for name, value in clean.items():
      if math.isfinite(value):  # the JSONL record keeps non-finite values as strings
        self._tb.add_scalar(f"{kind}/{name}", value, int(step))

  def _append(self, step: int, line: str) -> None:
    if isinstance(self._jsonl, _JsonlSegments):
      self._jsonl.write(step, line)
    else:
      self._jsonl.write(line)
      self._jsonl.flush()

  def _failed(self, error: OSError) -> None:
    kept = f" {self._kept()}" if self._kept is not None else ""
    raise MetricWriteError(
        f"writing metrics to {self._workdir} failed: {type(error).__name__}: {error} "
        f"({free_space(self._workdir)});{kept} Free space or fix the path, then rerun the same "
        "command to resume.") from error

  def flush(self) -> None:
    if self.enabled:
      self._jsonl.flush()
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
