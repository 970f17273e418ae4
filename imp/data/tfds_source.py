"""The `tfds` source: random access to a prepared TensorFlow Datasets dataset, without TensorFlow.

Reads the dataset's `array_record` files through `tfds.data_source`'s machinery
(`tfds.builder(...).as_data_source(split)`), which decodes examples with NumPy (and PIL for
encoded images), so neither TensorFlow nor a download is involved: the dataset must already be
prepared in `data_dir` with `file_format="array_record"`.

Config entry (`config.datasets.<name>`):
  source: "tfds"
  tfds_name: "name[/config][:version]" as TFDS spells it.
  data_dir: where it was prepared (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets).
  splits: our split name -> TFDS split string; slices and sums such as "train[:90%]" or
    "train+validation" work.
  features: our field ("image", "label", "text", "audio", "video") -> the dataset's feature.
    Images may be `tfds.features.Image` (PNG or JPEG, decoded by Pillow) or uint8 tensors;
    video a `tfds.features.Sequence` of images (uint8 [frames, H, W, C]). `tfds.features.Video`
    needs TensorFlow in TFDS 4.9 (its constructor calls `tf.dtypes`), so it is not read here.
  class_names: overrides the label feature's `ClassLabel` names.
  label_templates: prompt templates, each with one "{}".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from imp import paths
from imp.data.arrayrecord_source import local_directory
from imp.data.sources import DataSource, LazyFields, modalities_of, register_source

# Fields a `features` entry may map, and which of them are modalities (registry.MODALITIES).
FIELDS = ("image", "label", "text", "audio", "video")

DEFAULT_SPLITS: Mapping[str, str] = MappingProxyType({"train": "train", "test": "test"})
DEFAULT_FEATURES: Mapping[str, str] = MappingProxyType({"image": "image", "label": "label"})


def _as_dict(value: Any, key: str) -> dict[str, str]:
  """A config mapping (dict, ConfigDict) as a plain dict of strings."""
  if not hasattr(value, "keys"):
    raise ValueError(f"{key} must be a mapping, got {value!r}.")
  out = dict(value)
  for k, v in out.items():
    if not isinstance(k, str) or not isinstance(v, str):
      raise ValueError(f"{key} must map names to strings, got {k!r}: {v!r}.")
  return out


def _convert(field: str, value: Any) -> np.ndarray:
  """One decoded TFDS feature value as the numpy array pipelines expect for `field`.

  image: uint8 [H, W, C] (a channel axis is added to grayscale [H, W]).
  label: int32 [] scalar.
  text: a 0-d unicode array (TFDS decodes `Text` to bytes; pipelines call `str()` on it).
  audio, video: the decoded array, unchanged.
  """
  if field == "image":
    image = np.asarray(value)
    return image[..., None] if image.ndim == 2 else image
  if field == "label":
    return np.asarray(value, np.int32)
  if field == "text":
    if isinstance(value, np.ndarray) and value.ndim == 0:
      value = value.item()
    if isinstance(value, bytes):
      value = value.decode("utf-8")
    return np.asarray(str(value))
  return np.asarray(value)


class TfdsSplit:
  """A random-access split over a TFDS data source, with our field names.

  Implements grain's RandomAccessDataSource protocol (`__len__`, `__getitem__`); examples hold
  only the mapped fields, converted by `_convert`. `fields` gives whole-split arrays (read
  lazily) for code written against `ArraySplit`.
  """

  def __init__(self, source: Sequence[dict[str, Any]], features: Mapping[str, str],
               description: str):
    """
    Args:
      source: a TFDS data source (`builder.as_data_source(split)`).
      features: our field name -> the dataset's feature name.
      description: "datasets.<name>.splits.<split>=<tfds split>", for errors.
    """
    self._source = source
    self._features = dict(features)
    self.description = description
    self.field_names = tuple(self._features)
    self.fields: Mapping[str, np.ndarray] = LazyFields(self, self.description)

  def _example(self, raw: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {ours: _convert(ours, raw[theirs]) for ours, theirs in self._features.items()}

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return self._example(self._source[index])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Batched read (one array_record call for all `indices`)."""
    return [self._example(raw) for raw in self._source.__getitems__(list(indices))]

  def __repr__(self) -> str:
    return f"TfdsSplit({self.description}, {len(self)} examples)"


def _builder(name: str, tfds_name: str, data_dir: str | None):
  """The prepared dataset's builder, reading array_record files; ValueError when unusable."""
  import tensorflow_datasets as tfds

  where = data_dir or f"{tfds.core.constants.get_default_data_dir()} (the default data_dir)"
  prepare = (
      f"Prepare it first, e.g. `tfds build {tfds_name} --data_dir={data_dir or '<data_dir>'} "
      f"--file_format=array_record` (or with `python -m imp.data.prepare`), or set "
      f"datasets.{name}.data_dir to where it is prepared.")
  try:
    # `file_format` selects the random-access files; the default format (tfrecord) has none.
    builder = tfds.builder(tfds_name, data_dir=data_dir, file_format="array_record")
  except tfds.core.DatasetNotFoundError as e:
    raise ValueError(
        f"datasets.{name}.tfds_name={tfds_name!r}: no prepared TFDS dataset of that name in "
        f"{where}. {prepare}") from e
  except ValueError as e:
    if "file format" not in str(e).lower():
      raise ValueError(f"datasets.{name}.tfds_name={tfds_name!r} in {where}: {e}") from e
    raise ValueError(
        f"datasets.{name}.tfds_name={tfds_name!r} in {where} is not prepared in the "
        f"array_record format, which random access needs ({e}). Prepare it again with "
        f"`tfds build {tfds_name} --file_format=array_record`.") from e
  if not builder.is_prepared():
    # A builder TFDS has code for, but whose files are not in data_dir (download never runs).
    raise ValueError(
        f"datasets.{name}.tfds_name={tfds_name!r}: TFDS knows this dataset but it is not "
        f"prepared in {where} (looked for {builder.data_dir}). {prepare}")
  return builder


def _check_feature(name: str, field: str, feature_name: str, feature: Any) -> None:
  """Rejects features whose decoded values would not fit what pipelines expect of `field`."""
  if field not in ("image", "label", "video"):
    return  # text and audio pass through as decoded
  key = f"datasets.{name}.features.{field}"
  try:
    shape, dtype = tuple(feature.shape), np.dtype(feature.np_dtype)
  except TypeError as e:  # nested features (FeaturesDict, Sequence) have dict shapes/dtypes
    raise ValueError(f"{key}={feature_name!r} is a nested feature ({feature!r}); map a tensor, "
                     f"image or class label feature.") from e
  if field == "image" and (dtype != np.uint8 or len(shape) not in (2, 3)):
    raise ValueError(
        f"{key}={feature_name!r}: images must be uint8 [H, W] or [H, W, C], but the feature "
        f"is {dtype} {list(shape)}.")
  if field == "video" and (dtype != np.uint8 or len(shape) != 4):
    raise ValueError(
        f"{key}={feature_name!r}: videos must be uint8 [frames, H, W, C] (e.g. "
        f"tfds.features.Sequence(tfds.features.Image(...))), but the feature is {dtype} "
        f"{list(shape)}.")
  if field == "label" and (shape != () or not np.issubdtype(dtype, np.integer)):
    raise ValueError(
        f"{key}={feature_name!r}: labels must be integer scalars, but the feature is {dtype} "
        f"{list(shape)}.")


def _class_names(name: str, tfds_name: str, features: Mapping[str, str], info: Any,
                 class_names: Sequence[str] | None) -> tuple[str, ...]:
  """The class names of a labelled dataset (`class_names`, else the label's ClassLabel);
  () without a label field."""
  import tensorflow_datasets as tfds

  names: tuple[str, ...] = ()
  if "label" not in features:
    return names
  label_feature = info.features[features["label"]]
  tfds_names = None
  if isinstance(label_feature, tfds.features.ClassLabel) and label_feature.num_classes:
    tfds_names = tuple(label_feature.names)
  if class_names is not None:
    names = tuple(str(c) for c in class_names)
    if tfds_names is not None and len(names) != len(tfds_names):
      raise ValueError(
          f"datasets.{name}.class_names has {len(names)} names but label feature "
          f"{features['label']!r} of {tfds_name!r} has {len(tfds_names)} classes.")
  elif tfds_names is not None:
    names = tfds_names
  if not names:
    raise ValueError(
        f"datasets.{name}.class_names: label feature {features['label']!r} of {tfds_name!r} "
        f"is not a ClassLabel with names; give the class names in datasets.{name}.class_names.")
  return names


def _split_sources(name: str, tfds_name: str, builder: Any, splits: Mapping[str, str],
                   features: Mapping[str, str]) -> dict[str, TfdsSplit]:
  """Each of our splits as a TFDS data source, its size checked without reading it."""
  info, split_sources = builder.info, {}
  for ours, theirs in splits.items():
    description = f"datasets.{name}.splits.{ours}={theirs!r}"
    try:
      # SubSplitInfo: resolves slices ("train[:90%]") and sums ("train+test") without reading.
      num_examples = info.splits[theirs].num_examples
    except (ValueError, KeyError) as e:
      raise ValueError(
          f"{description}: not a split of {tfds_name!r} ({e}); its splits: "
          f"{', '.join(info.splits.keys())} (slices like 'train[:90%]' work too).") from e
    if num_examples == 0:
      raise ValueError(f"{description}: the split of {tfds_name!r} is empty.")
    split_sources[ours] = TfdsSplit(builder.as_data_source(split=theirs), features, description)
  return split_sources


@register_source("tfds")
def tfds_source(
    name: str,
    *,
    tfds_name: str,
    data_dir: str | None = None,
    splits: Mapping[str, str] = DEFAULT_SPLITS,
    features: Mapping[str, str] = DEFAULT_FEATURES,
    class_names: Sequence[str] | None = None,
    label_templates: Sequence[str] = ("{}",),
) -> DataSource:
  """A prepared TFDS dataset (array_record files) as random-access splits.

  Examples hold the fields named in `features` under our names: image uint8 [H, W, C],
  label int32 [], text a 0-d str array, audio/video as decoded. Class names come from
  `class_names`, else from the label feature's `ClassLabel`. Modalities are the mapped
  modality fields, plus "text" when there are class names (label text).

  Raises:
    ValueError: naming the `datasets.<name>.<setting>` at fault: dataset not prepared in
      `data_dir` (or not as array_record), unknown split or feature, empty split, unusable
      feature type, or a labelled dataset without class names.
  """

  if not isinstance(tfds_name, str) or not tfds_name:
    raise ValueError(f"datasets.{name}.tfds_name must be a TFDS dataset name, got {tfds_name!r}.")
  if data_dir is not None:
    # TFDS reads gs:// itself (its metadata through etils.epath, its array_record files with
    # array_record's GCS reader); as_path refuses unknown schemes by name.
    data_dir = str(paths.as_path(data_dir, key=f"datasets.{name}.data_dir"))
    if data_dir.startswith("s3://"):  # array_record cannot open s3://: read a local copy
      folder = tfds_name.split(":")[0].split("/")[0]  # the dataset's folder under data_dir
      data_dir = str(local_directory(f"{data_dir}/{folder}", f"datasets.{name}.data_dir").parent)
  splits = _as_dict(splits, f"datasets.{name}.splits")
  features = _as_dict(features, f"datasets.{name}.features")
  if not splits:
    raise ValueError(f"datasets.{name}.splits is empty; map split names to TFDS splits, e.g. "
                     f"{{'train': 'train', 'test': 'test'}}.")
  for field in features:
    if field not in FIELDS:
      raise ValueError(
          f"datasets.{name}.features: {field!r} is not a field; valid fields: "
          f"{', '.join(FIELDS)}.")
  if not features:
    raise ValueError(f"datasets.{name}.features is empty; map fields ({', '.join(FIELDS)}) "
                     f"to the dataset's features.")

  builder = _builder(name, tfds_name, data_dir)
  info = builder.info
  available = sorted(info.features.keys())
  for field, feature_name in features.items():
    if feature_name not in info.features:
      raise ValueError(
          f"datasets.{name}.features.{field}={feature_name!r}: {tfds_name!r} has no such "
          f"feature; its features: {', '.join(available)}.")
    _check_feature(name, field, feature_name, info.features[feature_name])

  names = _class_names(name, tfds_name, features, info, class_names)
  split_sources = _split_sources(name, tfds_name, builder, splits, features)

  return DataSource(
      name=name,
      modalities=modalities_of(features, names),
      class_names=names,
      splits=split_sources,
      label_templates=tuple(label_templates),
  )
