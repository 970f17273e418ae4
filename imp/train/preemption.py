"""Preemption: SIGTERM or SIGINT makes the loop save at a step boundary and stop.

One process: a Python handler sets a flag that the loop reads after each step.

Several processes (a pod preemption signals every host, at slightly different times): each
process must stop after the same step, or one would wait in a checkpoint's collectives for
another still training. JAX's preemption sync manager (started by jax.distributed.initialize)
catches SIGTERM on any process, tells the others through the coordination service and picks
one step that all of them reach (`multihost_utils.reached_preemption_sync_point`, called after
every step by every process). So SIGTERM is left to JAX's handler there, and SIGINT (Ctrl-C)
is turned into a SIGTERM of this process to take the same path.

A signal during an evaluation (one process) abandons it: inside `abandoning()` the handler
raises EvaluationAbandoned in the main thread, so the loop saves and stops within a step's
time instead of after the whole evaluation (which can outlast a preemption notice).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import jax
from jax.experimental import multihost_utils


class EvaluationAbandoned(BaseException):  # noqa: N818 - not an error: the run saves and stops
  """A preemption signal arrived during an evaluation.

  A BaseException, like KeyboardInterrupt: libraries the evaluation calls catch Exception
  (scikit-learn's cross-validation records a failed fit as a NaN score and goes on), which
  would swallow the signal and let the evaluation run to its end."""


class Preemption:
  """`with Preemption() as p: ... if p.reached(step): save and stop`."""

  def __init__(self):
    self.signal: int | None = None
    self._previous = {}
    self._multi = False
    self._abandonable = False

  def __enter__(self):
    self._multi = jax.process_count() > 1
    if threading.current_thread() is threading.main_thread():
      signals = (signal.SIGINT,) if self._multi else (signal.SIGTERM, signal.SIGINT)
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signum
    if self._multi:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's notifier shares it with the other processes
    elif self._abandonable:
      self._abandonable = False
      raise EvaluationAbandoned(f"signal {signum}")

  @contextlib.contextmanager
  def abandoning(self):
    """A block (an evaluation) that a signal abandons, raising EvaluationAbandoned; one
    process only (several processes must agree on the step: they finish it)."""
    if self.signal is not None and not self._multi:
      raise EvaluationAbandoned(f"signal {self.signal}")
    self._abandonable = True
    try:
      yield
    finally:
      self._abandonable = False

  def reached(self, step: int) -> bool:
    """True if the run must save and stop after `step` (the same step on every process)."""
    if not self._multi:
      return self.signal is not None
    if multihost_utils.reached_preemption_sync_point(step):
      self.signal = self.signal or signal.SIGTERM
      return True
    return False

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
