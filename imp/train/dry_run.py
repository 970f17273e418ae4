"""Dry run: will this config fit? Compile every task's train step for the mesh; touch no data.

Under `config.sampling.schedule="weighted_sum"` the one program over every task is compiled.

  python -m imp.main --config experiments/imp_moe_l.py --mode=dry_run \
      --cpu_devices=8 --dry_run_batch_divisor=4096 --memory_budget_gb=16

The model and optimizer state are built abstractly (jax.eval_shape: no parameter is
allocated), with the shardings of `config.mesh` and `config.mesh_rules`. Each task variant's
train step is lowered and compiled by the StepCache (so compiles are counted as in training)
on ShapeDtypeStruct batches built from the variant's declared shapes. Per task it reports the
parameters the task reads (total and per token), FLOPs per step from the compiler's cost
analysis and peak device memory from its memory analysis; `check_budget` then fails if any
signature needs more than the per-device memory budget.

Datasets are not opened: `config.dry_run.datasets.<name>` declares what the run would learn
from them (train_examples for the sampling weights, num_classes for the heads, and the
modalities an example provides). Every dataset of `config.datasets` needs such an entry.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from imp.analysis.param_count import count_params
from imp.model import IMPModel, ModelConfig
from imp.objectives import OBJECTIVES
from imp.parallel.mesh import batch_sharding, make_mesh, replicated
from imp.parallel.rules import get_rules, under_rules
from imp.tasks import Task, TaskRegistry
from imp.train import loop
from imp.train.placement import abstract_state, train_state_shardings
from imp.train.state import make_optimizer
from imp.train.step import StepSpec, make_train_step, make_weighted_sum_step, task_table
from imp.train.step_cache import StepCache

_DATASET_KEYS = ("train_examples", "num_classes", "modalities")
COLLECTIVES = ("all-to-all", "all-gather", "all-reduce", "reduce-scatter", "collective-permute")
GIB = 1024**3


class DryRunError(loop.ConfigError):
  """The config cannot be planned, or a signature does not fit the memory budget."""


@dataclasses.dataclass(frozen=True)
class SignatureReport:
  """One compiled train step.

  Attributes:
    task: task name ("<entry>/<variant>").
    batch: field -> global shape.
    params_total, params_per_token: parameters the task's loss reads (all experts; experts
      one token passes through on average).
    flops: FLOPs per step from the compiler's cost analysis (None if not reported).
    peak_bytes: peak memory per device from the compiler's memory analysis.
    compile_seconds: time to lower and compile.
    collectives: HLO collective op -> count in the compiled program (e.g. "all-to-all": the
      MoE dispatch and combine when experts are split over the expert axis).
  """

  task: str
  batch: dict[str, tuple[int, ...]]
  params_total: int
  params_per_token: int
  flops: float | None
  peak_bytes: int | None
  compile_seconds: float
  collectives: dict[str, int] = dataclasses.field(default_factory=dict)


def _declared_datasets(config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
  declared = dict((config.get("dry_run") or {}).get("datasets") or {})
  out = {}
  for name in config.datasets:
    if name not in declared:
      raise DryRunError(
          f"config.dry_run.datasets.{name} is missing: the dry run opens no data, so declare "
          f"dict(train_examples=..., num_classes=..., modalities=(...)) for every dataset.")
    entry = dict(declared[name])
    unknown = sorted(set(entry) - set(_DATASET_KEYS))
    missing = sorted(set(_DATASET_KEYS) - set(entry))
    if unknown or missing:
      raise DryRunError(f"config.dry_run.datasets.{name}: unknown {unknown}, missing "
                        f"{missing}; valid keys: {', '.join(_DATASET_KEYS)}.")
    out[name] = dict(entry, modalities=tuple(entry["modalities"]))
  return out


def abstract_batch(task: Task, model: ModelConfig, labelled: bool,
                   ) -> dict[str, jax.ShapeDtypeStruct]:
  """The batch a task's pipeline would yield, as shapes (see imp/data/pipeline.py)."""
  v, b = task.variant, task.variant.batch_size
  out = {}
  for modality in task.modalities:
    if modality in ("image", "video") and v.resolution is None:
      raise DryRunError(f"task {task.name}: variant needs `resolution` for {modality!r}.")
    if modality == "image":
      shape = (b, *v.resolution, model.vision_channels)
    elif modality == "video":
      shape = (b, v.frames, *v.resolution, model.vision_channels)
    elif modality == "audio":
      if v.spectrogram is None:
        raise DryRunError(f"task {task.name}: variant needs `spectrogram` for audio.")
      shape = (b, *v.spectrogram, 1)
    else:
      if v.text_length is None:
        raise DryRunError(f"task {task.name}: variant needs `text_length` for text.")
      out["text"] = jax.ShapeDtypeStruct((b, v.text_length), jnp.int32)
      continue
    out[modality] = jax.ShapeDtypeStruct(shape, jnp.float32)
  if labelled:
    out["label"] = jax.ShapeDtypeStruct((b,), jnp.int32)
  return out


def _scaled_tasks(config: ml_collections.ConfigDict, divisor: int) -> dict[str, Any]:
  tasks = {}
  for entry, spec in config.tasks.to_dict().items():
    variants = {}
    for name, variant in spec["variants"].items():  # new dicts: entries may share variants
      if variant["batch_size"] % divisor:
        raise DryRunError(f"tasks.{entry}.variants.{name}.batch_size={variant['batch_size']} "
                          f"is not divisible by --dry_run_batch_divisor={divisor}.")
      variants[name] = dict(variant, batch_size=variant["batch_size"] // divisor)
    tasks[entry] = dict(spec, variants=variants)
  return tasks


def experts_per_token(model: ModelConfig) -> float:
  """Experts one token passes through on average: the capacity factor under expert choice
  (C = S * factor / E slots for each of E experts), k under token-choice top-k."""
  args = dict(model.moe.router_args)
  if model.moe.router == "expert_choice":
    return float(args.get("capacity_factor_train", 1.0))
  return float(args.get("k", 1))


def collective_counts(hlo_text: str) -> dict[str, int]:
  """Collective ops in optimized HLO text, counted by their instruction (`= f32[..] op(`);
  async pairs (`all-to-all-start`/`-done`) count once."""
  return {op: len(re.findall(rf"\s{op}(?:-start)?\(", hlo_text)) for op in COLLECTIVES}


def _first(analysis: Any) -> Any:
  return analysis[0] if isinstance(analysis, list | tuple) and analysis else analysis


def _peak_bytes(program: Any) -> int | None:
  try:
    m = _first(program.memory_analysis())
  except NotImplementedError:
    return None
  if m is None:
    return None
  peak = getattr(m, "peak_memory_in_bytes", 0)
  if peak:
    return int(peak)
  # Arguments and outputs live for the whole step; donated (aliased) buffers count once.
  return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
             + m.temp_size_in_bytes)


def plan(config: ml_collections.ConfigDict, *, batch_divisor: int = 1,
         ) -> tuple[list[SignatureReport], dict[str, Any]]:
  """Compiles every task signature of `config` for its mesh without data or parameters.

  Returns:
    (one report per task, run facts: mesh, devices, model parameter counts, compiles).

  Raises:
    DryRunError: a bad config or dry-run setting, naming the key.
  """
  try:
    return _plan(config, batch_divisor)
  except DryRunError:
    raise
  except ValueError as e:
    raise DryRunError(str(e)) from e


def _plan(config: ml_collections.ConfigDict, batch_divisor: int,
          ) -> tuple[list[SignatureReport], dict[str, Any]]:
  loop._check_config(config)
  datasets = _declared_datasets(config)
  registry = TaskRegistry.from_config(
      _scaled_tasks(config, int(batch_divisor)),
      dataset_sizes={n: int(d["train_examples"]) for n, d in datasets.items()},
      dataset_modalities={n: d["modalities"] for n, d in datasets.items()},
      objectives=list(OBJECTIVES), weighting=config.sampling.get("weighting", "size"))
  model_config = ModelConfig.from_config(config.model)
  loop._check_shapes(registry, model_config)
  mesh = make_mesh(config.get("mesh"))
  loop._check_batch_split(registry, mesh)
  heads = tuple((n, int(d["num_classes"])) for n, d in datasets.items() if d["num_classes"])
  model = IMPModel(model_config, heads=heads,
                   modalities=tuple(sorted(loop.model_modalities(registry, config.evals))),
                   tasks=task_table(registry))
  tx = make_optimizer(config.optimizer, config.total_steps)
  rules = get_rules(config.get("mesh_rules"))
  state = abstract_state(model, tx, config.seed)
  shardings = train_state_shardings(model, tx, mesh, rules, state)
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       state, shardings)
  per_token_experts = experts_per_token(model_config)
  counts = count_params(state.params, model_config.moe.num_experts, per_token_experts)
  cache = StepCache()
  reports = []
  batches = {task.name: abstract_batch(task, model_config,
                                       labelled=datasets[task.dataset]["num_classes"] > 0)
             for task in registry}
  # The programs training runs: one per task under AGD, one over every task under the
  # weighted-sum schedule (its report lists every task's batch, "<task>/<field>").
  if loop.schedule_of(config) == "agd":
    programs = [(task.name, ("train", StepSpec.from_task(task)), batches[task.name])
                for task in registry]
  else:
    specs = tuple(StepSpec.from_task(task) for task in registry)
    programs = [(f"weighted_sum of {len(specs)} tasks", ("train_weighted_sum", specs),
                 tuple(batches[task.name] for task in registry))]
  for name, key, batch in programs:
    step = (make_train_step(model, tx, key[1], state, batch) if key[0] == "train" else
            make_weighted_sum_step(model, tx, key[1], state, batch))
    start = time.perf_counter()
    program = cache.compiled(key, lambda step=step: under_rules(step, mesh, rules),
                             (state, batch), donate_argnums=(0,),
                             in_shardings=(shardings, batch_sharding(mesh)),
                             out_shardings=(shardings, replicated(mesh)))
    seconds = time.perf_counter() - start
    read = jax.tree.map(lambda p, r: p if r else None, state.params, step.read_mask)
    task_counts = count_params(read, model_config.moe.num_experts, per_token_experts)
    cost = _first(program.cost_analysis()) or {}
    fields = (batch.items() if isinstance(batch, dict) else
              [(f"{t.name}/{k}", v) for t, b in zip(registry, batch, strict=True)
               for k, v in b.items()])
    reports.append(SignatureReport(
        task=name, batch={k: tuple(v.shape) for k, v in fields},
        params_total=task_counts["total"], params_per_token=task_counts["per_token"],
        flops=float(cost["flops"]) if "flops" in cost else None,
        peak_bytes=_peak_bytes(program), compile_seconds=round(seconds, 2),
        collectives=collective_counts(program.as_text())))
  facts = {"mesh": dict(mesh.shape), "devices": jax.device_count(),
           "platform": jax.devices()[0].platform, "mesh_rules": config.get("mesh_rules") or
           "fsdp", "params": counts, "compiles": cache.stats(),
           "scan_layers": model_config.scan_layers}
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
  """The table `--mode=dry_run` prints."""
  p = facts["params"]
  lines = [f"mesh {facts['mesh']} on {facts['devices']} {facts['platform']} devices, rules "
           f"{facts['mesh_rules']!r}",
           f"model: {p['total'] / 1e6:,.1f}M parameters, {p['per_token'] / 1e6:,.1f}M per token "
           f"({p['experts'] / 1e6:,.1f}M in experts)",
           f"{'task':<36} {'params M':>9} {'per tok M':>9} {'GFLOPs/step':>12} "
           f"{'peak GiB/dev':>12} {'compile s':>9}  {'all-to-all':>10}  batch"]
  for r in reports:
    flops = f"{r.flops / 1e9:12.1f}" if r.flops is not None else f"{'n/a':>12}"
    peak = f"{r.peak_bytes / GIB:12.3f}" if r.peak_bytes is not None else f"{'n/a':>12}"
    batch = " ".join(f"{k}{list(v)}" for k, v in sorted(r.batch.items()))
    lines.append(f"{r.task:<36} {r.params_total / 1e6:9.1f} {r.params_per_token / 1e6:9.1f} "
                 f"{flops} {peak} {r.compile_seconds:9.1f}  "
                 f"{r.collectives.get('all-to-all', 0):10d}  {batch}")
  lines.append(f"compiles: {facts['compiles']['misses']} programs, "
               f"{facts['compiles']['compile_seconds']:.1f}s")
  if facts.get("scan_layers"):
    # XLA's cost analysis counts a while-loop body once, not once per iteration.
    lines.append("GFLOPs: per device, with the scanned encoder body counted once (XLA does "
                 "not multiply loops by their trip count); --config.model.scan_layers=False "
                 "counts every layer.")
  return lines
