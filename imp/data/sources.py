"""Data sources: named builders of real, labelled examples, chosen by config.

A source turns a config entry (`config.datasets.<name>`) into a `DataSource`: random-access
splits of example dicts (a grain data source), the class names and the modalities an example
provides. New sources register with `@register_source("name")`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from imp.data.tokenizer import ByteTokenizer, Tokenizer, make_tokenizer
from imp.data.transforms import check_augment

SOURCES: dict[str, Callable[..., DataSource]] = {}
# source -> settings that may name another entry of config.datasets (built first, passed in).
REFERENCES: dict[str, tuple[str, ...]] = {}


def register_source(name: str, references: tuple[str, ...] = ()):
  """Registers a builder `fn(name, **settings) -> DataSource` under `name`.

  `references` lists settings whose value may be the name of another dataset entry;
  `load_sources` builds that dataset first and passes the DataSource in its place.
  """

  def wrap(fn):
    if name in SOURCES:
      raise ValueError(f"data source {name!r} registered twice.")
    SOURCES[name] = fn
    REFERENCES[name] = tuple(references)
    return fn

  return wrap


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  """A random-access split held in memory: field -> array with a leading example axis.

  Implements grain's RandomAccessDataSource protocol (`__len__`, `__getitem__`).
  """

  fields: Mapping[str, np.ndarray]

  def __len__(self) -> int:
    return len(next(iter(self.fields.values())))

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in self.fields.items()}


class LazyFields(Mapping[str, np.ndarray]):
  """field -> array [examples, ...] of a whole split, read once on first access and kept.

  For file-backed splits (TFDS, ArrayRecord) whose code is written against `ArraySplit.fields`
  (as `pipeline.eval_batches` is). It holds the split in memory once touched, so it is meant
  for evaluation splits, not large training splits. The split needs `field_names`,
  `__len__` and a batched `__getitems__`.
  """

  read_chunk = 1024

  def __init__(self, split: Any, description: str, hint: str = ""):
    self._split, self._description, self._hint = split, description, hint
    self._values: dict[str, list[np.ndarray]] | None = None
    self._arrays: dict[str, np.ndarray] = {}
    self._lock = threading.Lock()

  def _load(self, field: str) -> np.ndarray:
    with self._lock:  # eval code may touch fields from several threads; read only once
      if self._values is None:
        split, chunk = self._split, self.read_chunk
        values: dict[str, list[np.ndarray]] = {f: [] for f in split.field_names}
        for start in range(0, len(split), chunk):
          for example in split.__getitems__(range(start, min(start + chunk, len(split)))):
            for f in values:
              values[f].append(example[f])
        self._values = values
      if field not in self._arrays:
        # Stacked per field: a ragged field (audio of varying length) fails only when asked
        # for, so `fields["label"]` works beside it.
        items = self._values[field]
        shapes = sorted({item.shape for item in items})
        if len(shapes) > 1:
          listed = ", ".join(map(str, shapes[:4])) + (", ..." if len(shapes) > 4 else "")
          raise ValueError(
              f"{self._description}: field {field!r} has examples of different shapes "
              f"({listed}); `.fields` (used by eval_batches) needs fixed-shape "
              f"fields{self._hint}.")
        self._arrays[field] = np.stack(items)
        self._values[field] = []  # held once, as the stacked array
      return self._arrays[field]

  def __getstate__(self) -> dict[str, Any]:
    # grain may pickle sources into worker processes: locks do not pickle, and the cached
    # arrays are not worth shipping (workers read examples, not fields).
    return {"split": self._split, "description": self._description, "hint": self._hint}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__init__(state["split"], state["description"], state["hint"])

  def __getitem__(self, field: str) -> np.ndarray:
    if field not in self._split.field_names:
      raise KeyError(field)
    return self._load(field)

  def __iter__(self) -> Iterator[str]:
    return iter(self._split.field_names)

  def __len__(self) -> int:
    return len(self._split.field_names)


class SkipLog:
  """Thread-safe count of skipped examples, with the first few reasons (for the logs)."""

  keep_reasons = 20

  def __init__(self):
    self.count = 0
    self.reasons: list[str] = []
    self._lock = threading.Lock()

  def add(self, reason: str) -> None:
    with self._lock:
      self.count += 1
      if len(self.reasons) < self.keep_reasons:
        self.reasons.append(reason)

  def __getstate__(self) -> dict[str, Any]:
    return {"count": self.count, "reasons": self.reasons}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__init__()
    self.count, self.reasons = state["count"], list(state["reasons"])


ON_ERROR = ("fail", "skip")


@dataclasses.dataclass(frozen=True)
class DataSource:
  """A dataset ready for pipelines.

  Attributes:
    name: the config name of the dataset.
    modalities: modalities an example provides. "text" is listed for labelled datasets
      whose class names give label text (IMP's label-text contrastive, §4.1).
    class_names: one name per label id.
    splits: split name -> ArraySplit.
    label_templates: prompt templates, each with one "{}" for the class name.
    augment: training image augmentation (imp.data.transforms.check_augment: translate,
      random_resized_crop, flip).
    on_error: "fail" (an example that cannot be decoded or transformed stops the pipeline
      with an error naming it) or "skip" (it is replaced by the next good one and counted in
      `skips`).
    skips: the examples the pipelines skipped (shared by all of this dataset's pipelines).
    tokenizer: text tokenizer (imp.data.tokenizer; `datasets.<name>.tokenizer`).
    clip_fps: video frames are sampled at this rate (stored "fps" / clip_fps frames apart);
      None takes consecutive frames.
  """

  name: str
  modalities: tuple[str, ...]
  class_names: tuple[str, ...]
  splits: Mapping[str, ArraySplit]
  label_templates: tuple[str, ...] = ("{}",)
  augment: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  on_error: str = "fail"
  skips: SkipLog = dataclasses.field(default_factory=lambda: SkipLog())
  tokenizer: Tokenizer = dataclasses.field(default_factory=ByteTokenizer)
  clip_fps: float | None = None

  def split(self, split: str) -> ArraySplit:
    if split not in self.splits:
      raise ValueError(
          f"dataset {self.name!r} has no split {split!r}; splits: {', '.join(self.splits)}.")
    return self.splits[split]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def modalities_of(fields: Iterable[str], class_names: Sequence[str]) -> tuple[str, ...]:
  """Modalities of examples with these fields; class names add "text" (label text)."""
  fields = set(fields)
  found = [m for m in ("image", "video", "audio", "text") if m in fields]
  if class_names and "text" not in found:
    found.append("text")
  return tuple(found)


def load_sources(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, DataSource]:
  """Builds every entry of config.datasets, each once; referenced datasets are built first.

  Raises:
    ValueError: a reference to a dataset that is not in `configs`, or a cycle of references.
  """
  built: dict[str, DataSource] = {}

  def build(name: str, chain: tuple[str, ...]) -> DataSource:
    if name in built:
      return built[name]
    if name in chain:
      raise ValueError(f"datasets: {' -> '.join(chain + (name,))} is a cycle of references.")
    settings = dict(configs[name])
    for key in REFERENCES.get(settings.get("source"), ()):
      ref = settings.get(key)
      if isinstance(ref, str):
        if ref not in configs:
          raise ValueError(f"datasets.{name}.{key}={ref!r} is not in config.datasets; valid: "
                           f"{', '.join(n for n in configs if n != name)}.")
        settings[key] = build(ref, chain + (name,))
    built[name] = load_source(name, settings)
    return built[name]

  return {name: build(name, ()) for name in configs}


# Settings every entry of config.datasets may carry, whatever its source (load_source).
COMMON_SETTINGS = ("source", "augment", "on_error", "tokenizer", "clip_fps")


def check_settings(name: str, source: str, settings: Mapping[str, Any]) -> None:
  """Raises ValueError naming an unknown setting of `datasets.<name>` and the valid ones."""
  parameters = inspect.signature(SOURCES[source]).parameters
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
    return
  own = [k for k, p in parameters.items() if k != "name" and p.kind in
         (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
  required = [k for k in own if parameters[k].default is inspect.Parameter.empty]
  for key in settings:
    if key not in own:
      close = difflib.get_close_matches(key, own + list(COMMON_SETTINGS), n=1)
      hint = f" Did you mean datasets.{name}.{close[0]}?" if close else ""
      raise ValueError(
          f"datasets.{name}.{key} is not a setting of source {source!r}; valid settings: "
          f"{', '.join(sorted(own))} (and for every source: {', '.join(COMMON_SETTINGS)}).{hint}")
  missing = [k for k in required if settings.get(k) is None]
  if missing:
    raise ValueError(f"datasets.{name}.{missing[0]} is not set; source {source!r} needs "
                     f"{', '.join(missing)} (e.g. --config.datasets.{name}.{missing[0]}=...).")


def load_source(name: str, settings: Mapping[str, Any]) -> DataSource:
  """Builds dataset `name` from its config entry ({"source": ..., **source settings})."""
  settings = dict(settings)
  source = settings.pop("source", None)
  augment = check_augment(dict(settings.pop("augment", None) or {}), f"datasets.{name}.augment")
  on_error = settings.pop("on_error", "fail")
  if on_error not in ON_ERROR:
    raise ValueError(f"datasets.{name}.on_error={on_error!r}; valid: {', '.join(ON_ERROR)}.")
  tokenizer = make_tokenizer(settings.pop("tokenizer", None), f"datasets.{name}.tokenizer")
  clip_fps = settings.pop("clip_fps", None)
  if clip_fps is not None and not float(clip_fps) > 0:
    raise ValueError(f"datasets.{name}.clip_fps={clip_fps!r} must be a positive number.")
  if source not in SOURCES:
    raise ValueError(
        f"datasets.{name}.source={source!r} is not a known source; valid sources: "
        f"{', '.join(sorted(SOURCES))}.")
  check_settings(name, source, settings)
  try:
    data = SOURCES[source](name, **settings)
  except TypeError as e:
    raise ValueError(f"datasets.{name}: bad settings for source {source!r}: {e}") from e
  data = dataclasses.replace(data, augment=augment, on_error=on_error, tokenizer=tokenizer,
                             clip_fps=None if clip_fps is None else float(clip_fps))
  for split_name, split in data.splits.items():
    if len(split) == 0:
      raise ValueError(f"datasets.{name}: split {split_name!r} is empty; a dataset needs "
                       "examples in every split it lists.")
  return data


DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@register_source("sklearn_digits")
def sklearn_digits(
    name: str,
    *,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    label_templates: tuple[str, ...] = ("{}",),
) -> DataSource:
  """scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes).

  Splits "train" and "test" are a stratified hold-out split of `test_fraction`. Images are
  uint8 [8, 8, 1] (the 0..16 intensities scaled by 16, clipped to 255).
  """
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"datasets.{name}.test_fraction={test_fraction} must be in (0, 1).")
  digits = load_digits()
  images = np.clip(digits.images * 16.0, 0, 255).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  index = np.arange(len(labels))
  train_idx, test_idx = train_test_split(
      index, test_size=test_fraction, stratify=labels, random_state=split_seed)
  splits = {
      split: ArraySplit({"image": images[np.sort(idx)], "label": labels[np.sort(idx)]})
      for split, idx in (("train", train_idx), ("test", test_idx))
  }
  return DataSource(
      name=name,
      modalities=("image", "text"),
      class_names=DIGIT_NAMES,
      splits=splits,
      label_templates=tuple(label_templates),
  )
