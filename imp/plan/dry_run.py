"""Dry run: will this config fit? Compile every task's train step for the mesh; touch no data.

Under `config.sampling.schedule="weighted_sum"` the one program over every task is compiled.

  python -m imp.main --config experiments/imp_moe_l.py --mode=dry_run \
      --cpu_devices=8 --dry_run_batch_divisor=2048 --memory_budget_gb=16

The dry run is the run's plan (`imp.plan.build_plan`: model and optimizer state abstract, in
the shardings of `config.mesh` and `config.mesh_rules`, no parameter allocated) with its train
programs lowered and compiled exactly as training compiles them before step 1
(`imp.plan.programs`), on the plan's abstract batches. Per task it reports the parameters the
task reads (total and per token), FLOPs per step (every scanned layer counted) and peak
device memory from XLA's analyses; `check_budget` then fails if any signature needs more than
the per-device memory budget, and `config.device_memory_limit` (or the device's own memory)
is checked as training checks it.

Datasets are not opened: `config.dry_run.datasets.<name>` declares what the run would learn
from them (train_examples for the sampling weights, num_classes for the heads, and the
modalities an example provides). Every dataset of `config.datasets` needs such an entry.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections

from imp.model import ModelConfig
from imp.model.moe import router_setting
from imp.parallel.mesh import data_parallel_size, make_mesh
from imp.paths import Path
from imp.plan import programs as plan_programs
from imp.plan.param_count import count_params, merged_param_count
from imp.plan.plan import ConfigError, abstract_batch, build_plan, declared_facts
from imp.plan.programs import COLLECTIVES, GIB, collective_counts  # noqa: F401 (re-exported)
from imp.plan.step_cache import StepCache
from imp.step.state import logical_axes

__all__ = ["COLLECTIVES", "DryRunError", "GIB", "SignatureReport", "abstract_batch",
           "check_budget", "collective_counts", "plan", "report_lines"]


class DryRunError(ConfigError):
  """The config cannot be planned, or a signature does not fit the memory budget."""


@dataclasses.dataclass(frozen=True)
class SignatureReport:
  """One compiled train step.

  Attributes:
    task: task name ("<entry>/<variant>").
    batch: field -> global shape.
    params_total, params_per_token: parameters the task's loss reads (all experts; experts
      one token passes through on average).
    flops: FLOPs per step and device, every scanned layer counted (`ProgramReport.gflops`).
    peak_bytes: arguments + outputs + temporaries per device (XLA's memory analysis).
    compile_seconds: time to lower and compile.
    collectives: HLO collective op -> count in the compiled program (e.g. "all-to-all": the
      MoE dispatch and combine when experts are split over the expert axis).
  """

  task: str
  batch: dict[str, tuple[int, ...]]
  params_total: int
  params_per_token: int
  flops: float
  peak_bytes: int | None
  compile_seconds: float
  collectives: dict[str, int] = dataclasses.field(default_factory=dict)


def _bad_batch(config: ml_collections.ConfigDict, divisor: int, shards: int) -> str | None:
  """The first variant whose batch `divisor` does not divide into a multiple of `shards` (the
  data-parallel devices its rows split over), as "tasks.<entry>.variants.<name>...", or None."""
  for entry, spec in config.tasks.to_dict().items():
    for name, variant in spec["variants"].items():
      batch = variant["batch_size"]
      if batch % divisor or (batch // divisor) % shards:
        return f"tasks.{entry}.variants.{name}.batch_size={batch}"
  return None


def _scaled_tasks(config: ml_collections.ConfigDict, divisor: int) -> dict[str, Any]:
  """config.tasks with every batch divided by `divisor`; refused unless every divided batch
  still splits over the mesh's data-parallel devices (a smaller batch leaves the partitioner
  replicating whole activations: a dry run that plans what training would refuse)."""
  shards = data_parallel_size(make_mesh(config.get("mesh")))
  bad = _bad_batch(config, divisor, shards)
  if bad:
    works = next(d for d in range(divisor, 0, -1) if _bad_batch(config, d, shards) is None)
    raise DryRunError(
        f"--dry_run_batch_divisor={divisor}: {bad} does not divide into a multiple of the "
        f"{shards} data-parallel devices of config.mesh; the largest divisor that keeps every "
        f"batch split is {works}.")
  tasks = {}
  for entry, spec in config.tasks.to_dict().items():
    variants = {name: dict(variant, batch_size=variant["batch_size"] // divisor)
                for name, variant in spec["variants"].items()}  # new dicts: may be shared
    tasks[entry] = dict(spec, variants=variants)
  return tasks


def experts_per_token(model: ModelConfig) -> float:
  """Experts one token passes through on average: the capacity factor under expert choice
  (C = S * factor / E slots for each of E experts), k under token-choice top-k."""
  args, router = dict(model.moe.router_args), model.moe.router
  name = "capacity_factor_train" if router == "expert_choice" else "k"
  return float(router_setting(router, args, name))


# The dry run never runs its programs, so XLA generates their machine code at its lowest
# effort. Memory (buffer assignment), collectives and the partitioner's rematerializations
# come from the HLO passes before it, which these options leave alone.
DRY_RUN_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0,
                            "xla_llvm_disable_expensive_passes": True}


def plan(config: ml_collections.ConfigDict, *, batch_divisor: int = 1, workers: int = 4,
         xla_log_path: str | Path | None = None, echo: Callable[[str], None] | None = None,
         ) -> tuple[list[SignatureReport], dict[str, Any]]:
  """Compiles every train program of `config`'s plan for its mesh without data or parameters.

  Args:
    xla_log_path: XLA's C++ log lines go there while compiling (counted per program).
    echo: gets a header line and one line per program as its compile finishes.

  Returns:
    (one report per program, run facts: mesh, devices, model parameter counts, compiles, and
    `programs`: the ProgramReports of the compile-before-step-1 table).

  Raises:
    DryRunError: a bad config or dry-run setting, naming the key.
  """
  try:
    return _plan(config, batch_divisor, workers, xla_log_path, echo)
  except DryRunError:
    raise
  except ValueError as e:
    raise DryRunError(str(e)) from e


def progress_line(report: plan_programs.ProgramReport, elapsed: float, done: int,
                  total: int) -> str:
  """One program, as its compile finishes."""
  peak = "n/a" if report.peak_bytes is None else f"{report.peak_bytes / GIB:.2f} GiB"
  return (f"[{done}/{total}] {report.name}: {report.compile_seconds:.1f}s "
          f"({report.source or 'compiled'}), peak {peak}/device, "
          f"{report.involuntary_remats} involuntary remats; {elapsed:.0f}s elapsed")


def _plan(config: ml_collections.ConfigDict, batch_divisor: int, workers: int,
          xla_log_path: str | Path | None, echo: Callable[[str], None] | None,
          ) -> tuple[list[SignatureReport], dict[str, Any]]:
  if config.model.get("scan_unroll", "auto") == "auto":
    # Planned as the pod's GPUs or TPUs compile it (imp.model.layer_stack), not as this CPU
    # would train it: one layer per loop iteration, whatever the host's backend.
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.scan_unroll = 1
  run_plan = build_plan(config, declared_facts(config),
                        tasks=_scaled_tasks(config, int(batch_divisor)))
  model_config = run_plan.model_config
  per_token_experts = experts_per_token(model_config)
  counts = count_params(run_plan.state.params, model_config.moe.num_experts, per_token_experts)
  moe = model_config.moe
  if moe.num_experts and not moe.data_dependent:  # evals.<entry>.merge_experts serves this
    counts["merged"] = merged_param_count(
        run_plan.state.params, logical_axes(run_plan.model), moe.num_experts,
        int(router_setting(moe.router, dict(moe.router_args), "k")))
  cache = StepCache(compiler_options=DRY_RUN_COMPILER_OPTIONS)
  specs = plan_programs.train_specs(run_plan)
  say = echo or (lambda line: None)
  say(f"dry run: {len(specs)} programs for mesh {dict(run_plan.mesh.shape)} on "
      f"{jax.device_count()} {jax.devices()[0].platform} devices, {workers} compiling at once"
      + (f"; XLA's messages go to {xla_log_path}" if xla_log_path else ""))
  finished = []

  def on_done(report, elapsed):
    finished.append(report)
    say(progress_line(report, elapsed, len(finished), len(specs)))

  start = time.perf_counter()
  programs = plan_programs.compile_all(run_plan, cache, specs, workers=workers,
                                       xla_log_path=xla_log_path, on_done=on_done)
  wall = time.perf_counter() - start
  reports = []
  for program, spec in zip(run_plan.programs, programs, strict=True):
    step = run_plan.step_fn(program)
    read = jax.tree.map(lambda p, r: p if r else None, run_plan.state.params, step.read_mask)
    task_counts = count_params(read, model_config.moe.num_experts, per_token_experts)
    reports.append(SignatureReport(
        task=program.name, batch=spec.batch, params_total=task_counts["total"],
        params_per_token=task_counts["per_token"],
        flops=spec.gflops * 1e9, peak_bytes=spec.peak_bytes,
        compile_seconds=spec.compile_seconds, collectives=spec.collectives))
  facts = {"mesh": dict(run_plan.mesh.shape), "devices": jax.device_count(),
           "platform": jax.devices()[0].platform, "mesh_rules": config.get("mesh_rules") or
           "fsdp", "params": counts, "compiles": cache.stats(),
           "scan_layers": model_config.scan_layers, "programs": programs,
           "choices": plan_programs.model_choices(run_plan),
           "compile_wall_seconds": round(wall, 2)}
  plan_programs.check_memory(programs, config.get("device_memory_limit"))
  return reports, facts


def check_budget(reports: list[SignatureReport], memory_budget_gb: float) -> None:
  """Raises DryRunError naming every signature whose peak memory per device is over budget."""
  over = [r for r in reports if r.peak_bytes is not None
          and r.peak_bytes > memory_budget_gb * GIB]
  if over:
    listed = "; ".join(f"{r.task}: {r.peak_bytes / GIB:.2f} GiB" for r in over)
    raise DryRunError(
        f"{len(over)} of {len(reports)} signatures exceed the per-device memory budget of "
        f"{memory_budget_gb} GiB ({listed}). Shard more (config.mesh fsdp/expert, "
        "config.mesh_rules='fsdp'), rematerialise (config.model.remat_policy='full') or "
        "lower the variants' batch_size.")


def report_lines(reports: list[SignatureReport], facts: Mapping[str, Any]) -> list[str]:
  """What `--mode=dry_run` prints: the parameters per task, then the programs table."""
  p = facts["params"]
  lines = [f"mesh {facts['mesh']} on {facts['devices']} {facts['platform']} devices, rules "
           f"{facts['mesh_rules']!r}",
           f"model: {p['total'] / 1e6:,.1f}M parameters, {p['per_token'] / 1e6:,.1f}M per token "
           f"({p['experts'] / 1e6:,.1f}M in experts)" + (
               f"; experts merged for one condition (evals.*.merge_experts): "
               f"{p['merged'] / 1e6:,.1f}M" if "merged" in p else ""),
           f"{'task':<36} {'params M':>9} {'per tok M':>9} {'GFLOPs/step':>12} "
           f"{'peak GiB/dev':>12} {'compile s':>9}  {'all-to-all':>10}  batch"]
  for r in reports:
    peak = f"{r.peak_bytes / GIB:12.3f}" if r.peak_bytes is not None else f"{'n/a':>12}"
    batch = " ".join(f"{k}{list(v)}" for k, v in sorted(r.batch.items()))
    lines.append(f"{r.task:<36} {r.params_total / 1e6:9.1f} {r.params_per_token / 1e6:9.1f} "
                 f"{r.flops / 1e9:12.1f} {peak} {r.compile_seconds:9.1f}  "
                 f"{r.collectives.get('all-to-all', 0):10d}  {batch}")
  lines.append(f"compiles: {facts['compiles']['misses']} programs, "
               f"{facts['compiles']['compile_seconds']:.1f}s")
  if facts.get("programs"):
    lines += ["", "programs compiled (as training compiles them before step 1):"]
    lines += plan_programs.table_lines(facts["programs"], facts.get("compile_wall_seconds"),
                                       facts.get("choices"))
  if facts.get("scan_layers"):
    lines.append("GFLOPs count every layer (XLA's own count of a scanned program has its loop "
                 "body once): the step's jaxpr, every scan trip, split over the devices.")
  return lines
