"""Every program of a run, lowered and compiled before step 1, with its cost and memory.

  programs = [train program per task (or the weighted sum)] + [eval program per (request,
             batch shape) the eval suite runs]
  -> compile_all: lower + compile each through the StepCache (threads: XLA compiles in
     parallel while Python traces the next) -> one ProgramReport each
  -> table_lines (the console), write_json (<workdir>/programs.json), check_memory (stop
     before step 1 when one does not fit a device)

FLOPs: `ProgramReport.gflops` counts the program's own jaxpr, the one the compile traced
anyway, with XLA's weights and every scan trip (`imp.plan.scan_flops.count`), split evenly
over the mesh's devices; tests/test_programs.py checks it against XLA's count of a compiled
unrolled model. Not XLA's count of the compiled program (`gflops_xla`, kept beside it): that
counts a while loop's body once, and `model.scan_layers` rolls the encoder into one; on a GPU
it also leaves out the cuBLAS and cuDNN calls that matmuls become (IMP-B's train step on an
H200, scaled to every layer: 0.11x its model FLOPs).
Memory per device is XLA's memory analysis of the compiled program: arguments, outputs,
temporaries, and the arguments donated to outputs (the train state), which count once.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import math
import re
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import jax

from imp import paths
from imp.model import REMAT_AUTO, IMPModel
from imp.parallel.mesh import batch_sharding, data_parallel_size, replicated
from imp.parallel.rules import under_rules
from imp.plan import scan_flops, xla_log
from imp.plan.plan import ConfigError, Plan
from imp.plan.routing import route_eval
from imp.plan.step_cache import TRACE_LOCK, StepCache, persistent_cache_counts, signature
from imp.step.step import make_infer_step

GIB = 1024**3
COLLECTIVES = ("all-to-all", "all-gather", "all-reduce", "reduce-scatter", "collective-permute")


class ProgramMemoryError(ConfigError):
  """A program needs more memory per device than the device (or config.device_memory_limit)."""


@dataclasses.dataclass(frozen=True)
class ProgramSpec:
  """One program to compile.

  Attributes:
    name: what the table shows ("train <task>", "eval <request>").
    kind: "train" or "eval".
    key: the StepCache name.
    args: abstract (or concrete) arguments fixing the signature.
    build: the pure function to compile, given the model and the arguments.
    donate: argnums whose buffers the program reuses (the train state).
    in_shardings, out_shardings: as jax.jit; None lets XLA choose.
  """

  name: str
  kind: str
  key: Hashable
  args: tuple[Any, ...]
  build: Callable[[IMPModel, tuple[Any, ...]], Callable]
  donate: tuple[int, ...] = ()
  in_shardings: Any = None
  out_shardings: Any = None

  @property
  def signature(self) -> tuple:
    """The StepCache signature: of the batch argument(s) for train programs (as the loop keys
    them), of every argument for eval programs (as `imp.run.infer` keys them)."""
    return signature(self.args[1] if self.kind == "train" else self.args)


@dataclasses.dataclass(frozen=True)
class ProgramReport:
  """One compiled program: its compile time, FLOPs and memory per device.

  Attributes:
    name, kind: as ProgramSpec.
    batch: field -> global shape of its batch argument(s).
    compile_seconds: lower + compile wall time (concurrent compiles overlap).
    count_seconds: the FLOPs count (a walk over the program's jaxpr).
    gflops: GFLOPs per call, every scanned layer counted, over the number of devices: the
      step's FLOPs split evenly (work that every device repeats, such as the optimizer's update
      of replicated parameters, is counted once across them).
    gflops_xla: XLA's own count of the compiled program per device (a scanned body once;
      None where the backend does not report it).
    argument_bytes, output_bytes, temp_bytes, alias_bytes: XLA's memory analysis per device.
    input_bytes: the batch argument(s) per device (`input_bytes`), the part of argument_bytes
      that crosses the host-to-device link every step (uint8 pixels: 1 byte each).
    xla_peak_bytes: the analysis' `peak_memory_in_bytes` where reported (buffer liveness
      considered; `peak_bytes` instead assumes everything is live at once, an upper bound).
    collectives: HLO collective op -> count (e.g. all-to-all of an expert-sharded MoE).
    source: "cache" when JAX's persistent compilation cache served the program, "compiled"
      when XLA compiled it (and the cache, if on, stored it), "" when no cache was consulted.
    xla_warnings, involuntary_remats: XLA's C++ warnings during the compile, and those that
      are `[SPMD] Involuntary full rematerialization` (a tensor replicated whole to reshard
      it), where the compile's fd 2 was captured (`imp.plan.xla_log`); their text is in
      <workdir>/xla_compile.log.
    remat_policy: a train program's model.remat_policy; "auto: <policy>" where auto chose it.
  """

  name: str
  kind: str
  batch: dict[str, tuple[int, ...]]
  compile_seconds: float
  count_seconds: float
  gflops: float
  gflops_xla: float | None
  argument_bytes: int | None
  output_bytes: int | None
  temp_bytes: int | None
  alias_bytes: int | None
  collectives: dict[str, int] = dataclasses.field(default_factory=dict)
  xla_peak_bytes: int | None = None  # XLA's own peak figure, where the backend reports one
  input_bytes: int = 0
  source: str = ""
  xla_warnings: int = 0
  involuntary_remats: int = 0
  remat_policy: str = ""

  @property
  def peak_bytes(self) -> int | None:
    """Arguments + outputs + temporaries, donated buffers counted once."""
    if self.argument_bytes is None:
      return None
    return (self.argument_bytes + self.output_bytes - (self.alias_bytes or 0)
            + (self.temp_bytes or 0))


def _first(analysis: Any) -> Any:
  return analysis[0] if isinstance(analysis, list | tuple) and analysis else analysis


def _flops(staged: Any) -> float | None:
  try:
    cost = _first(staged.cost_analysis()) or {}
  except (NotImplementedError, AttributeError):
    return None
  return float(cost["flops"]) if "flops" in cost else None


def collective_counts(hlo_text: str) -> dict[str, int]:
  """Collective ops in optimized HLO text, counted by their instruction (`= f32[..] op(`);
  async pairs (`all-to-all-start`/`-done`) count once."""
  return {op: len(re.findall(rf"\s{op}(?:-start)?\(", hlo_text)) for op in COLLECTIVES}


def _batch_fields(spec: ProgramSpec, task_names: Sequence[str] = ()) -> dict[str, tuple]:
  batch = spec.args[1]
  if isinstance(batch, dict):
    return {k: tuple(v.shape) for k, v in batch.items()}
  return {f"{t}/{k}": tuple(v.shape) for t, b in zip(task_names, batch, strict=True)
          for k, v in b.items()}


def input_bytes(batch: Any, mesh: Any) -> int:
  """Bytes per device of a program's batch argument(s) (a batch, or a tuple of batches):
  every field's global bytes over the data-parallel devices its rows are split across
  (`batch_sharding`)."""
  total = sum(math.prod(leaf.shape) * jax.numpy.dtype(leaf.dtype).itemsize
              for leaf in jax.tree.leaves(batch))
  return total // data_parallel_size(mesh)


def train_specs(plan: Plan) -> list[ProgramSpec]:
  """The plan's train programs (arguments: the abstract state and batches)."""
  specs = []
  for program in plan.programs:
    def build(model, args, program=program):
      return program.step_fn(model, plan.tx, *args)

    specs.append(ProgramSpec(
        name=f"train {program.name}", kind="train", key=program.key,
        args=(plan.state, plan.batch_of(program)), build=build, donate=(0,),
        in_shardings=plan.in_shardings, out_shardings=plan.out_shardings))
  return specs


def infer_key(request: Any) -> Hashable:
  return ("infer", request)


def eval_specs(plan: Plan, params: Any, programs: Sequence[tuple[Any, Mapping[str, Any]]],
               ) -> list[ProgramSpec]:
  """Eval programs: (Request, example batch) pairs -> the inference programs that serve them."""
  specs, seen = [], set()
  for request, batch in programs:
    request = route_eval(request, plan.task_table)  # as imp.run.infer routes it
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
    rows, devices = next(iter(batch.values())).shape[0], data_parallel_size(plan.mesh)
    if rows % devices:
      raise ConfigError(f"eval program {describe_request(request)}: a batch of {rows} rows does "
                        f"not split over the {devices} data-parallel devices of config.mesh; "
                        f"set evals.<entry>.batch_size to a multiple of {devices}.")
    key = (infer_key(request), signature((params, batch)))
    if key in seen:
      continue
    seen.add(key)

    specs.append(ProgramSpec(
        name="eval " + describe_request(request), kind="eval", key=infer_key(request),
        args=(params, batch), build=lambda model, args, r=request: make_infer_step(model, r),
        **eval_shardings(plan)))
  return specs


def eval_shardings(plan: Plan) -> dict[str, Any]:
  """An eval program's shardings: parameters as in training, every batch field split on rows
  over the data-parallel devices, outputs replicated (each process gets the whole batch's
  outputs; imp.run.infer keys and calls the programs with these)."""
  return {"in_shardings": (plan.shardings.params, batch_sharding(plan.mesh)),
          "out_shardings": replicated(plan.mesh)}


def describe_request(request: Any) -> str:
  parts = [f"classify {h}({m})" for m, h in request.classify]
  parts += [f"embed {m}" for m in request.embed] + [f"features {m}" for m in request.features]
  return (", ".join(parts) + (f" fused {'+'.join(request.fuse)}" if request.fuse else "")
          + (", experts merged" if request.merge_experts else ""))


def _source(before: tuple[int, int], after: tuple[int, int]) -> str:
  requests, hits = after[0] - before[0], after[1] - before[1]
  return "cache" if hits else "compiled" if requests else ""


REMAT_MARGIN = 0.1  # auto remat keeps 10% of the memory free: XLA's analysis leaves out the
# allocator's fragmentation and the runtime's own buffers


def _fits(report: ProgramReport, budget: float | None) -> bool:
  return budget is None or report.peak_bytes is None or (
      report.peak_bytes <= (1 - REMAT_MARGIN) * budget)


def _compile_one(spec: ProgramSpec, plan: Plan, cache: StepCache, task_names: Sequence[str],
                 capture: xla_log.Capture | None = None, budget: float | None = None,
                 ) -> ProgramReport:
  """Compiles `spec`; under model.remat_policy="auto" a train program is compiled with the
  policies of REMAT_AUTO in turn until one fits `budget` with REMAT_MARGIN to spare (the
  last is kept if none does, for check_memory to name), so a program that fits without
  remat compiles once."""
  auto = plan.remat_auto and spec.kind == "train"
  policies = REMAT_AUTO if auto else (plan.model_config.remat_policy,)
  seconds = 0.0
  with capture.span() if capture else xla_log.no_capture() as xla_lines:
    for policy in policies:
      model = plan.model if policy == plan.model_config.remat_policy else plan.model.clone(
          config=dataclasses.replace(plan.model_config, remat_policy=policy))
      report = _compile_with(model, spec, plan, cache, task_names)
      seconds += report.compile_seconds
      if _fits(report, budget) or policy == policies[-1]:
        break
      cache.discard(spec.key, spec.signature)  # too big: the next policy replaces it
  return dataclasses.replace(
      report, compile_seconds=round(seconds, 2), xla_warnings=xla_lines.warnings,
      involuntary_remats=xla_lines.involuntary_remats,
      remat_policy=("auto: " if auto else "") + policy if spec.kind == "train" else "")


def _compile_with(model: IMPModel, spec: ProgramSpec, plan: Plan, cache: StepCache,
                  task_names: Sequence[str]) -> ProgramReport:
  mesh, rules = plan.mesh, plan.rules
  traced = []
  start = time.perf_counter()
  before = persistent_cache_counts()
  program = cache.compiled(
      spec.key, lambda: under_rules(spec.build(model, spec.args), mesh, rules),
      spec.args, donate_argnums=spec.donate,
      sig=spec.signature if spec.kind == "train" else None,
      in_shardings=spec.in_shardings, out_shardings=spec.out_shardings,
      on_traced=traced.append)
  seconds = time.perf_counter() - start
  source = _source(before, persistent_cache_counts())
  compiled_flops = _flops(program)
  count_start = time.perf_counter()
  if not traced:  # the cache already held the program: trace it again (no lowering)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), spec.args)
    with TRACE_LOCK:
      fn = under_rules(spec.build(model, spec.args), mesh, rules)
      traced.append(jax.jit(fn).trace(*abstract))
  flops = scan_flops.count(traced[0].jaxpr, every_trip=True) / mesh.size
  count_seconds = time.perf_counter() - count_start
  memory = None
  with contextlib.suppress(NotImplementedError):  # some backends do not report memory
    memory = _first(program.memory_analysis())
  size = lambda name: None if memory is None else int(getattr(memory, name))  # noqa: E731
  return ProgramReport(
      name=spec.name, kind=spec.kind, batch=_batch_fields(spec, task_names),
      compile_seconds=round(seconds, 2), count_seconds=round(count_seconds, 2),
      gflops=flops / 1e9,
      gflops_xla=None if compiled_flops is None else compiled_flops / 1e9,
      argument_bytes=size("argument_size_in_bytes"), output_bytes=size("output_size_in_bytes"),
      temp_bytes=size("temp_size_in_bytes"), alias_bytes=size("alias_size_in_bytes"),
      collectives=collective_counts(program.as_text()), input_bytes=input_bytes(spec.args[1], mesh),
      xla_peak_bytes=(int(getattr(memory, "peak_memory_in_bytes", 0)) or None) if memory else None,
      source=source)


def compile_all(plan: Plan, cache: StepCache, specs: Sequence[ProgramSpec], *,
                workers: int = 4, xla_log_path: str | paths.Path | None = None,
                on_done: Callable[[ProgramReport, float], None] | None = None,
                ) -> list[ProgramReport]:
  """Compiles every spec into `cache` (`workers` at a time); one report each, in order.

  Args:
    xla_log_path: where XLA's C++ log lines go while compiling (counted per program in the
      reports) instead of the console; None leaves them on the console.
    on_done: called with each report, and the seconds since the first compile began, as its
      program finishes (a progress line).
  """
  task_names = {p.name: p.tasks for p in plan.programs}
  names = lambda s: task_names.get(s.name.removeprefix("train "), ())  # noqa: E731
  start = time.perf_counter()

  budget = None
  if plan.remat_auto:  # the memory auto remat fits programs in, with REMAT_MARGIN to spare
    budget = plan.config.get("device_memory_limit") or device_memory()

  def one(spec: ProgramSpec, capture: xla_log.Capture | None) -> ProgramReport:
    report = _compile_one(spec, plan, cache, names(spec), capture, budget)
    if on_done is not None:
      on_done(report, time.perf_counter() - start)
    return report

  with xla_log.Capture(xla_log_path) if xla_log_path else contextlib.nullcontext() as capture:
    # Compiles run in worker threads even one at a time: the main thread then only waits, and
    # a Ctrl-C reaches it at once instead of after the compile in progress (minutes).
    pool = concurrent.futures.ThreadPoolExecutor(max(1, min(workers, len(specs))))
    try:
      return list(pool.map(lambda s: one(s, capture), specs))
    finally:  # an interrupt leaves the running compiles behind: the caller exits
      pool.shutdown(wait=False, cancel_futures=True)


def _gib(n: int | None) -> str:
  return "n/a" if n is None else f"{n / GIB:.3f}"


def model_choices(plan: Plan) -> dict[str, Any]:
  """The compile choices every program of the model shares, the "auto" ones resolved for this
  backend (imp.model.layer_stack): for the table's last line and programs.json."""
  model = plan.model_config
  return {"backend": jax.default_backend(), "scan_layers": model.scan_layers,
          "scan_unroll": model.scan_unroll if model.scan_layers else None,
          "attention_impl": model.attention_impl}


def table_lines(reports: Sequence[ProgramReport], wall_seconds: float | None = None,
                choices: Mapping[str, Any] | None = None) -> list[str]:
  """The compile-before-step-1 table, one program a line (memory in GiB per device), and the
  model-wide `choices` (model_choices) below it."""
  width = max([len(r.name) for r in reports] + [7])
  # Within the console's 120 characters: args and out GiB are in programs.json.
  lines = [f"{'program':<{width}} {'compile s':>9} {'from':>8} {'GFLOPs':>10} "
           f"{'input MiB':>9} {'temp GiB':>9} {'peak GiB':>9} {'remats':>6} remat policy"]
  for r in reports:
    lines.append(f"{r.name:<{width}} {r.compile_seconds:9.2f} {r.source or '-':>8} "
                 f"{r.gflops:10.3f} {r.input_bytes / 2**20:9.3f} "
                 f"{_gib(r.temp_bytes):>9} {_gib(r.peak_bytes):>9} {r.involuntary_remats:6d} "
                 f"{r.remat_policy}".rstrip())
  total = sum(r.compile_seconds for r in reports)
  # Programs compile concurrently, so their seconds overlap: the sum is compiler time, the
  # wall time is what the run waited.
  lines.append(f"{len(reports)} programs: {total:.1f} s of compiler time summed over them"
               + (f", {wall_seconds:.1f} s of wall time (they compile in parallel)"
                  if wall_seconds is not None else ""))
  lines.append("GFLOPs per device and call, every scanned layer counted; input MiB: the batch "
               "per device")
  lines.append("peak = args + out + temp (programs.json has each), the donated state counted once")
  lines.append("from: compiled, or loaded from the persistent compilation cache")
  lines.append("remats: XLA's involuntary full rematerializations (a tensor replicated whole to "
               "reshard it)")
  if choices:
    stack = (f"scanned, {choices['scan_unroll']} per loop iteration (model.scan_unroll)"
             if choices["scan_layers"] else "unrolled (model.scan_layers=False)")
    lines.append(f"on {choices['backend']}: layers {stack}; attention "
                 f"{choices['attention_impl']} (model.attention_impl)")
  warned = sum(r.xla_warnings for r in reports)
  if warned:
    lines.append(f"XLA warned {warned} times while compiling (xla_compile.log in the workdir)")
  return lines


def write_json(reports: Sequence[ProgramReport], path: paths.PathLike, **facts: Any,
               ) -> paths.Path:
  """programs.json: {"programs": [one dict per program], **facts}."""
  rows = [dict(dataclasses.asdict(r), peak_bytes=r.peak_bytes) for r in reports]
  path = paths.as_path(path)
  paths.write_text(path, json.dumps(dict(facts, programs=rows), indent=2) + "\n")
  return path


def device_memory() -> int | None:
  """Bytes of memory of this process's first device, None where the backend does not say."""
  try:
    stats = jax.local_devices()[0].memory_stats() or {}
  except (NotImplementedError, RuntimeError):
    return None
  limit = stats.get("bytes_limit")
  return int(limit) if limit else None


def check_memory(reports: Sequence[ProgramReport], limit: int | float | None = None) -> None:
  """Raises ProgramMemoryError naming every program over `limit` (or the device's memory)."""
  device = device_memory()
  budget = limit if limit is not None else device
  if budget is None:
    return
  where = (f"config.device_memory_limit={limit}" if limit is not None else
           f"the {jax.local_devices()[0].device_kind} device's {device / GIB:.2f} GiB")
  over = [r for r in reports if r.peak_bytes is not None and r.peak_bytes > budget]
  if over:
    listed = "; ".join(f"{r.name} needs {r.peak_bytes / GIB:.2f} GiB (args "
                       f"{_gib(r.argument_bytes)} + out {_gib(r.output_bytes)} + temp "
                       f"{_gib(r.temp_bytes)} GiB)" for r in over)
    raise ProgramMemoryError(
        f"{len(over)} of {len(reports)} programs do not fit in device memory, more than "
        f"{where} ({budget / GIB:.2f} GiB per device): {listed}. Nothing was trained. Shard "
        "more (config.mesh fsdp/expert, config.mesh_rules='fsdp'), rematerialise "
        "(config.model.remat_policy='full') or lower the variants' batch_size.")
