"""The `arrayrecord` source: datasets written by `python -m imp.data.prepare`.

A prepared directory holds one `<split>.array_record` file per split and a `metadata.json`
(class names, fields with dtypes and shapes, counts per split, the source path). Each record
is one example serialised with `np.savez` (one .npy entry per field) and read back with
`allow_pickle=False`, so reading a dataset never executes code stored in it.

Config entry (`config.datasets.<name>`):
  source: "arrayrecord"
  directory: the prepared directory (`prepare --output`).
  label_templates: prompt templates, each with one "{}".
"""

from __future__ import annotations

import io
import json
import os
import threading
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from imp.data.sources import DataSource, LazyFields, modalities_of, register_source

METADATA_FILE = "metadata.json"
FORMAT = "imp.arrayrecord"
FORMAT_VERSION = 1
# The metadata dtype of text fields (numpy stores them as "<U{n}", n varying per example).
TEXT_DTYPE = "str"
# Writer options: group_size:1 makes every record its own chunk, which random access (and
# grain, which logs an error otherwise) wants.
WRITER_OPTIONS = "group_size:1"
_DECODE_LOCK = threading.Lock()


def split_file(split: str) -> str:
  return f"{split}.array_record"


def encode_record(example: Mapping[str, np.ndarray]) -> bytes:
  """One example (field -> array; no object arrays) as `np.savez` bytes."""
  buffer = io.BytesIO()
  np.savez(buffer, **{k: np.asarray(v) for k, v in example.items()})
  return buffer.getvalue()


def decode_record(data: bytes, where: str) -> dict[str, np.ndarray]:
  """Inverse of `encode_record`; `where` ("file, record i") names the record in errors."""
  try:
    # np.load parses array headers with ast.literal_eval, which CPython < 3.11.8 cannot run
    # in several threads at once (cpython#106905: "AST constructor recursion depth
    # mismatch"); grain reads with several threads, so decoding is serialised. It is cheap.
    with _DECODE_LOCK, np.load(io.BytesIO(data), allow_pickle=False) as npz:
      return {k: npz[k] for k in npz.files}
  except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
    raise ValueError(f"{where}: not a record written by imp.data.prepare ({e}).") from e


def field_dtype(array: np.ndarray) -> str:
  """The metadata name of an array's dtype ("str" for text)."""
  return TEXT_DTYPE if array.dtype.kind == "U" else array.dtype.name


def check_record(example: Mapping[str, np.ndarray], fields: Mapping[str, Mapping[str, Any]],
                 where: str) -> None:
  """Raises ValueError (naming `where`) unless `example` matches the metadata's `fields`.

  `fields` maps field -> {"dtype": name, "shape": [dim or None (varies), ...]}.
  """
  if set(example) != set(fields):
    raise ValueError(
        f"{where}: record fields {sorted(example)} do not match metadata.json's fields "
        f"{sorted(fields)}.")
  for name, spec in fields.items():
    value = example[name]
    shape = spec["shape"]
    if (field_dtype(value) != spec["dtype"] or value.ndim != len(shape)
        or any(d is not None and d != v for d, v in zip(shape, value.shape, strict=True))):
      raise ValueError(
          f"{where}: field {name!r} is {field_dtype(value)} {list(value.shape)}, but "
          f"metadata.json says {spec['dtype']} {shape} (null: any size).")


class ArrayRecordSplit:
  """One prepared split: random access to decoded, checked examples.

  Implements grain's RandomAccessDataSource protocol (`__len__`, `__getitem__`,
  `__getitems__`); `fields` gives whole-split arrays (read lazily) like `ArraySplit`.
  """

  def __init__(self, path: str, fields: Mapping[str, Mapping[str, Any]], count: int):
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    self.path = path
    self.field_specs = {k: dict(v) for k, v in fields.items()}
    self.field_names = tuple(fields)
    try:
      self._source = ArrayRecordDataSource([path])
      length = len(self._source)
    except Exception as e:  # the reader raises bare RuntimeErrors/ValueErrors from C++
      raise ValueError(f"{path}: not a readable ArrayRecord file ({e}).") from e
    if length != count:
      raise ValueError(
          f"{path}: holds {length} records, but metadata.json says {count}; was the directory "
          f"prepared twice into the same place?")
    self.fields: Mapping[str, np.ndarray] = LazyFields(
        self, str(self.path), ": prepare with --resize (images) or --clip-seconds (audio)")

  def _decode(self, data: bytes, index: int) -> dict[str, np.ndarray]:
    where = f"{self.path}, record {index}"
    example = decode_record(data, where)
    check_record(example, self.field_specs, where)
    return example

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if not -len(self) <= index < len(self):
      raise IndexError(f"{self.path}: record {index} out of range ({len(self)} records).")
    index %= len(self)
    return self._decode(self._source[index], index)

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Batched read (one array_record call for all `indices`)."""
    indices = [int(i) for i in indices]
    records = self._source.__getitems__(indices)
    return [self._decode(data, i) for data, i in zip(records, indices, strict=True)]

  def __repr__(self) -> str:
    return f"ArrayRecordSplit({self.path}, {len(self)} examples)"


def read_metadata(directory: str) -> dict[str, Any]:
  """The checked metadata.json of a prepared directory; ValueError naming the file and why."""
  path = os.path.join(directory, METADATA_FILE)
  if not os.path.isfile(path):
    present = sorted(os.listdir(directory)) if os.path.isdir(directory) else None
    holds = ("it is not a directory" if present is None
             else f"the directory holds: {', '.join(present) or 'nothing'}")
    raise ValueError(
        f"{path}: missing; a directory prepared by `python -m imp.data.prepare` has one "
        f"({holds}).")
  try:
    with open(path, encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: not readable JSON ({e}).") from e
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise ValueError(f"{path}: not written by imp.data.prepare (no \"format\": \"{FORMAT}\").")
  if meta.get("version") != FORMAT_VERSION:
    raise ValueError(f"{path}: format version {meta.get('version')!r}; this code reads version "
                     f"{FORMAT_VERSION}. Prepare the dataset again.")
  for key, kind in (("fields", dict), ("splits", dict), ("class_names", list)):
    if not isinstance(meta.get(key), kind):
      raise ValueError(f"{path}: {key!r} is missing or not a {kind.__name__}.")
  if not meta["splits"]:
    raise ValueError(f"{path}: lists no splits.")
  return meta


@register_source("arrayrecord")
def arrayrecord_source(
    name: str,
    *,
    directory: str | None = None,
    label_templates: Sequence[str] = ("{}",),
) -> DataSource:
  """A dataset prepared by `imp.data.prepare`, read with random access from `directory`.

  Splits and class names come from metadata.json. Examples hold the stored fields: image uint8
  [H, W, C], audio float32 [samples] or [time, mel, 1], text a 0-d str array, label int32 [].
  Modalities are the stored modality fields, plus "text" when there are class names.

  Raises:
    ValueError: naming the file and the reason: metadata.json missing or malformed, a split
      file missing or unreadable, a count mismatch; reading a record that does not match the
      metadata's fields raises too, naming the file and record.
  """
  if directory is None or not str(directory).strip():
    raise ValueError(
        f"datasets.{name}.directory is not set; set it to a directory prepared by `python -m "
        f"imp.data.prepare` (e.g. --config.datasets.{name}.directory=DIR).")
  directory = os.path.expanduser(str(directory))
  if not os.path.isdir(directory):
    what = "is not a directory" if os.path.exists(directory) else "does not exist"
    raise ValueError(
        f"datasets.{name}.directory={directory!r} {what}; set it to a directory prepared by "
        f"`python -m imp.data.prepare` (it holds metadata.json and <split>.array_record).")
  meta = read_metadata(directory)
  splits = {}
  for split, info in meta["splits"].items():
    path = os.path.join(directory, info.get("file", split_file(split)))
    if not os.path.isfile(path):
      raise ValueError(
          f"{path}: missing; {os.path.join(directory, METADATA_FILE)} lists split {split!r} "
          f"with {info.get('count')} examples in it.")
    splits[split] = ArrayRecordSplit(path, meta["fields"], int(info["count"]))
  class_names = tuple(str(c) for c in meta["class_names"])
  return DataSource(
      name=name,
      modalities=modalities_of(meta["fields"], class_names),
      class_names=class_names,
      splits=splits,
      label_templates=tuple(label_templates),
  )
