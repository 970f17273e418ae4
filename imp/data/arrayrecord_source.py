"""The `arrayrecord` source: datasets written by `python -m imp.data.prepare`.

A prepared directory holds one `<split>.array_record` file per split and a `metadata.json`
(class names, fields with dtypes and shapes, counts per split, the source path). Each record
is one example. Version 2 records (written now) are b"IMP2", a little-endian uint32 header
length, a JSON header {field: [numpy dtype str, shape, byte offset]} and the fields' raw
C-order bytes, decoded with `np.frombuffer` (no zip or .npy header parsing: decoding is the
hot path of training). Version 1 records (`np.savez`, starting b"PK") are still read, with
`allow_pickle=False`. Neither holds object arrays, so reading a dataset never executes code
stored in it.

Config entry (`config.datasets.<name>`):
  source: "arrayrecord"
  directory: the prepared directory (`prepare --output`).
  label_templates: prompt templates, each with one "{}".
"""

from __future__ import annotations

import functools
import io
import json
import math
import struct
import threading
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from imp import paths
from imp.data.sources import DataSource, LazyFields, modalities_of, register_source

METADATA_FILE = "metadata.json"
FORMAT = "imp.arrayrecord"
FORMAT_VERSION = 2  # the version written
READ_VERSIONS = (1, 2)  # the versions read
_MAGIC = b"IMP2"
_HEADER_LENGTH = struct.Struct("<I")
# dtype kinds a record may hold: bool, integers, floats, complex, text (numpy unicode).
_KINDS = frozenset("biufcU")
# The metadata dtype of text fields (numpy stores them as "<U{n}", n varying per example).
TEXT_DTYPE = "str"
# Writer options: group_size:1 makes every record its own chunk, which random access (and
# grain, which logs an error otherwise) wants.
WRITER_OPTIONS = "group_size:1"
_DECODE_LOCK = threading.Lock()


def split_file(split: str) -> str:
  return f"{split}.array_record"


def encode_record(example: Mapping[str, np.ndarray]) -> bytes:
  """One example (field -> array of a bool, number or text dtype) as version 2 bytes."""
  arrays = {k: np.asarray(v) for k, v in example.items()}
  header, offset = {}, 0
  for name, array in arrays.items():
    if array.dtype.kind not in _KINDS:
      raise ValueError(f"field {name!r} has dtype {array.dtype}; a record holds bool, number "
                       "or text arrays.")
    header[name] = [array.dtype.str, list(array.shape), offset]
    offset += array.nbytes
  head = json.dumps(header, separators=(",", ":")).encode()
  return b"".join([_MAGIC, _HEADER_LENGTH.pack(len(head)), head,
                   *(a.tobytes(order="C") for a in arrays.values())])


@functools.lru_cache(maxsize=1024)
def _layout(head: bytes) -> tuple[tuple[str, np.dtype, tuple[int, ...], int, int, int], ...]:
  """A version 2 header -> (field, dtype, shape, offset, count, end) per field, validated.

  The records of a split mostly share one header (same fields, dtypes, shapes and offsets),
  so it is parsed once and cached: decoding is the hot path of training. ValueError if
  malformed (errors are not cached)."""
  try:
    header = json.loads(head)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"unreadable header ({e})") from e
  if not isinstance(header, dict):
    raise ValueError("the header is not a JSON object")
  out = []
  for name, spec in header.items():
    try:
      dtype_str, shape, offset = spec
      dtype = np.dtype(dtype_str)
      shape = tuple(int(d) for d in shape)
      offset = int(offset)
    except (TypeError, ValueError) as e:
      raise ValueError(f"field {name!r}: bad header entry {spec!r}") from e
    if dtype.kind not in _KINDS or min(shape, default=0) < 0:
      raise ValueError(f"field {name!r}: dtype {dtype_str} shape {list(shape)} not allowed")
    count = math.prod(shape)
    end = offset + count * dtype.itemsize
    if not 0 <= offset <= end:
      raise ValueError(f"field {name!r}: bad byte offset {offset}")
    out.append((name, dtype, shape, offset, count, end))
  return tuple(out)


def _decode_v2(data: bytes) -> dict[str, np.ndarray]:
  """Version 2 bytes -> field -> read-only array (views of `data`); ValueError if malformed."""
  start = len(_MAGIC) + _HEADER_LENGTH.size
  if len(data) < start:
    raise ValueError(f"{len(data)} bytes: shorter than the header")
  (length,) = _HEADER_LENGTH.unpack_from(data, len(_MAGIC))
  body = memoryview(data)[start + length:]
  out = {}
  for name, dtype, shape, offset, count, end in _layout(bytes(data[start:start + length])):
    if end > len(body):
      raise ValueError(f"field {name!r}: bytes {offset}..{end} past the record's "
                       f"{len(body)} data bytes (truncated?)")
    out[name] = np.frombuffer(body, dtype, count, offset).reshape(shape)
  return out


def decode_record(data: bytes, where: str) -> dict[str, np.ndarray]:
  """Inverse of `encode_record` (and reads version 1 `np.savez` records); `where`
  ("file, record i") names the record in errors."""
  try:
    if data[:len(_MAGIC)] == _MAGIC:
      return _decode_v2(data)
    if data[:2] != b"PK":
      raise ValueError("neither a version 2 record nor a version 1 (npz) record")
    # np.load parses array headers with ast.literal_eval, which CPython < 3.11.8 cannot run
    # in several threads at once (cpython#106905: "AST constructor recursion depth
    # mismatch"); grain reads with several threads, so decoding is serialised.
    with _DECODE_LOCK, np.load(io.BytesIO(data), allow_pickle=False) as npz:
      return {k: npz[k] for k in npz.files}
  except (ValueError, OSError, zipfile.BadZipFile, EOFError, struct.error) as e:
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


def _open_reader(path: str) -> Any:
  """A random-access reader of one ArrayRecord file (readahead off, as grain's
  ArrayRecordDataSource opens its readers; safe to share between threads).

  The reader is used directly: ArrayRecordDataSource.__getitems__ starts and joins a thread
  pool on every call, which cost more than the read itself (about 4 ms a batch on the 2-core
  machine: docs/data.md), to spread one split's single file over one thread."""
  from array_record.python.array_record_module import ArrayRecordReader

  return ArrayRecordReader(path, "readahead_buffer_size:0")


class ArrayRecordSplit:
  """One prepared split: random access to decoded, checked examples.

  Implements grain's RandomAccessDataSource protocol (`__len__`, `__getitem__`,
  `__getitems__`); `fields` gives whole-split arrays (read lazily) like `ArraySplit`.
  """

  def __init__(self, path: str, fields: Mapping[str, Mapping[str, Any]], count: int):
    self.path = path
    self.field_specs = {k: dict(v) for k, v in fields.items()}
    self._checked: set[tuple] = set()  # record layouts that passed check_record
    self.field_names = tuple(fields)
    try:
      self._reader = _open_reader(path)
      length = self._reader.num_records()
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
    # check_record once per (field, dtype, shape) layout: the split's records share a few.
    layout = tuple((k, v.dtype, v.shape) for k, v in example.items())
    if layout not in self._checked:
      check_record(example, self.field_specs, where)
      self._checked.add(layout)
    return example

  def __len__(self) -> int:
    return self._reader.num_records()

  def __getstate__(self) -> dict[str, Any]:  # grain may pickle sources into worker processes
    return {k: v for k, v in self.__dict__.items() if k != "_reader"}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._reader = _open_reader(self.path)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if not -len(self) <= index < len(self):
      raise IndexError(f"{self.path}: record {index} out of range ({len(self)} records).")
    index %= len(self)
    return self._decode(self._reader.read([index])[0], index)

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Batched read (one array_record call for all `indices`)."""
    indices = [int(i) for i in indices]
    records = self._reader.read(indices)
    return [self._decode(data, i) for data, i in zip(records, indices, strict=True)]

  def __repr__(self) -> str:
    return f"ArrayRecordSplit({self.path}, {len(self)} examples)"


def read_metadata(directory: paths.PathLike) -> dict[str, Any]:
  """The checked metadata.json of a prepared directory; ValueError naming the file and why."""
  directory = paths.as_path(directory)
  path = directory / METADATA_FILE
  if not path.is_file():
    present = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else None
    holds = ("it is not a directory" if present is None
             else f"the directory holds: {', '.join(present) or 'nothing'}")
    raise ValueError(
        f"{path}: missing; a directory prepared by `python -m imp.data.prepare` has one "
        f"({holds}).")
  try:
    meta = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: not readable JSON ({e}).") from e
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise ValueError(f"{path}: not written by imp.data.prepare (no \"format\": \"{FORMAT}\").")
  if meta.get("version") not in READ_VERSIONS:
    raise ValueError(f"{path}: format version {meta.get('version')!r}; this code reads versions "
                     f"{', '.join(map(str, READ_VERSIONS))}. Prepare the dataset again.")
  for key, kind in (("fields", dict), ("splits", dict), ("class_names", list)):
    if not isinstance(meta.get(key), kind):
      raise ValueError(f"{path}: {key!r} is missing or not a {kind.__name__}.")
  if not meta["splits"]:
    raise ValueError(f"{path}: lists no splits.")
  return meta


def local_directory(directory: paths.PathLike, key: str) -> paths.Path:
  """Where array_record can open `directory`'s files: itself when local or gs:// (array_record
  has its own GCS reader), else (s3://, which array_record, C++ over riegeli, cannot open) a
  local copy, refreshed where objects changed (`paths.local_copy`)."""
  directory = paths.as_path(directory, key=key)
  if str(directory).startswith("s3://"):
    return paths.local_copy(directory, key=key)
  return directory


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
  key = f"datasets.{name}.directory"
  directory = local_directory(directory, key)
  if not directory.is_dir():
    what = "is not a directory" if directory.exists() else "does not exist"
    raise ValueError(
        f"{key}={str(directory)!r} {what}; set it to a directory prepared by "
        f"`python -m imp.data.prepare` (it holds metadata.json and <split>.array_record).")
  meta = read_metadata(directory)
  splits = {}
  for split, info in meta["splits"].items():
    path = directory / info.get("file", split_file(split))
    if not path.is_file():
      raise ValueError(
          f"{path}: missing; {directory / METADATA_FILE} lists split {split!r} "
          f"with {info.get('count')} examples in it.")
    splits[split] = ArrayRecordSplit(str(path), meta["fields"], int(info["count"]))
  class_names = tuple(str(c) for c in meta["class_names"])
  return DataSource(
      name=name,
      modalities=modalities_of(meta["fields"], class_names),
      class_names=class_names,
      splits=splits,
      label_templates=tuple(label_templates),
  )
