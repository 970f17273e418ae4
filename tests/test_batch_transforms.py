"""Batch transforms against the per-example transforms they replace, on hand-made inputs."""

import numpy as np
import pytest

from imp.data import DataSource, audio, task_dataset, transforms
from imp.data import batch_transforms as bt
from imp.data.sources import ArraySplit
from imp.tasks import Task, Variant


class Replay:
  """A stand-in Generator that returns given uniforms: `integers` and `uniform` map the next
  uniform u of their queue to lo + floor(u * (hi - lo)) and lo + u * (hi - lo)."""

  def __init__(self, integers=(), uniform=()):
    self._ints, self._floats = list(integers), list(uniform)

  def integers(self, lo, hi=None, size=None):
    lo, hi = (0, lo) if hi is None else (lo, hi)
    n = 1 if size is None else size
    out = [lo + int(bt.uniform_int(np.asarray(self._ints.pop(0)), hi - lo)) for _ in range(n)]
    return out[0] if size is None else np.array(out)

  def uniform(self, lo, hi):
    return lo + self._floats.pop(0) * (hi - lo)


def _images(b=5, h=9, w=7, c=2):
  rng = np.random.default_rng(0)
  return transforms.normalize_image(rng.integers(0, 256, (b, h, w, c), dtype=np.uint8))


def test_resize_matches_resize_image():
  images = _images()
  for size in ((9, 7), (4, 3), (16, 20)):
    want = np.stack([transforms.resize_image(x, size) for x in images])
    np.testing.assert_allclose(bt.resize(images, size), want, atol=1e-6)


def test_uint8_resize_is_the_float_resize_rounded():
  # A [1, 2] row (0, 255) to 4 columns: half-pixel centres -0.25, 0.25, 0.75, 1.25 clip to
  # 0, 0.25, 0.75, 1, so the float resize is 0, 63.75, 191.25, 255 and uint8 rounds it.
  image = np.array([[[0], [255]]], np.uint8)  # [1, 2, 1]
  want = np.array([0, 64, 191, 255], np.uint8).reshape(1, 4, 1)
  for got in (transforms.resize_image(image, (1, 4)), bt.resize(image[None], (1, 4))[0],
              bt.crop_resize(image[None], np.array([[0, 0, 1, 2]]), (1, 4))[0]):
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
  pixels = np.random.default_rng(0).integers(0, 256, (5, 9, 7, 2), dtype=np.uint8)
  floats = bt.resize(pixels.astype(np.float32), (4, 3))
  np.testing.assert_array_equal(bt.resize(pixels, (4, 3)), np.rint(floats).astype(np.uint8))


def test_translate_matches_random_translate():
  images = _images()
  u = np.array([[0.0, 0.99], [0.5, 0.5], [0.99, 0.0], [0.3, 0.7], [0.2, 0.9]])
  got = bt.translate(images, 2, u)
  for i, x in enumerate(images):
    np.testing.assert_array_equal(got[i], transforms.random_translate(x, 2, Replay(u[i])))
  np.testing.assert_array_equal(got[1], images[1])  # u = 0.5: offset 2 of 0..4, no shift
  assert np.all(got[0][:2] == images[0].min())  # shifted down by 2: the top rows are fill


def test_flip_flips_where_u_is_below_a_half():
  images = _images(3)
  got = bt.flip(images, np.array([0.1, 0.5, 0.9]))
  np.testing.assert_array_equal(got[0], images[0][:, ::-1])
  np.testing.assert_array_equal(got[1:], images[1:])


@pytest.mark.parametrize("scale,ratio", [((0.35, 1.0), (3 / 4, 4 / 3)), ((0.9, 1.0), (50., 60.))])
def test_crop_boxes_match_crop_box(scale, ratio):
  u = np.random.default_rng(1).random((40, 2 * bt.CROP_ATTEMPTS + 2))
  boxes = bt.crop_boxes(20, 30, scale, ratio, u)
  for i in range(len(u)):
    rng = Replay(integers=u[i, -2:], uniform=u[i, :-2])
    assert tuple(boxes[i]) == transforms.crop_box(20, 30, scale, ratio, rng)
  if ratio[0] > 2:  # no box fits: the whole image
    assert np.all(boxes == [0, 0, 20, 30])


def test_crop_resize_matches_resizing_the_crop():
  images = _images()
  boxes = np.array([[0, 0, 9, 7], [1, 2, 5, 4], [3, 0, 6, 7], [0, 6, 1, 1], [2, 1, 7, 3]])
  got = bt.crop_resize(images, boxes, (6, 5))
  for x, (t, left, h, w), g in zip(images, boxes, got, strict=True):
    np.testing.assert_allclose(g, transforms.resize_image(x[t:t + h, left:left + w], (6, 5)),
                               atol=1e-6)


def test_audio_crop_and_clip_start_match_the_per_example_versions():
  x = np.arange(20, dtype=np.float32).reshape(10, 2, 1)
  for u in (0.0, 0.37, 0.99):
    np.testing.assert_array_equal(bt.crop_or_pad(x, 4, u), audio.random_crop(x, 4, Replay([u])))
    np.testing.assert_array_equal(bt.clip_indices(30, 4, 3, u),
                                  transforms.clip_indices(30, 4, 3, Replay([u])))
  np.testing.assert_array_equal(bt.crop_or_pad(x, 12, 0.5), audio.pad_to_length(x, 12))


def _task(batch=8):
  return Task(name="t/base", entry="t", dataset="d", objective="softmax", modalities=("image",),
              weight=1.0, variant=Variant("base", batch_size=batch, resolution=(6, 6)))


def test_augmented_rows_of_two_processes_equal_one_process():
  rng = np.random.default_rng(0)
  split = ArraySplit({"image": rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8),
                      "label": (np.arange(20) % 3).astype(np.int32)})
  augment = transforms.check_augment(dict(translate=1, random_resized_crop=True, flip=True), "k")
  source = DataSource("d", ("image",), ("a", "b", "c"), {"train": split}, augment=augment)
  whole = iter(task_dataset(source, _task(), seed=3, num_threads=1))
  halves = [iter(task_dataset(source, _task(), seed=3, num_threads=2, rows=r))
            for r in ((0, 3), (3, 8))]
  for _ in range(4):
    batch, parts = next(whole), [next(h) for h in halves]
    assert batch["image"].shape == (8, 6, 6, 3) and batch["image"].dtype == np.uint8
    for field, value in batch.items():
      np.testing.assert_array_equal(np.concatenate([p[field] for p in parts]), value)
