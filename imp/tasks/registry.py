"""Task registry: config entries -> validated `Task`s with sampling weights.

A config task entry names a dataset, an objective, the modalities it reads and one or more
variants (batch size, resolution, frames, DropToken rate), written out or expanded from a base
spec and a tokens-per-batch budget (`variants.auto`, see `imp.tasks.variants`). Every
(entry, variant) pair becomes one `Task` with its own fixed input signature, so the step cache
compiles one program for it.

Weights follow IMP §4.1: a task entry's weight comes from its dataset's size (or the square root
of it, as Uni-Perceiver does, or uniform, or an explicit number), and the entry's variants share
that weight equally, so adding a resolution variant does not change how often a dataset is seen.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from imp.config import schema
from imp.tasks.variants import expand_entry

MODALITIES = ("image", "video", "audio", "text")
WEIGHTINGS = ("size", "sqrt", "uniform", "explicit")

_VARIANT_KEYS = schema.keys_of("tasks.*.variants.*")  # declared once, in imp/config/schema.py
_TASK_KEYS = schema.keys_of("tasks.*")


@dataclasses.dataclass(frozen=True)
class Variant:
  """One input signature of a task.

  Attributes:
    name: variant name, unique within its task entry (e.g. "base", "hires").
    batch_size: examples per step.
    resolution: (height, width) of images/video frames, or None when no visual modality.
    frames: video frames per example; images use 1.
    drop_token: fraction of non-text tokens dropped per example while training (DropToken).
    text_length: text tokens per example, or None when no text modality.
    spectrogram: (time, frequency) bins of audio spectrograms, or None.
  """

  name: str
  batch_size: int
  resolution: tuple[int, int] | None = None
  frames: int = 1
  drop_token: float = 0.0
  text_length: int | None = None
  spectrogram: tuple[int, int] | None = None


@dataclasses.dataclass(frozen=True)
class Task:
  """One (dataset, objective, variant) triple: what a single AGD step trains on.

  Attributes:
    name: "<entry>/<variant>", unique in the registry.
    entry: the config task entry this came from.
    dataset: dataset name (also the name of its classifier head).
    objective: objective name in the objective registry.
    modalities: input modalities the objective reads, in the objective's order.
    variant: the input signature.
    weight: sampling probability (weights of all tasks sum to 1).
    loss_weight: multiplier on this task's loss.
    args: extra objective arguments as sorted (key, value) pairs, hashable.
  """

  name: str
  entry: str
  dataset: str
  objective: str
  modalities: tuple[str, ...]
  variant: Variant
  weight: float
  loss_weight: float = 1.0
  args: tuple[tuple[str, Any], ...] = ()


def _as_tuple(value: Any) -> tuple:
  if isinstance(value, str):
    return (value,)
  return tuple(value)


def _pair(value: Any, key: str) -> tuple[int, int] | None:
  if value is None:
    return None
  if isinstance(value, int):
    return (value, value)
  value = tuple(int(v) for v in value)
  if len(value) != 2:
    raise ValueError(f"{key}={value!r}: expected an int or a (height, width) pair.")
  return value


def _freeze(value: Any) -> Any:
  if isinstance(value, Mapping):
    return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
  if isinstance(value, list | tuple):
    return tuple(_freeze(v) for v in value)
  return value


def _check_name(kind: str, key: str, value: str, valid: Sequence[str]) -> None:
  if value not in valid:
    plural = kind[:-1] + "ies" if kind.endswith("y") else kind + "s"
    raise ValueError(
        f"{key}={value!r} is not a known {kind}; valid {plural}: {', '.join(sorted(valid))}.")


def _parse_variant(key: str, name: str, spec: Mapping[str, Any]) -> Variant:
  unknown = sorted(set(spec) - set(_VARIANT_KEYS))
  if unknown:
    raise ValueError(
        f"{key}.{unknown[0]} is not a variant setting; valid: {', '.join(_VARIANT_KEYS)}.")
  if "batch_size" not in spec or int(spec["batch_size"]) <= 0:
    raise ValueError(f"{key}.batch_size must be a positive int, got {spec.get('batch_size')!r}.")
  spec = schema.filled(spec, "tasks.*.variants.*")  # the unset settings at their defaults
  drop = float(spec["drop_token"])
  if not 0.0 <= drop < 1.0:
    raise ValueError(f"{key}.drop_token={drop} must be in [0, 1).")
  frames = int(spec["frames"])
  if frames <= 0:
    raise ValueError(f"{key}.frames={frames} must be positive.")
  text_length = spec.get("text_length")
  return Variant(
      name=name,
      batch_size=int(spec["batch_size"]),
      resolution=_pair(spec.get("resolution"), f"{key}.resolution"),
      frames=frames,
      drop_token=drop,
      text_length=None if text_length is None else int(text_length),
      spectrogram=_pair(spec.get("spectrogram"), f"{key}.spectrogram"),
  )


def _loss_weight(key: str, value: Any) -> float:
  """A task's loss multiplier: a finite number >= 0 (0 keeps the task's batches and MoE aux
  loss in the step but takes its objective out of the gradient)."""
  try:
    weight = float(value)
  except (TypeError, ValueError):
    weight = math.nan
  if isinstance(value, bool) or not math.isfinite(weight) or weight < 0:
    raise ValueError(f"{key}.loss_weight={value!r} must be a finite number >= 0 (default 1.0).")
  return weight


def entry_weights(
    sizes: Mapping[str, int], weighting: str, explicit: Mapping[str, float | None]
) -> dict[str, float]:
  """Normalised sampling weight per task entry.

  Args:
    sizes: entry name -> number of training examples of its dataset.
    weighting: one of WEIGHTINGS.
    explicit: entry name -> weight from config (used only for "explicit").
  """
  _check_name("weighting", "sampling.weighting", weighting, WEIGHTINGS)
  raw = {}
  for entry, size in sizes.items():
    if weighting == "size":
      raw[entry] = float(size)
    elif weighting == "sqrt":
      raw[entry] = math.sqrt(size)
    elif weighting == "uniform":
      raw[entry] = 1.0
    else:
      weight = explicit.get(entry)
      if weight is None or weight < 0:
        raise ValueError(
            f"tasks.{entry}.weight must be a non-negative number when "
            f"sampling.weighting='explicit', got {weight!r}.")
      raw[entry] = float(weight)
  total = sum(raw.values())
  if total <= 0:
    raise ValueError(f"sampling weights sum to {total}; at least one task needs weight > 0.")
  return {entry: w / total for entry, w in raw.items()}


class TaskRegistry:
  """Every task of an experiment, validated up front, with its sampling weight.

  Build it with `TaskRegistry.from_config`; index tasks by position (the sampler's draw) or
  by name.
  """

  def __init__(self, tasks: Sequence[Task]):
    if not tasks:
      raise ValueError("config.tasks is empty; an experiment needs at least one task.")
    self.tasks: tuple[Task, ...] = tuple(tasks)
    self._index = {t.name: i for i, t in enumerate(self.tasks)}

  @classmethod
  def from_config(
      cls,
      tasks_config: Mapping[str, Mapping[str, Any]],
      *,
      dataset_sizes: Mapping[str, int],
      dataset_modalities: Mapping[str, Sequence[str]],
      objectives: Sequence[str],
      weighting: str = "size",
  ) -> TaskRegistry:
    """Validates config entries and expands them into tasks.

    Args:
      tasks_config: entry name -> {dataset, objective, modalities, variants, weight,
        loss_weight, args}; variants maps a variant name to its settings.
      dataset_sizes: dataset name -> training examples (every known dataset).
      dataset_modalities: dataset name -> modalities its examples provide.
      objectives: valid objective names.
      weighting: "size" (IMP), "sqrt" (Uni-Perceiver), "uniform" or "explicit".
    """
    parsed = []
    for entry, spec in tasks_config.items():
      key = f"tasks.{entry}"
      unknown = sorted(set(spec) - set(_TASK_KEYS))
      if unknown:
        raise ValueError(
            f"{key}.{unknown[0]} is not a task setting; valid: {', '.join(_TASK_KEYS)}.")
      spec = schema.filled(spec, "tasks.*")
      for required in ("dataset", "objective", "modalities", "variants"):
        if spec.get(required) in (None, "", (), {}):
          raise ValueError(f"{key}.{required} is required.")
      _check_name("dataset", f"{key}.dataset", spec["dataset"], list(dataset_sizes))
      _check_name("objective", f"{key}.objective", spec["objective"], objectives)
      modalities = _as_tuple(spec["modalities"])
      provided = tuple(dataset_modalities[spec["dataset"]])
      for modality in modalities:
        _check_name("modality", f"{key}.modalities", modality, MODALITIES)
        if modality not in provided:
          raise ValueError(
              f"{key}.modalities: dataset {spec['dataset']!r} provides {list(provided)}, "
              f"not {modality!r}.")
      variants = [
          _parse_variant(f"{key}.variants.{name}", name, dict(v))
          for name, v in expand_entry(spec["variants"], modalities, f"{key}.variants").items()
      ]
      parsed.append((entry, spec, modalities, variants))

    weights = entry_weights(
        {entry: dataset_sizes[spec["dataset"]] for entry, spec, _, _ in parsed},
        weighting,
        {entry: spec["weight"] for entry, spec, _, _ in parsed},
    )
    tasks = []
    for entry, spec, modalities, variants in parsed:
      for variant in variants:
        tasks.append(Task(
            name=f"{entry}/{variant.name}",
            entry=entry,
            dataset=spec["dataset"],
            objective=spec["objective"],
            modalities=modalities,
            variant=variant,
            weight=weights[entry] / len(variants),
            loss_weight=_loss_weight(f"tasks.{entry}", spec["loss_weight"]),
            args=_freeze(dict(spec["args"] or {})),
        ))
    return cls(tasks)

  def __len__(self) -> int:
    return len(self.tasks)

  def __getitem__(self, index: int) -> Task:
    return self.tasks[index]

  def __iter__(self):
    return iter(self.tasks)

  def by_name(self, name: str) -> Task:
    if name not in self._index:
      raise KeyError(f"no task {name!r}; tasks: {', '.join(self._index)}.")
    return self.tasks[self._index[name]]

  @property
  def weights(self) -> tuple[float, ...]:
    return tuple(t.weight for t in self.tasks)

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(t.name for t in self.tasks)
