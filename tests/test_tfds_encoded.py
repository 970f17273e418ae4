"""The `tfds` source on encoded TFDS features: `tfds.features.Image` as PNG and JPEG, and video
as a `Sequence` of PNG images, built and read without TensorFlow.

`tfds.features.Video` itself is not covered: in tensorflow-datasets 4.9 its constructor calls
`tf.dtypes.as_dtype`, so neither writing nor reading a dataset with a Video feature works
without TensorFlow. A `Sequence(Image(...), length=T)` stores a clip the same way (one encoded
image per frame) and decodes to uint8 [T, H, W, C] with NumPy and Pillow.
"""

import io
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import imp.data.tfds_source  # noqa: F401  (registers the "tfds" source)
from imp.data import eval_batches, load_source, task_dataset
from imp.tasks import Task, Variant

NUM_TRAIN, NUM_TEST, FRAMES = 12, 4, 4


def _pixels(i: int) -> np.ndarray:
  return np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)


def _photo(i: int) -> np.ndarray:
  """A smooth 16x16 RGB image (JPEG keeps smooth images close)."""
  y, x = np.mgrid[0:16, 0:16]
  return np.stack([8 * y + i, 8 * x, np.full_like(x, 20 * i)], axis=-1).astype(np.uint8)


def _jpeg(i: int) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(_photo(i)).save(buffer, format="JPEG", quality=90)
  return buffer.getvalue()


def _png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def _clip(i: int) -> np.ndarray:
  return np.stack([np.roll(_pixels(i), t, axis=0) for t in range(FRAMES)])


with tfds.core.registered.skip_registration():

  class EncodedDigits(tfds.core.GeneratorBasedBuilder):
    """PNG and JPEG images, a grayscale PNG and a PNG clip per example; label = index % 2."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "png": tfds.features.Image(shape=(8, 8, 3), encoding_format="png"),
          "jpeg": tfds.features.Image(shape=(16, 16, 3), encoding_format="jpeg"),
          "gray": tfds.features.Image(shape=(8, 8, 1), encoding_format="png"),
          "clip": tfds.features.Sequence(tfds.features.Image(shape=(8, 8, 3)), length=FRAMES),
          "index": tfds.features.Scalar(dtype=np.int64),
          "label": tfds.features.ClassLabel(names=["even", "odd"]),
      }))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(0, NUM_TRAIN),
              "test": self._generate_examples(NUM_TRAIN, NUM_TRAIN + NUM_TEST)}

    def _generate_examples(self, start: int, stop: int):
      for i in range(start, stop):
        # Encoded without TensorFlow: TFDS stores PIL images and bytes as given.
        yield i, {"png": Image.fromarray(_pixels(i)), "jpeg": _jpeg(i),
                  "gray": _png(_pixels(i)[..., 0]), "clip": [_png(f) for f in _clip(i)],
                  "index": i, "label": i % 2}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds_encoded")
  EncodedDigits(data_dir=str(path), file_format="array_record").download_and_prepare()
  return path


def _load(data_dir, features):
  """The dataset; a label mapped to "index" gets one class per example (to find it)."""
  names = {"class_names": [str(i) for i in range(NUM_TRAIN + NUM_TEST)]} if (
      features.get("label") == "index") else {}
  return load_source("enc", dict(source="tfds", tfds_name="encoded_digits",
                                 data_dir=str(data_dir), features=features, **names))


def test_png_and_jpeg_images_decode_without_tensorflow(data_dir):
  png = _load(data_dir, {"image": "png", "label": "index"})
  jpeg = _load(data_dir, {"image": "jpeg", "label": "index"})
  gray = _load(data_dir, {"image": "gray", "label": "index"})
  for split, (lo, hi) in (("train", (0, NUM_TRAIN)), ("test", (NUM_TRAIN, NUM_TRAIN + NUM_TEST))):
    seen = set()
    for k in range(hi - lo):
      example = png.split(split)[k]
      i = int(example["label"])
      seen.add(i)
      assert example["image"].dtype == np.uint8 and example["image"].shape == (8, 8, 3)
      np.testing.assert_array_equal(example["image"], _pixels(i))  # PNG: lossless
      g = gray.split(split)[k]
      assert g["image"].shape == (8, 8, 1)
      np.testing.assert_array_equal(g["image"][..., 0], _pixels(int(g["label"]))[..., 0])
      j = jpeg.split(split)[k]
      assert j["image"].shape == (16, 16, 3)
      # JPEG: the stored bytes decode as Pillow decodes them, close to the original pixels.
      expected = np.asarray(Image.open(io.BytesIO(_jpeg(int(j["label"])))))
      np.testing.assert_array_equal(j["image"], expected)
      assert np.abs(j["image"].astype(int) - _photo(int(j["label"]))).mean() < 3
    assert seen == set(range(lo, hi))
  assert "tensorflow" not in sys.modules


def test_encoded_images_train_and_evaluate(data_dir):
  data = _load(data_dir, {"image": "jpeg", "label": "label"})
  assert data.class_names == ("even", "odd") and data.modalities == ("image", "text")
  task = Task(name="t/base", entry="t", dataset="enc", objective="nce",
              modalities=("image", "text"), weight=1.0,
              variant=Variant("base", batch_size=4, resolution=(8, 8), text_length=8))
  batch = next(iter(task_dataset(data, task, seed=0, num_threads=1)))
  assert batch["image"].shape == (4, 8, 8, 3) and batch["image"].dtype == np.uint8
  evals = eval_batches(data, "test", modality="image", resolution=(8, 8), batch_size=4)
  assert evals.labels.shape == (NUM_TEST,) and evals.batches[0]["image"].shape == (4, 8, 8, 3)


def test_png_clips_as_video(data_dir):
  data = _load(data_dir, {"video": "clip", "label": "index"})
  assert data.modalities == ("video", "text")
  for k in range(NUM_TEST):
    example = data.split("test")[k]
    assert example["video"].dtype == np.uint8 and example["video"].shape == (FRAMES, 8, 8, 3)
    np.testing.assert_array_equal(example["video"], _clip(int(example["label"])))
  evals = eval_batches(data, "test", modality="video", resolution=(8, 8), batch_size=2,
                       frames=2)
  assert evals.batches[0]["video"].shape == (2, 2, 8, 8, 3)
  assert "tensorflow" not in sys.modules
