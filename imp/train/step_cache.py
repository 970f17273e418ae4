"""StepCache: one ahead-of-time compiled program per (step name, input signature).

AGD trains a different task almost every step, each with its own shapes and objective. jit
would also cache, but silently; here every compile is counted and timed so a run can show it
compiled each signature once and spent a known share of its time compiling (IMP §3.1).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import numpy as np

Signature = tuple

_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_xla_compiles = 0


def _count_compile(event: str, duration: float, **_) -> None:
  global _xla_compiles
  if event == _BACKEND_COMPILE_EVENT:
    _xla_compiles += 1


jax.monitoring.register_event_duration_secs_listener(_count_compile)


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


def _mib(n: int) -> str:
  return f"{n / 2**20:.1f} MiB"


def program_label(name: Hashable) -> str:
  """A person's name for a program key: ("train", spec) -> "train <spec.label>"."""
  parts = name if isinstance(name, tuple) else (name,)
  return " ".join(getattr(p, "label", None) or str(p) for p in parts)


@dataclasses.dataclass
class CompileRecord:
  key: Hashable
  seconds: float
  temp_bytes: int | None


class StepCache:
  """Compiles `build()` once per (name, signature of the arguments) and reuses it.

  Attributes:
    hits: calls served by an already compiled program.
    misses: calls that compiled.
    compiles: one record per compile (key, seconds, compiler-estimated temp memory).
  """

  def __init__(self, logger: logging.Logger | None = None):
    self._compiled: dict[Hashable, Any] = {}
    self.hits = 0
    self.misses = 0
    self.compiles: list[CompileRecord] = []
    self._log = logger or logging.getLogger("imp.step_cache")

  def __len__(self) -> int:
    return len(self._compiled)

  @property
  def compile_seconds(self) -> float:
    return sum(r.seconds for r in self.compiles)

  def compiled(self, name: Hashable, build: Callable[[], Callable], args: Sequence[Any],
               *, donate_argnums: tuple[int, ...] = (), sig: Signature | None = None,
               in_shardings: Any = None, out_shardings: Any = None) -> Any:
    """The compiled program for (name, signature(args)); compiles it on first sight.

    Args:
      name: static identity of the function (e.g. ("train", StepSpec)).
      build: returns the pure function to compile; called only on a miss.
      args: example arguments (arrays or ShapeDtypeStructs) fixing the signature.
      donate_argnums: arguments whose buffers the program may reuse (the train state).
      sig: a precomputed signature of `args`, to skip recomputing it on the hot path.
      in_shardings, out_shardings: as `jax.jit` (pytree prefixes of the arguments and
        results); None lets the compiler choose from the arguments' own shardings.
    """
    key = (name, signature(args) if sig is None else sig)
    program = self._compiled.get(key)
    if program is not None:
      self.hits += 1
      return program
    self.misses += 1
    start = time.perf_counter()
    shardings = {k: v for k, v in (("in_shardings", in_shardings),
                                    ("out_shardings", out_shardings)) if v is not None}
    program = jax.jit(build(), donate_argnums=donate_argnums, **shardings).lower(
        *args).compile()
    seconds = time.perf_counter() - start
    temp, memory = None, "memory not reported by this backend"
    with contextlib.suppress(Exception):  # some backends do not report memory
      analysis = program.memory_analysis()
      temp = int(analysis.temp_size_in_bytes)
      memory = (f"per device: arguments {_mib(analysis.argument_size_in_bytes)}, outputs "
                f"{_mib(analysis.output_size_in_bytes)}, temporaries {_mib(temp)}")
    self.compiles.append(CompileRecord(key[0], seconds, temp))
    self._log.info("compiled %s in %.1f s; %s", program_label(name), seconds, memory)
    self._compiled[key] = program
    return program

  def stats(self, wall_seconds: float | None = None) -> dict[str, float]:
    out = {"size": len(self), "hits": self.hits, "misses": self.misses,
           "compile_seconds": round(self.compile_seconds, 3)}
    if wall_seconds:
      out["compile_share"] = round(self.compile_seconds / wall_seconds, 4)
    return out
