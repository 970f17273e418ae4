"""The `idx` source: the MNIST family (MNIST, Fashion-MNIST, KMNIST, ...) from IDX files.

IDX (http://yann.lecun.com/exdb/mnist/) is a big-endian array format: a 4-byte magic number
(two zero bytes, a dtype code, the number of dimensions), one uint32 per dimension, then the
values in C order. A directory holds four files, each optionally gzipped:

  train-images-idx3-ubyte  uint8 [examples, rows, cols]
  train-labels-idx1-ubyte  uint8 [examples]
  t10k-images-idx3-ubyte   (the "test" split)
  t10k-labels-idx1-ubyte

Config entry (`config.datasets.<name>`):
  source: "idx"
  directory: the folder with the files (Debian's `dataset-fashion-mnist` package puts
    Fashion-MNIST in FASHION_MNIST_DIR).
  preset: "mnist" or "fashion_mnist" (class names), or instead
  class_names: one name per label.
  label_templates: prompt templates, each with one "{}".
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence

import numpy as np

from imp.data.sources import DIGIT_NAMES, ArraySplit, DataSource, register_source

# Where Debian's `dataset-fashion-mnist` package (`apt install dataset-fashion-mnist`) installs
# the four gzipped IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                       "Sneaker", "Bag", "Ankle boot")
PRESETS: dict[str, tuple[str, ...]] = {
    "mnist": DIGIT_NAMES,
    "fashion_mnist": FASHION_MNIST_NAMES,
}

# split -> (images file, labels file), without the optional ".gz".
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# IDX dtype code (third magic byte) -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def find_idx_file(directory: str, stem: str) -> str:
  """The path of `stem` or `stem.gz` in `directory` (the uncompressed file wins)."""
  for candidate in (stem, stem + ".gz"):
    path = os.path.join(directory, candidate)
    if os.path.isfile(path):
      return path
  present = sorted(os.listdir(directory)) if os.path.isdir(directory) else []
  raise ValueError(
      f"{os.path.join(directory, stem)}: missing file (looked for {stem} and {stem}.gz); "
      f"the directory holds: {', '.join(present) or 'nothing'}.")


def _read_bytes(path: str) -> bytes:
  if not path.endswith(".gz"):
    with open(path, "rb") as f:
      return f.read()
  try:
    with gzip.open(path, "rb") as f:
      return f.read()
  except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
    raise ValueError(f"{path}: not a readable gzip file ({e}); is it truncated?") from e


def read_idx(path: str) -> np.ndarray:
  """Parses one IDX file (plain or .gz) into a native-endian array of the header's shape.

  Raises:
    ValueError: naming `path` and the reason: bad magic number, or a size that does not
      match the header (truncated or trailing data).
  """
  raw = _read_bytes(path)
  if len(raw) < 4:
    raise ValueError(f"{path}: truncated: {len(raw)} bytes, shorter than the 4-byte magic.")
  zero0, zero1, code, ndim = raw[:4]
  if zero0 or zero1 or code not in IDX_DTYPES or ndim == 0:
    raise ValueError(
        f"{path}: bad magic number 0x{raw[:4].hex()}; an IDX file starts with 0x0000, a dtype "
        f"code ({', '.join(f'0x{c:02x}' for c in IDX_DTYPES)}) and a dimension count >= 1 "
        f"(e.g. 0x00000803 for images, 0x00000801 for labels).")
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(
        f"{path}: truncated: {len(raw)} bytes, but the header of a {ndim}-dimensional IDX file "
        f"takes {header}.")
  dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
  dtype = IDX_DTYPES[code]
  expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
  if len(raw) != expected:
    kind = "truncated" if len(raw) < expected else "trailing data"
    raise ValueError(
        f"{path}: {kind}: size does not match the header: {dtype.name} "
        f"[{', '.join(map(str, dims))}] needs {expected} bytes, the file has {len(raw)}.")
  return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx_split(directory: str, split: str, num_classes: int) -> ArraySplit:
  """One split as {"image": uint8 [examples, rows, cols, 1], "label": int32 [examples]}.

  Raises:
    ValueError: naming the file and the reason (see `read_idx`), or images that are not uint8
      [examples, rows, cols], labels that are not integer [examples], count mismatches, or
      labels outside [0, num_classes).
  """
  images_stem, labels_stem = SPLIT_FILES[split]
  images_path = find_idx_file(directory, images_stem)
  labels_path = find_idx_file(directory, labels_stem)
  images = read_idx(images_path)
  labels = read_idx(labels_path)
  if images.ndim != 3 or images.dtype != np.uint8:
    raise ValueError(
        f"{images_path}: images must be uint8 [examples, rows, cols], but the file holds "
        f"{images.dtype} {list(images.shape)}.")
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        f"{labels_path}: labels must be integer [examples], but the file holds {labels.dtype} "
        f"{list(labels.shape)}.")
  if len(images) != len(labels):
    raise ValueError(
        f"{labels_path}: image/label count mismatch: {len(labels)} labels for {len(images)} "
        f"images in {images_path}.")
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if len(bad):
    raise ValueError(
        f"{labels_path}: label {int(labels[bad[0]])} (example {int(bad[0])}, {len(bad)} in all) "
        f"is outside the class list; valid labels are 0..{num_classes - 1}.")
  return ArraySplit({"image": images[..., None], "label": labels.astype(np.int32)})


def _class_names(name: str, preset: str | None,
                 class_names: Sequence[str] | None) -> tuple[str, ...]:
  if preset is not None and class_names is not None:
    raise ValueError(
        f"datasets.{name}: set datasets.{name}.preset or datasets.{name}.class_names, not both.")
  if preset is not None:
    if preset not in PRESETS:
      raise ValueError(
          f"datasets.{name}.preset={preset!r} is not a preset; valid presets: "
          f"{', '.join(PRESETS)}.")
    return PRESETS[preset]
  if class_names is None or isinstance(class_names, str) or not len(class_names):
    raise ValueError(
        f"datasets.{name}: IDX files carry no class names; set datasets.{name}.preset "
        f"({', '.join(PRESETS)}) or datasets.{name}.class_names (one name per label), got "
        f"class_names={class_names!r}.")
  return tuple(str(c) for c in class_names)


@register_source("idx")
def idx_source(
    name: str,
    *,
    directory: str,
    class_names: Sequence[str] | None = None,
    preset: str | None = None,
    label_templates: Sequence[str] = ("{}",),
) -> DataSource:
  """An MNIST-family dataset read from IDX files in `directory`.

  Splits "train" (train-*) and "test" (t10k-*), held in memory; images uint8 [rows, cols, 1]
  ([28, 28, 1] for the MNIST family), labels int32. Modalities: image, and text from the
  class names.

  Raises:
    ValueError: bad preset/class_names (naming `datasets.<name>.<setting>`), a missing
      directory, or a file problem (naming the file and the reason).
  """
  names = _class_names(name, preset, class_names)
  directory = os.path.expanduser(str(directory))
  if not os.path.isdir(directory):
    raise ValueError(
        f"datasets.{name}.directory={directory!r} is not a directory; it should hold "
        f"{', '.join(f for pair in SPLIT_FILES.values() for f in pair)} (each optionally .gz). "
        f"For Fashion-MNIST, `apt install dataset-fashion-mnist` puts them in "
        f"{FASHION_MNIST_DIR}.")
  splits = {split: read_idx_split(directory, split, len(names)) for split in SPLIT_FILES}
  shapes = {split: data.fields["image"].shape[1:] for split, data in splits.items()}
  if len(set(shapes.values())) > 1:
    raise ValueError(
        f"datasets.{name}.directory={directory!r}: image sizes differ between splits: "
        f"{shapes}.")
  return DataSource(
      name=name,
      modalities=("image", "text"),
      class_names=names,
      splits=splits,
      label_templates=tuple(label_templates),
  )
