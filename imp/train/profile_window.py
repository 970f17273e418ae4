"""A profiler window: a JAX profiler trace of a few steps, written to <workdir>/profile.

  config.profile = dict(start_step=100, num_steps=5)

The trace starts before step `start_step` runs (0-based, after any compile: every program is
compiled before step 1) and stops after `num_steps` steps, once their results are ready, so it
holds whole steps of device time. Each step is a `StepTraceAnnotation` ("train", step number):
TensorBoard's profile plugin lists them as steps.

View it with TensorBoard's profile plugin (`pip install tensorboard-plugin-profile`, then
`tensorboard --logdir <workdir>/profile`, tab "Profile"), or open the trace file
`<workdir>/profile/plugins/profile/<run>/<host>.trace.json.gz` in https://ui.perfetto.dev.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import jax

from imp.config import schema
from imp.paths import Path
from imp.plan.plan import ConfigError


class ProfileWindow:
  """Starts and stops jax.profiler around the steps [start_step, start_step + num_steps)."""

  def __init__(self, settings: Mapping[str, Any] | None, workdir: str | Path):
    self.enabled = bool(settings)  # a profile only where config.profile is set
    unknown = set(settings or {}) - set(schema.keys_of("profile"))
    if unknown:
      raise ConfigError(f"config.profile.{sorted(unknown)[0]} is not a key; valid: "
                        f"{', '.join(schema.keys_of('profile'))}.")
    settings = schema.filled(settings, "profile")
    self.start = settings["start_step"]
    self.stop = self.start + settings["num_steps"]
    for key, value in (("start_step", self.start), ("num_steps", self.stop - self.start)):
      if not isinstance(value, int) or isinstance(value, bool) or value < (key == "num_steps"):
        raise ConfigError(f"config.profile.{key}={value!r} must be an integer of at least "
                          f"{int(key == 'num_steps')}.")
    self.directory = str(workdir) + "/profile"  # a local path or a bucket URL alike
    self._tracing = False

  @contextlib.contextmanager
  def step(self, step: int) -> Iterator[list]:
    """Around one step; the caller appends the step's outputs to the yielded list so the
    trace stops only once they are computed."""
    if self.enabled and step == self.start and not self._tracing:
      jax.profiler.start_trace(self.directory, create_perfetto_trace=True)  # for Perfetto too
      self._tracing = True
    outputs: list = []
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      yield outputs
    if self._tracing and step + 1 >= self.stop:
      jax.block_until_ready(outputs)
      self.close()

  def close(self) -> None:
    """Stops a trace still running (a run that ended inside the window)."""
    if self._tracing:
      jax.profiler.stop_trace()
      self._tracing = False
