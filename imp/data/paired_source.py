"""The `paired` source: examples of two datasets joined on a key (e.g. the same class).

  datasets.av = dict(source="paired", first="digit_images", second="spoken_digits",
                     key="label", pair_seed=0)

`first` and `second` name other entries of config.datasets (or are inline dataset specs).
An example of the paired dataset holds the fields of one example of each; they join where
their `key` values agree. For `key="label"` the values compared are class *names*, so two
datasets whose label ids are ordered differently still join correctly; the paired label is
the first dataset's label id.

Which examples pair up (per split, per key value k with n1 examples in the first dataset and
n2 in the second): max(n1, n2) pairs, the j-th joining first[perm1[j % n1]] with
second[perm2[j % n2]] for seeded permutations perm1, perm2. Every example of both datasets
appears, and the pairing is a pure function of `pair_seed`. Key values present in only one
dataset are an error naming them (nothing is dropped silently).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from imp.data.sources import DataSource, LazyFields, load_source, modalities_of, register_source


def _source(name: str, role: str, value: DataSource | Mapping[str, Any]) -> DataSource:
  if isinstance(value, DataSource):
    return value
  if isinstance(value, Mapping):
    return load_source(f"{name}.{role}", value)
  raise ValueError(f"datasets.{name}.{role}={value!r}: name another entry of config.datasets "
                   "or give a dataset spec dict.")


def _field_names(split: Any) -> tuple[str, ...]:
  names = getattr(split, "field_names", None)
  return tuple(names if names is not None else split.fields)


def _join_values(source: DataSource, split_name: str, key: str) -> np.ndarray:
  """The key value of every example of a split (class names when joining on labels)."""
  split = source.split(split_name)
  if key not in _field_names(split):
    raise ValueError(f"dataset {source.name!r} has no field {key!r} to join on; fields: "
                     f"{', '.join(_field_names(split))}.")
  values = np.asarray(split.fields[key])
  if key == "label" and source.class_names:
    return np.asarray(source.class_names, dtype=object)[values.astype(np.int64)]
  return values.astype(object)


def pair_indices(first_values: np.ndarray, second_values: np.ndarray, seed: int,
                 where: str) -> np.ndarray:
  """int64 [pairs, 2]: (first index, second index) of every pair (see the module docstring)."""
  rng = np.random.default_rng(seed)
  first_keys, second_keys = set(first_values.tolist()), set(second_values.tolist())
  unmatched = sorted(map(str, first_keys ^ second_keys))
  if unmatched:
    raise ValueError(f"{where}: key values {unmatched[:10]} occur in only one of the two "
                     "datasets; every value needs a partner.")
  pairs = []
  for value in sorted(first_keys, key=str):
    a = rng.permutation(np.flatnonzero(first_values == value))
    b = rng.permutation(np.flatnonzero(second_values == value))
    j = np.arange(max(len(a), len(b)))
    pairs.append(np.stack([a[j % len(a)], b[j % len(b)]], axis=1))
  pairs = np.concatenate(pairs)
  return pairs[np.argsort(pairs[:, 0], kind="stable")]  # first-dataset order, for readability


class PairedSplit:
  """Random access to joined examples; grain's RandomAccessDataSource protocol."""

  def __init__(self, first: Any, second: Any, pairs: np.ndarray, key: str, where: str):
    self._first, self._second, self._pairs, self._key = first, second, pairs, key
    first_names, second_names = _field_names(first), _field_names(second)
    clash = sorted((set(first_names) & set(second_names)) - {key})
    if clash:
      raise ValueError(f"{where}: both datasets have field(s) {clash}; a paired example can "
                       "hold each field once.")
    self.field_names = tuple(first_names) + tuple(n for n in second_names if n != key)
    self.fields = LazyFields(self, where)

  def __len__(self) -> int:
    return len(self._pairs)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    i, j = self._pairs[int(index)]
    example = dict(self._first[int(i)])
    example.update({k: v for k, v in self._second[int(j)].items() if k != self._key})
    return example

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Batched read: one batched read of each dataset (where it has one) for all `indices`."""
    pairs = self._pairs[np.asarray([int(i) for i in indices], np.int64)]
    firsts = _read_many(self._first, pairs[:, 0])
    seconds = _read_many(self._second, pairs[:, 1])
    return [{**a, **{k: v for k, v in b.items() if k != self._key}}
            for a, b in zip(firsts, seconds, strict=True)]


def _read_many(split: Any, indices: np.ndarray) -> list[dict[str, np.ndarray]]:
  """Examples `indices` of a split, through its batched `__getitems__` where it has one."""
  indices = [int(i) for i in indices]
  read_many = getattr(split, "__getitems__", None)
  return list(read_many(indices)) if read_many else [split[i] for i in indices]


@register_source("paired", references=("first", "second"))
def paired_source(
    name: str,
    *,
    first: DataSource | Mapping[str, Any],
    second: DataSource | Mapping[str, Any],
    key: str = "label",
    pair_seed: int = 0,
    label_templates: Sequence[str] | None = None,
) -> DataSource:
  """Two datasets joined on `key`; splits are the splits both have (see module docstring)."""
  first, second = _source(name, "first", first), _source(name, "second", second)
  shared = [s for s in first.splits if s in second.splits]
  if not shared:
    raise ValueError(f"datasets.{name}: {first.name!r} has splits {list(first.splits)} and "
                     f"{second.name!r} has {list(second.splits)}; they share none.")
  if key == "label" and bool(first.class_names) != bool(second.class_names):
    raise ValueError(f"datasets.{name}: joining on labels needs class names in both datasets.")
  splits = {}
  for i, split in enumerate(shared):
    where = f"datasets.{name} (split {split!r}: {first.name} x {second.name} on {key!r})"
    pairs = pair_indices(_join_values(first, split, key), _join_values(second, split, key),
                         pair_seed + i, where)
    splits[split] = PairedSplit(first.split(split), second.split(split), pairs, key, where)
  fields = splits[shared[0]].field_names
  return DataSource(
      name=name,
      modalities=modalities_of(fields, first.class_names),
      class_names=first.class_names,
      splits=splits,
      label_templates=tuple(label_templates or first.label_templates),
  )
