r"""Task interference (Uni-Perceiver-MoE §3.1), gradient sign purity and inter-task affinity
(M3SAT §4.3, Appendix C.5-C.6), from per-task gradients of a checkpoint.

  python -m imp.analysis.interference --config experiments/digits.py --workdir /tmp/digits \
      --batches 4 --select 'ffn_l0=(layers\[0\]|layer_0)/.*(mlp|moe)'

Glossary: T tasks, B sampled batches per task, P selected parameters (flattened).

- Interference (eq. 1-2). Updating the selected parameters along task j's normalised gradient
  changes task i's loss by Δ_j L_i(x_i) ≈ λ E_{x_j}[g_j(x_j)/|g_j(x_j)|]ᵀ g_i(x_i) to first
  order; I(i, j) = E_{x_i}[Δ_j L_i(x_i) / Δ_i L_i(x_i)]. λ cancels, I(i, i) = 1, and a
  negative I(i, j) means a step on task j raises task i's loss.
- Gradient positive sign purity (eq. 8), per parameter: P = (1 + Σ_i g_i / Σ_i |g_i|) / 2 with
  g_i task i's mean gradient. 1 or 0: every task pushes the parameter the same way; 0.5: the
  tasks cancel. Reported as the fraction of parameters in five intervals of [0, 1].
- Inter-task affinity (eq. 9): Z(i -> j) = 1 - L_j(θ after one SGD step on task i) / L_j(θ).
  The step moves only the selected parameters, at learning rate `--lr`; positive Z means task
  i's step helps task j.

Each task's loss is the train step's own (`imp.step.step.make_loss_fn`): the objective, loss
weight and MoE auxiliary loss, with DropToken and router noise from a fixed seed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

PURITY_BINS = 5


# ---- Pure metrics ---------------------------------------------------------------------------


def interference_matrix(task_grads: Sequence[npt.ArrayLike]) -> np.ndarray:
  """I [T, T] from per-batch gradients (eq. 1-2, first order).

  Args:
    task_grads: one [B_t, P] array per task: the gradient of each sampled batch.

  Returns:
    float64 [T, T]; row i is the task whose loss changes, column j the task that steps.
  """
  grads = [np.asarray(g, np.float64) for g in task_grads]
  if not grads or any(g.ndim != 2 or g.shape[1] != grads[0].shape[1] for g in grads):
    raise ValueError(f"task_grads must be [batches, params] arrays with one params size, got "
                     f"{[g.shape for g in grads]}")
  norms = [np.linalg.norm(g, axis=1, keepdims=True) for g in grads]
  if any((n == 0).any() for n in norms):
    raise ValueError("a sampled batch has an all-zero gradient on the selected parameters; "
                     "interference is undefined (do the tasks read them?)")
  # E_{x_j}[unit gradient of task j]: the expected update direction of a step on task j.
  directions = np.stack([(g / n).mean(axis=0) for g, n in zip(grads, norms, strict=True)])
  out = np.empty((len(grads), len(grads)))
  for i, g in enumerate(grads):
    change = g @ directions.T  # [B_i, T]: Δ_j L_i(x_i) / λ for every batch x_i and task j
    out[i] = (change / change[:, i:i + 1]).mean(axis=0)
  return out


def sign_purity(task_grads: npt.ArrayLike) -> np.ndarray:
  """P [P] per parameter from task gradients [T, P] (eq. 8); 0.5 where every task's is 0."""
  g = np.asarray(task_grads, np.float64)
  if g.ndim != 2:
    raise ValueError(f"task_grads must be [tasks, params], got {g.shape}")
  total, magnitude = g.sum(axis=0), np.abs(g).sum(axis=0)
  return 0.5 * (1.0 + np.divide(total, magnitude, out=np.zeros_like(total),
                                where=magnitude > 0))


def purity_histogram(purity: npt.ArrayLike, bins: int = PURITY_BINS) -> np.ndarray:
  """Fraction of parameters in each of `bins` equal intervals of [0, 1] (M3SAT Fig. 4)."""
  counts, _ = np.histogram(np.asarray(purity), bins=bins, range=(0.0, 1.0))
  return counts / max(counts.sum(), 1)


def task_affinity(loss_before: npt.ArrayLike, loss_after: npt.ArrayLike) -> np.ndarray:
  """Z [T, T]: Z[i, j] = 1 - loss_after[i, j] / loss_before[j] (eq. 9).

  Args:
    loss_before: [T] each task's loss on its batch at the checkpoint.
    loss_after: [T, T] task j's loss on the same batch after one step on task i.
  """
  before, after = np.asarray(loss_before, np.float64), np.asarray(loss_after, np.float64)
  if after.shape != (len(before), len(before)):
    raise ValueError(f"loss_after must be [T, T] = {(len(before),) * 2}, got {after.shape}")
  return 1.0 - after / before[None, :]


# ---- Parameter selection --------------------------------------------------------------------


def named_leaves(params: Any) -> dict[str, Any]:
  """'/'-joined path -> leaf; a scanned encoder leaf (under ".../layers/") is split along its
  leading axis into "layers[i]/..." entries, so one regex can pick a layer either way."""
  import jax

  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if "/layers/" in f"/{name}/":
      head, tail = name.split("layers/", 1) if "layers/" in name else (name, "")
      for i in range(leaf.shape[0]):
        out[f"{head}layers[{i}]/{tail}"] = leaf[i]
    else:
      out[name] = leaf
  return out


def select(names: Sequence[str], pattern: str) -> list[str]:
  """Names matching regex `pattern` (re.search); raises if none does."""
  chosen = [n for n in names if re.search(pattern, n)]
  if not chosen:
    sample = ", ".join(list(names)[:8])
    raise ValueError(f"--select {pattern!r} matches no parameter; names look like: {sample}, ...")
  return chosen


def flat_selected(grads: Any, chosen: Sequence[str]) -> np.ndarray:
  """The chosen leaves of a gradient pytree, as one float64 vector [P]."""
  leaves = named_leaves(grads)
  return np.concatenate([np.asarray(leaves[n], np.float64).ravel() for n in chosen])


def summary_matrices(task_grads: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Interference, purity and its histogram from task -> [B, P] gradients, JSON-ready."""
  grads = list(task_grads.values())
  purity = sign_purity(np.stack([g.mean(axis=0) for g in grads]))
  return {"tasks": list(task_grads), "interference": interference_matrix(grads).tolist(),
          "sign_purity_histogram": purity_histogram(purity).tolist(),
          "sign_purity_mean_distance_from_half": float(np.abs(purity - 0.5).mean()),
          "parameters": int(grads[0].shape[1])}


def selection_mask(params: Any, chosen: Sequence[str]) -> Any:
  """float32 pytree like `params`: 1 on the chosen parameters (scanned layers sliced), else 0."""
  import jax

  chosen = set(chosen)

  def leaf_mask(path, leaf):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if "/layers/" in f"/{name}/":
      head, tail = name.split("layers/", 1)
      rows = [float(f"{head}layers[{i}]/{tail}" in chosen) for i in range(leaf.shape[0])]
      return np.asarray(rows, np.float32).reshape((-1,) + (1,) * (leaf.ndim - 1)) * np.ones(
          leaf.shape, np.float32)
    return np.full(leaf.shape, float(name in chosen), np.float32)

  return jax.tree_util.tree_map_with_path(leaf_mask, params)


# ---- The command -----------------------------------------------------------------------------


def analyse(config: Any, workdir: str, *, batches: int, selections: Mapping[str, str],
            lr: float, seed: int = 0, tasks: Sequence[str] | None = None) -> dict[str, Any]:
  """Per-task gradients of the latest checkpoint -> matrices per selection (JSON-ready).

  tasks: the task variants to compare ("entry/variant" names; default every one)."""
  import jax

  from imp.data import task_dataset
  from imp.run.restore import restore_latest
  from imp.step.step import make_loss_fn

  exp, state = restore_latest(config, workdir)
  exp.checkpointer.close()
  if tasks is not None and set(tasks) - set(exp.registry.names):
    raise ValueError(f"tasks {sorted(set(tasks) - set(exp.registry.names))} are not task "
                     f"variants of this config; valid: {', '.join(exp.registry.names)}")
  params, rng = state.params, jax.random.PRNGKey(seed)
  grads, losses, first = {}, {}, {}
  for index, task in enumerate(exp.registry):
    if tasks is not None and task.name not in tasks:
      continue
    loss_fn = make_loss_fn(exp.model, exp.plan.specs[task.name])
    total = jax.jit(lambda p, b, r, f=loss_fn: f(p, b, r)[0])
    losses[task.name] = total
    grad = jax.jit(jax.grad(total))
    data = iter(task_dataset(exp.sources[task.dataset], task, seed=seed + index,
                             num_threads=1, prefetch=1, audio_dtype=exp.model.config.dtype))
    sampled = [next(data) for _ in range(batches)]
    first[task.name] = sampled[0]
    grads[task.name] = [grad(params, b, jax.random.fold_in(rng, k)) for k, b in enumerate(sampled)]
  names = list(named_leaves(params))
  out = {"checkpoint_step": int(state.step), "batches_per_task": batches, "lr": lr,
         "selections": {}}
  for label, pattern in selections.items():
    chosen = select(names, pattern)
    flat = {t: np.stack([flat_selected(g, chosen) for g in gs]) for t, gs in grads.items()}
    result = summary_matrices(flat)
    # Affinity: one SGD step of the selected parameters along task i's mean gradient.
    mask = selection_mask(params, chosen)
    tasks = list(grads)
    before = [float(losses[t](params, first[t], rng)) for t in tasks]
    after = np.empty((len(tasks), len(tasks)))
    for i, ti in enumerate(tasks):
      mean = jax.tree.map(lambda *g: sum(g) / len(g), *grads[ti])
      stepped = jax.tree.map(lambda p, g, m: p - lr * m * g, params, mean, mask)
      after[i] = [float(losses[tj](stepped, first[tj], rng)) for tj in tasks]
    result["affinity"] = task_affinity(before, after).tolist()
    result["pattern"], result["selected"] = pattern, len(chosen)
    out["selections"][label] = result
  return out


def default_selections(depth_units: int) -> dict[str, str]:
  """One selection per encoder layer's FFN (dense or MoE), plus the whole encoder."""
  sel = {f"ffn_l{i}": rf"(layers\[{i}\]|layer_{i})/.*(mlp|moe)" for i in range(depth_units)}
  sel["encoder"] = r"encoder/"
  return sel


def main(argv: Sequence[str] | None = None) -> None:
  import argparse
  import json

  from imp import paths
  from imp.analysis import ablations, plots
  from imp.model import ModelConfig

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="experiment config file[:arg]")
  parser.add_argument("--workdir", required=True, help="workdir with checkpoints/")
  parser.add_argument("--batches", type=int, default=8, help="sampled batches per task")
  parser.add_argument("--lr", type=float, default=None,
                      help="SGD step for the affinity (default: config.optimizer.learning_rate)")
  parser.add_argument("--select", action="append", default=[],
                      help="NAME=REGEX over parameter paths (repeatable; default: every "
                      "layer's FFN and the whole encoder)")
  parser.add_argument("--tasks", default=None,
                      help="comma-separated task variants to compare, e.g. "
                      "'spoken_cls/base,images_cls/base' (default: every one)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  out = paths.command_line_path(args.workdir, key="--workdir") / "analysis"
  config = ablations.config_from_file(args.config)
  selections = dict(s.split("=", 1) for s in args.select)
  if not selections:
    model = ModelConfig.from_config(config.model)
    selections = default_selections(model.depth // model.moe.every)
  lr = args.lr if args.lr is not None else float(config.optimizer.learning_rate)
  result = analyse(config, args.workdir, batches=args.batches, selections=selections, lr=lr,
                   seed=args.seed, tasks=args.tasks.split(",") if args.tasks else None)
  paths.write_text(out / "interference.json", json.dumps(result, indent=2) + "\n")
  for label, r in result["selections"].items():
    plots.plot_task_matrix(r["interference"], r["tasks"], out / f"interference_{label}.png",
                           f"interference I(i, j), {label}")
    plots.plot_task_matrix(r["affinity"], r["tasks"], out / f"affinity_{label}.png",
                           f"affinity Z(i -> j), {label}")
  print(f"wrote {out / 'interference.json'} and PNGs in {out}")


if __name__ == "__main__":
  main()
