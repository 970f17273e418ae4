"""How `imp.data.prepare` splits items and writes them: ArrayRecord files and metadata.json.

Examples are stored decoded (uint8 images [H, W, C], uint8 clips [T, H, W, C], float32 audio),
one record each (`arrayrecord_source.encode_record`), in ArrayRecord files whose default
chunk compression (lossless, Brotli) keeps them compact. Decoded arrays rather than the
source's encoded bytes: training reads them with no codec in the data workers, evaluation
stacks them as arrays, a lossy JPEG is not re-encoded (no second loss), and --resize stores
them at the size the model reads.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from imp.data.arrayrecord_source import (
  FORMAT,
  FORMAT_VERSION,
  METADATA_FILE,
  WRITER_OPTIONS,
  encode_record,
  field_dtype,
  split_file,
)
from imp.data.prepare_inputs import Item


def _rounded(n: int, fraction: float) -> int:
  return int(np.floor(n * fraction + 0.5))


def _check_fraction(test_fraction: float) -> None:
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(f"--test-fraction {test_fraction}: must be in [0, 1).")


def split_items(items: Sequence[Item], test_fraction: float, seed: int) -> dict[str, list[Item]]:
  """{"train": ..., "test": ...}: per class, round(count * test_fraction) go to "test".

  Seeded and stratified when items have labels (each class is split on its own), a plain
  seeded split otherwise; each split keeps the input order. test_fraction 0: "train" only.
  """
  _check_fraction(test_fraction)
  if test_fraction == 0.0:
    return {"train": list(items)}
  rng = np.random.default_rng(seed)
  groups: dict[str | None, list[int]] = {}
  for i, item in enumerate(items):
    groups.setdefault(item.label, []).append(i)
  test = set()
  for label in sorted(groups, key=str):
    members = np.asarray(groups[label])
    test.update(rng.permutation(members)[:_rounded(len(members), test_fraction)].tolist())
  return {"train": [x for i, x in enumerate(items) if i not in test],
          "test": [x for i, x in enumerate(items) if i in test]}


def split_by_groups(items: Sequence[Item], test_groups: Sequence[str] | None,
                    test_fraction: float, seed: int) -> tuple[dict[str, list[Item]], list[str]]:
  """Whole groups to "test": the named `test_groups`, or a seeded choice of
  round(groups * test_fraction) of them (at least one). Returns the splits and the test groups.
  """
  found = sorted({item.group for item in items})
  if test_groups is not None:
    missing = [g for g in test_groups if g not in found]
    if missing:
      raise ValueError(f"--test-groups {', '.join(missing)}: no file is in such a group; the "
                       f"groups found: {', '.join(found)}.")
    chosen = sorted(set(test_groups))
  else:
    _check_fraction(test_fraction)
    count = max(1, _rounded(len(found), test_fraction)) if test_fraction else 0
    chosen = sorted(np.random.default_rng(seed).permutation(found)[:count].tolist())
  if len(chosen) == len(found):
    raise ValueError(f"--test-groups: all {len(found)} groups ({', '.join(found)}) would be "
                     f"held out, leaving no training examples.")
  if not chosen:
    return {"train": list(items)}, []
  return ({"train": [x for x in items if x.group not in chosen],
           "test": [x for x in items if x.group in chosen]}, chosen)


def split_by_column(items: Sequence[Item], column: str) -> dict[str, list[Item]]:
  names = sorted({item.split for item in items})
  for name in names:
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
      raise ValueError(f"--split-by {column}: split name {name!r} must be letters, digits, _ "
                       f"or - (it names a file).")
  return {name: [x for x in items if x.split == name] for name in names}


class _FieldSpecs:
  """Accumulates each field's dtype and shape (a dim becomes None where examples differ)."""

  def __init__(self):
    self.specs: dict[str, dict[str, Any]] = {}

  def add(self, example: Mapping[str, np.ndarray], path: str) -> None:
    if self.specs and set(example) != set(self.specs):
      raise ValueError(f"{path}: fields {sorted(example)} differ from earlier examples' "
                       f"{sorted(self.specs)}.")
    for name, value in example.items():
      dtype, shape = field_dtype(value), list(value.shape)
      spec = self.specs.setdefault(name, {"dtype": dtype, "shape": shape})
      if spec["dtype"] != dtype or len(spec["shape"]) != len(shape):
        raise ValueError(f"{path}: field {name!r} is {dtype} {shape}, but earlier examples are "
                         f"{spec['dtype']} {spec['shape']}.")
      spec["shape"] = [d if d == s else None for d, s in zip(spec["shape"], shape, strict=True)]


def reason_of(error: Exception, path: str) -> str:
  """An error's message without the leading "path: " (the skip list names the path once)."""
  text = str(error).strip()
  if text.startswith(f"{path}: "):
    text = text[len(path) + 2:]
  return text or type(error).__name__


def _write_split(path: str, items: Sequence[Item], decode: Callable[[Item], dict[str, np.ndarray]],
                 label_ids: Mapping[str, int], on_error: str, specs: _FieldSpecs,
                 skipped: list[dict[str, str]]) -> tuple[int, list[int]]:
  """Decodes and writes one split's items to `path`; (examples written, per class). A bad
  item stops it (on_error="fail") or is added to `skipped`."""
  from array_record.python.array_record_module import ArrayRecordWriter

  writer = ArrayRecordWriter(path, WRITER_OPTIONS)
  count, class_counts = 0, [0] * len(label_ids)
  try:
    for item in items:
      try:
        example = decode(item)
      except ValueError as e:
        if on_error == "fail":
          raise ValueError(f"{e} (pass --on-error skip to skip bad files)") from e
        skipped.append({"path": item.path, "reason": reason_of(e, item.path)})
        continue
      if item.text is not None:
        example["text"] = np.asarray(item.text)
      if item.label is not None:
        example["label"] = np.asarray(label_ids[item.label], np.int32)
        class_counts[label_ids[item.label]] += 1
      specs.add(example, item.path)
      writer.write(encode_record(example))
      count += 1
  finally:
    writer.close()
  return count, class_counts


def _empty_classes(class_names: Sequence[str], split_meta: Mapping[str, Mapping[str, Any]],
                   on_error: str) -> list[str]:
  """A class with no examples in any split: an error (on_error="fail") or a warning."""
  totals = np.sum([info["class_counts"] for info in split_meta.values()], axis=0) if (
      class_names) else []
  empty = [name for name, total in zip(class_names, totals, strict=True) if total == 0]
  if not empty:
    return []
  message = (f"class(es) {', '.join(map(repr, empty))} have no examples: every file of "
             f"them was skipped")
  if on_error == "fail":
    raise ValueError(f"{message}; fix or remove those files.")
  return [f"{message} (the class ids stay, with no examples)."]


def write_dataset(output: str, splits: Mapping[str, Sequence[Item]],
                  decode: Callable[[Item], dict[str, np.ndarray]], *, class_names: Sequence[str],
                  on_error: str, metadata: Mapping[str, Any],
                  skipped: Iterable[Mapping[str, str]] = (),
                  split_info: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
  """Decodes and writes every split, then metadata.json; returns the metadata.

  `split_info` adds entries to a split's metadata (its "groups"). A class left with no
  examples (every file of it skipped) is an error under on_error="fail", and a warning in
  metadata.json's "warnings" under "skip". A failure (a bad file under on_error="fail", an
  empty split) removes what this call wrote.
  """
  if on_error not in ("fail", "skip"):
    raise ValueError(f"--on-error {on_error!r}: must be 'fail' or 'skip'.")
  label_ids = {name: i for i, name in enumerate(class_names)}
  skipped = [dict(s) for s in skipped]
  specs = _FieldSpecs()
  split_meta: dict[str, dict[str, Any]] = {}
  os.makedirs(output, exist_ok=True)
  written: list[str] = []
  try:
    for split, items in splits.items():
      path = os.path.join(output, split_file(split))
      written.append(path)
      count, class_counts = _write_split(path, items, decode, label_ids, on_error, specs,
                                         skipped)
      if count == 0:
        raise ValueError(
            f"split {split!r} is empty ({len(items)} listed files, all skipped)"
            if items else f"split {split!r} is empty: too few examples for this split (lower "
                          f"or raise --test-fraction, or add data)")
      split_meta[split] = {"file": split_file(split), "count": count,
                           **dict((split_info or {}).get(split, {}))}
      if class_names:
        split_meta[split]["class_counts"] = class_counts
    warnings = _empty_classes(class_names, split_meta, on_error)
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        **metadata,
        "class_names": list(class_names),
        "fields": specs.specs,
        "splits": split_meta,
        "skipped": skipped,
        "warnings": warnings,
    }
    with open(os.path.join(output, METADATA_FILE), "w", encoding="utf-8") as f:
      json.dump(meta, f, indent=2)
      f.write("\n")
  except BaseException:
    for path in written:
      if os.path.exists(path):
        os.remove(path)
    raise
  return meta
