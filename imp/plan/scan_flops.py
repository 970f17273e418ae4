"""The FLOPs of a program, every scan trip counted, read off the program's jaxpr.

XLA lowers `lax.scan` (`nn.scan` over the encoder's layers; its transpose in the backward pass)
to a while loop and its cost analysis counts a loop's body once; on a GPU, the compiled
program's count also leaves out the cuBLAS and cuDNN calls its matmuls become. `count` walks
the jaxpr instead, each scan's body repeated its trip count (or, with `every_trip=False`, as
often as XLA's loop body holds it: `unroll` iterations), and `imp.plan.programs` reports it.

The jaxpr is the one `jax.jit(...).trace` builds for the compile anyway, so the count
costs a walk over it, not another trace or lowering (it used to lower a two-unit unrolled model
per program: as long as the compile itself on this CPU). No library counts jaxpr FLOPs with
scan trip counts (XLA's analysis is per module, after the loop is formed), hence this walk.
Its weights follow XLA's HloCostAnalysis: 2 FLOPs per
multiply-add of `dot_general` and convolutions, one per output element of elementwise
arithmetic, one per input element of reductions, none for data movement or transcendentals
(which XLA counts apart). `tests/test_programs.py` checks the count of scanned models against
XLA's count of the compiled unrolled model (within 1% on this CPU).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

# Elementwise arithmetic XLA counts as one FLOP per output element.
ELEMENTWISE = frozenset({
    "add", "add_any", "sub", "mul", "div", "rem", "max", "min", "neg", "abs", "sign", "pow",
    "integer_pow", "sqrt", "rsqrt", "cbrt", "square", "reciprocal", "select_n", "clamp",
    "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "xor", "floor", "ceil", "round",
    "nextafter", "is_finite", "atan2", "exp2"})
# Reductions: one FLOP per input element.
REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and",
                        "reduce_or", "argmax", "argmin", "cumsum", "cummax", "cummin",
                        "cumprod", "cumlogsumexp"})


def _size(var: Any) -> int:
  return math.prod(getattr(var.aval, "shape", ()))


def _jaxpr(value: Any) -> Any:
  """The open jaxpr of a Jaxpr or ClosedJaxpr, else None."""
  inner = getattr(value, "jaxpr", None)
  if inner is not None and hasattr(inner, "eqns"):
    return inner
  return value if hasattr(value, "eqns") else None


def _subjaxprs(params: dict[str, Any]) -> Iterator[Any]:
  for value in params.values():
    for item in value if isinstance(value, tuple | list) else (value,):
      jaxpr = _jaxpr(item)
      if jaxpr is not None:
        yield jaxpr


def _op_flops(eqn: Any) -> float:
  name = eqn.primitive.name
  if name == "dot_general":
    (contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return 2.0 * _size(eqn.outvars[0]) * math.prod(lhs[d] for d in contract)
  if name == "conv_general_dilated":
    rhs = eqn.invars[1].aval.shape
    out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
    return 2.0 * _size(eqn.outvars[0]) * math.prod(rhs) / out_features
  if name in ELEMENTWISE:
    return float(sum(_size(v) for v in eqn.outvars))
  if name in REDUCTIONS:
    return float(_size(eqn.invars[0]))
  return 0.0


def count(jaxpr: Any, *, every_trip: bool) -> float:
  """FLOPs of `jaxpr` (a Jaxpr or ClosedJaxpr), each scan's body `length` times
  (`every_trip`) or as often as its while loop's body holds it (`unroll`); a while loop's
  body and a cond's costliest branch once, as XLA counts them."""
  jaxpr, total = _jaxpr(jaxpr), 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "scan":
      length, unroll = int(eqn.params["length"]), eqn.params.get("unroll", 1)
      per_trip = length if unroll is True else max(1, min(int(unroll), length))
      total += (length if every_trip else per_trip) * count(eqn.params["jaxpr"],
                                                            every_trip=every_trip)
    elif name == "cond":
      total += max(count(b, every_trip=every_trip) for b in eqn.params["branches"])
    else:
      subs = list(_subjaxprs(eqn.params))
      total += (sum(count(s, every_trip=every_trip) for s in subs) if subs
                else _op_flops(eqn))
  return total
