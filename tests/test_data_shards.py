"""Each process reads its own rows of the same global batch, for every source kind.

Over one epoch (the first `len(split)` positions of the shuffled stream) the examples the
processes read are disjoint and their union is the split; a process's rows of batch t,
concatenated in process order, are the one-process batch t exactly.
"""

import collections
import os

import numpy as np
import pytest
from test_tfds_source import _load as load_tfds
from test_tfds_source import data_dir  # noqa: F401  (the TFDS fixture)

from imp.data import load_source, prepare, task_dataset
from imp.data.images import write_image
from imp.data.pipeline import _example_fn
from imp.data.sources import ArraySplit, DataSource
from imp.tasks import Task, Variant

NAMES = ("zero", "one", "two")
BATCH = 8


def _task(dataset):
  return Task(name="t/base", entry="t", dataset=dataset, objective="softmax",
              modalities=("image",), weight=1.0,
              variant=Variant("base", batch_size=BATCH, resolution=(8, 8)))


def _key(image, label):
  return (int(label), np.asarray(image).tobytes())


def _epoch_by_process(source, processes):
  """Per process, a Counter of the examples it reads at stream positions < len(split)."""
  n, local = len(source.split("train")), BATCH // processes
  batches = -(-n // BATCH)  # the batches that hold positions 0..n-1
  read = []
  for p in range(processes):
    it = iter(task_dataset(source, _task(source.name), seed=7, num_threads=1,
                           rows=(p * local, (p + 1) * local)))
    seen = collections.Counter()
    for t in range(batches):
      batch = next(it)
      for r in range(local):
        if t * BATCH + p * local + r < n:
          seen[_key(batch["image"][r], batch["label"][r])] += 1
    read.append(seen)
  return read


def _split_examples(source):
  """Counter of every example of the train split, transformed as the pipeline does."""
  fn = _example_fn(source, _task(source.name), train=True, augment={})
  data = source.split("train")
  return collections.Counter(
      _key(out["image"], out["label"]) for out in (fn(data[i], None) for i in range(len(data))))


def _in_memory():
  rng = np.random.default_rng(0)
  n = 45  # not a multiple of the batch: the epoch ends inside a batch
  images = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
  return DataSource("mem", ("image",), NAMES, {"train": ArraySplit(
      {"image": images, "label": (np.arange(n) % 3).astype(np.int32)})})


def _array_record(tmp_path):
  root = tmp_path / "imgs"
  for c, name in enumerate(NAMES):
    os.makedirs(root / name)
    for i in range(7):  # every image different: its value encodes (class, i)
      write_image(str(root / name / f"{i}.png"), np.full((8, 8), 10 * c + i, np.uint8))
  out = tmp_path / "prep"
  prepare.main(["image_folder", "--input", str(root), "--output", str(out),
                "--test-fraction", "0"])
  return load_source("ar", dict(source="arrayrecord", directory=str(out)))


@pytest.fixture(params=["in_memory", "arrayrecord", "tfds"])
def source(request, tmp_path):
  if request.param == "in_memory":
    return _in_memory()
  if request.param == "arrayrecord":
    return _array_record(tmp_path)
  return load_tfds(request.getfixturevalue("data_dir"))


@pytest.mark.parametrize("processes", [2, 4])
def test_one_epoch_is_split_between_the_processes_exactly(source, processes):
  read = _epoch_by_process(source, processes)
  expected = _split_examples(source)
  assert sum(read, collections.Counter()) == expected  # union = the split, each once
  assert sum(sum(c.values()) for c in read) == len(source.split("train"))
  for a in range(processes):  # disjoint: where every example is unique, no key is shared
    for b in range(a + 1, processes):
      shared = set(read[a]) & set(read[b])
      assert all(expected[k] > 1 for k in shared), "an example read by two processes"


def test_process_rows_concatenate_to_the_one_process_batch(source):
  task = _task(source.name)
  whole = iter(task_dataset(source, task, seed=3, num_threads=1))
  halves = [iter(task_dataset(source, task, seed=3, num_threads=1, rows=r))
            for r in ((0, BATCH // 2), (BATCH // 2, BATCH))]
  for _ in range(4):
    batch, parts = next(whole), [next(h) for h in halves]
    for field, value in batch.items():
      np.testing.assert_array_equal(np.concatenate([p[field] for p in parts]), value)


def test_rows_outside_the_batch_are_an_error():
  with pytest.raises(ValueError, match=r"rows 4:12 of a batch of 8"):
    task_dataset(_in_memory(), _task("mem"), seed=0, rows=(4, 12))
