"""StepCache: one ahead-of-time compiled program per (step name, input signature).

AGD trains a different task almost every step, each with its own shapes and objective. jit
would also cache, but silently; here every compile is counted and timed so a run can show it
compiled each signature once and spent a known share of its time compiling (IMP §3.1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

Signature = tuple

_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
# JAX records these in the thread that compiles (jax/_src/compiler.py, compile_or_get_cached):
# a compile that consulted the persistent cache, and one that the cache served.
_CACHE_REQUEST_EVENT = "/jax/compilation_cache/compile_requests_use_cache"
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_xla_compiles = 0
_per_thread = threading.local()  # imp.plan.programs compiles from several threads at once


def _count_compile(event: str, duration: float, **_) -> None:
  global _xla_compiles
  if event == _BACKEND_COMPILE_EVENT:
    _xla_compiles += 1


def _count_cache_event(event: str, **_) -> None:
  if event in (_CACHE_REQUEST_EVENT, _CACHE_HIT_EVENT):
    setattr(_per_thread, event, getattr(_per_thread, event, 0) + 1)


jax.monitoring.register_event_duration_secs_listener(_count_compile)
jax.monitoring.register_event_listener(_count_cache_event)


def persistent_cache_counts() -> tuple[int, int]:
  """(compiles that consulted JAX's persistent cache, compiles it served) so far in this
  thread: the difference across one compile says whether it was compiled or loaded."""
  return (getattr(_per_thread, _CACHE_REQUEST_EVENT, 0),
          getattr(_per_thread, _CACHE_HIT_EVENT, 0))

# Tracing Flax modules is not thread-safe: two threads tracing the model at once raced in
# dataclasses.fields ("dictionary changed size during iteration", CI under load). Tracing and
# lowering are Python, held by the GIL anyway; XLA's compile, which releases it, is what
# imp.plan.programs runs in parallel. Everyone who traces from a worker thread takes this.
TRACE_LOCK = threading.RLock()


def xla_compiles() -> int:
  """XLA backend compiles in this process so far, by anyone (jit, eager ops, StepCache).

  An independent witness for the StepCache's own counts: a step that recompiles behind the
  cache's back shows up here.
  """
  return _xla_compiles


def signature(tree: Any) -> Signature:
  """Hashable (path, shape, dtype) of every array leaf, sorted by path."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return tuple(sorted(
      (jax.tree_util.keystr(path), tuple(np.shape(x)), str(np.asarray(x).dtype)
       if not hasattr(x, "dtype") else str(x.dtype))
      for path, x in leaves))


@dataclasses.dataclass
class CompileRecord:
  key: Hashable
  seconds: float
  temp_bytes: int | None
  start: float  # time.perf_counter() when it began (concurrent compiles overlap)


def covered_seconds(intervals: Sequence[tuple[float, float]]) -> float:
  """Length of the union of [start, end] intervals: wall time during which any ran."""
  total, reach = 0.0, -float("inf")
  for start, end in sorted(intervals):
    if end > reach:
      total += end - max(start, reach)
      reach = end
  return total


class StepCache:
  """Compiles `build()` once per (name, signature of the arguments) and reuses it.

  Attributes:
    hits: calls served by an already compiled program.
    misses: calls that compiled.
    compiles: one record per compile (key, seconds, compiler-estimated temp memory).
  """

  def __init__(self, logger: logging.Logger | None = None,
               compiler_options: Mapping[str, Any] | None = None):
    """`compiler_options`: XLA options for every compile of this cache (the dry run's
    DRY_RUN_COMPILER_OPTIONS); None: XLA's defaults."""
    self._compiler_options = dict(compiler_options) if compiler_options else None
    self._compiled: dict[Hashable, Any] = {}
    self.hits = 0
    self.misses = 0
    self.compiles: list[CompileRecord] = []
    self._log = logger or logging.getLogger("imp.step_cache")
    self._lock = threading.Lock()  # imp.plan.programs compiles from several threads

  def __len__(self) -> int:
    return len(self._compiled)

  @property
  def compile_seconds(self) -> float:
    """Wall seconds during which at least one program compiled (imp.plan.programs compiles
    several at once: overlapping compiles count once, so shares of the run's wall stay below
    100%). A compile waiting on TRACE_LOCK while another thread traces counts that wait."""
    return covered_seconds([(r.start, r.start + r.seconds) for r in self.compiles])

  def compiled(self, name: Hashable, build: Callable[[], Callable], args: Sequence[Any],
               *, donate_argnums: tuple[int, ...] = (), sig: Signature | None = None,
               in_shardings: Any = None, out_shardings: Any = None,
               on_traced: Callable[[Any], None] | None = None) -> Any:
    """The compiled program for (name, signature(args)); compiles it on first sight.

    Args:
      name: static identity of the function (e.g. ("train", StepSpec)).
      build: returns the pure function to compile; called only on a miss.
      args: example arguments (arrays or ShapeDtypeStructs) fixing the signature.
      donate_argnums: arguments whose buffers the program may reuse (the train state).
      sig: a precomputed signature of `args`, to skip recomputing it on the hot path.
      in_shardings, out_shardings: as `jax.jit` (pytree prefixes of the arguments and
        results); None lets the compiler choose from the arguments' own shardings.
      on_traced: called with the `jax.stages.Traced` program on a miss (its jaxpr:
        imp.plan.programs' FLOPs correction for scanned layers).
    """
    key = (name, signature(args) if sig is None else sig)
    program = self._compiled.get(key)
    if program is not None:
      with self._lock:
        self.hits += 1
      return program
    start = time.perf_counter()
    shardings = {k: v for k, v in (("in_shardings", in_shardings),
                                    ("out_shardings", out_shardings)) if v is not None}
    with TRACE_LOCK:
      traced = jax.jit(build(), donate_argnums=donate_argnums, **shardings).trace(*args)
      lowered = traced.lower()
    program = lowered.compile(self._compiler_options)
    seconds = time.perf_counter() - start
    if on_traced is not None:
      on_traced(traced)
    temp = None
    with contextlib.suppress(Exception):  # some backends do not report memory
      temp = int(program.memory_analysis().temp_size_in_bytes)
    with self._lock:
      self.misses += 1
      self.compiles.append(CompileRecord(key[0], seconds, temp, start))
      self._compiled[key] = program
    self._log.debug("compiled %s in %.2fs (temp memory %s bytes)", name, seconds, temp)
    return program

  def discard(self, name: Hashable, sig: Signature) -> None:
    """Forgets the program of (name, sig), so the next `compiled` call compiles it again
    (model.remat_policy="auto" recompiling a program that did not fit)."""
    with self._lock:
      self._compiled.pop((name, sig), None)

  def __contains__(self, key: tuple[Hashable, Signature]) -> bool:
    """Whether (name, signature) is compiled."""
    return key in self._compiled

  def stats(self, wall_seconds: float | None = None) -> dict[str, float]:
    out = {"size": len(self), "hits": self.hits, "misses": self.misses,
           "compile_seconds": round(self.compile_seconds, 3)}
    if wall_seconds:
      out["compile_share"] = round(self.compile_seconds / wall_seconds, 4)
    return out
