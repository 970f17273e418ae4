"""The training pipeline: shuffled global batches, read and transformed a batch at a time.

Global batch t is stream positions [t * batch, (t + 1) * batch) of the shuffled, repeated index
stream; a process reads its rows [start, stop) of each. Per example, only what can fail on a
bad example or differs in shape runs in Python (decode and check, audio spectrogram and crop,
clip frame picking, text tokens); images and clips are augmented and resized a batch at a time
(`batch_transforms`) and stay uint8, normalised by the model on the device. Random draws come
from a Generator seeded by (seed, t) for the whole global batch, and a process takes its rows
of them, so every example's augmentation depends only on the seed and its stream position:
equal for any number of processes, and after a resume.
"""

from __future__ import annotations

import logging

import grain
import jax.numpy as jnp
import numpy as np

from imp.data import batch_transforms
from imp.data.pipeline import (
  EXAMPLE_ERRORS,
  _check_example,
  _frame_stride,
  check_variant,
  spectrogram_of,
)
from imp.data.sources import DataSource
from imp.tasks import Task

log = logging.getLogger("imp")


class _TrainBatches:
  """Random access to this process's rows of global batch t, transformed (a grain source).

  Bad examples follow the source's on_error: "fail" raises naming the dataset, split,
  example and reason; "skip" uses the next example that works (deterministic: it depends only
  on the index) and counts the skip in `source.skips`.
  """

  def __init__(self, source: DataSource, task: Task, split: str, indices: grain.MapDataset,
               seed: int, rows: tuple[int, int], audio_dtype: np.dtype):
    self.source, self.task, self.split_name = source, task, split
    self.audio_dtype = audio_dtype
    self.data = source.split(split)
    self.indices, self.seed = indices, int(seed) % 2**63
    self.batch, (self.start, self.stop) = task.variant.batch_size, rows
    self.augment = source.augment or {}

  def __len__(self) -> int:
    return len(self.indices) // self.batch

  def _where(self, index: int) -> str:
    return f"dataset {self.source.name!r}, split {self.split_name!r}, example {index}"

  def _example(self, example: dict, u: np.ndarray) -> dict:
    """One example's per-example part: checked, audio/clip/text done, image still uint8."""
    _check_example(example, self.source, self.task.modalities)
    variant, out = self.task.variant, {}
    if "label" in example:
      out["label"] = np.asarray(example["label"], np.int32)
    if "image" in self.task.modalities:
      out["image"] = np.asarray(example["image"])
    if "video" in self.task.modalities:
      video = np.asarray(example["video"])
      index = batch_transforms.clip_indices(
          len(video), variant.frames, _frame_stride(example, self.source.clip_fps),
          u[batch_transforms.VIDEO])
      out["video"] = video[index]
    if "audio" in self.task.modalities:
      frames, mel = variant.spectrogram
      x = spectrogram_of(example, mel)
      out["audio"] = batch_transforms.crop_or_pad(x, frames, u[batch_transforms.AUDIO])
    if "text" in self.task.modalities:
      if "text" in example:
        text = str(example["text"])
      else:
        templates = self.source.label_templates
        k = int(batch_transforms.uniform_int(u[batch_transforms.TEMPLATE], len(templates)))
        text = templates[k].format(self.source.class_names[int(example["label"])])
      out["text"] = self.source.tokenizer.encode(text, variant.text_length)
    return out

  def _guarded(self, index: int, example: dict | None, u: np.ndarray) -> dict:
    """`_example` of `index` (read here unless `example` is given) under on_error."""
    n = len(self.data)
    for attempt in range(n):
      current = (index + attempt) % n
      try:
        if example is None or attempt:
          example = self.data[current]
        return self._example(example, u)
      except EXAMPLE_ERRORS as e:
        reason = f"{self._where(current)}: {type(e).__name__}: {e}"
        if self.source.on_error != "skip":
          raise ValueError(f"{reason} (set datasets.{self.source.name}.on_error='skip' to skip "
                           "bad examples)") from e
        self.source.skips.add(reason)
        log.warning("skipped %s", reason)
    raise ValueError(f"dataset {self.source.name!r}, split {self.split_name!r}: every one of "
                     f"its {n} examples failed; the first: {self.source.skips.reasons[:1]}")

  def _check_channels(self, images: list[np.ndarray], indices: list[int]) -> None:
    """One channel count per batch: else a ValueError naming the odd record (not NumPy's
    concatenate error, which names none)."""
    channels = [x.shape[-1] if x.ndim == 3 else 1 for x in images]
    common = max(set(channels), key=channels.count)
    odd = [(i, c) for i, c in zip(indices, channels, strict=True) if c != common]
    if odd:
      index, c = odd[0]
      raise ValueError(
          f"{self._where(index)}: an image of {c} channel(s) in a batch of {common}-channel "
          f"images ({len(odd)} such in this batch); prepare the data again, which converts "
          "every image to one channel count (`prepare --channels`).")

  def _images(self, images: list[np.ndarray], u: np.ndarray, size: tuple[int, int]):
    """uint8 [rows, *size, C] from uint8 images [H, W, C] (any sizes) and their draws."""
    if len({x.shape for x in images}) > 1:  # different sizes: one at a time, same draws
      return np.concatenate([self._images([x], u[i:i + 1], size)
                             for i, x in enumerate(images)])
    batch = np.stack(images)
    if self.augment:
      batch = batch_transforms.augment(batch, self.augment, u, size)
    return batch_transforms.resize(batch, size)

  def __getitem__(self, t: int) -> dict[str, np.ndarray]:
    t = int(t)
    positions = t * self.batch + np.arange(self.start, self.stop)
    indices = [int(self.indices[int(g)]) for g in positions]
    rng = np.random.default_rng([self.seed, t])
    u = rng.random((self.batch, batch_transforms.UNIFORMS))[self.start:self.stop]
    examples: list = [None] * len(indices)
    read_many = getattr(self.data, "__getitems__", None)
    if read_many is not None:
      try:
        examples = list(read_many(indices))
      except EXAMPLE_ERRORS:  # a bad record: read one at a time, under the guard
        examples = [None] * len(indices)
    parts = [self._guarded(i, x, u[r])
             for r, (i, x) in enumerate(zip(indices, examples, strict=True))]
    out = {k: np.stack([p[k] for p in parts]) for k in parts[0] if k not in ("image", "video")}
    if "audio" in out:
      out["audio"] = out["audio"].astype(self.audio_dtype, copy=False)
    variant = self.task.variant
    if "image" in parts[0]:
      self._check_channels([p["image"] for p in parts], indices)
      out["image"] = self._images([p["image"] for p in parts], u, variant.resolution)
    if "video" in parts[0]:
      clips = np.stack([p["video"] for p in parts])  # [rows, frames, H, W, C] uint8
      frames = batch_transforms.resize(clips.reshape((-1,) + clips.shape[2:]),
                                       variant.resolution)
      out["video"] = frames.reshape(clips.shape[:2] + frames.shape[1:])
    return out


def task_dataset(
    source: DataSource,
    task: Task,
    *,
    seed: int,
    split: str = "train",
    num_threads: int = 2,
    prefetch: int = 4,
    rows: tuple[int, int] | None = None,
    audio_dtype: str | np.dtype = "float32",
) -> grain.IterDataset:
  """An endless, shuffled, batched training pipeline for one task variant.

  Args:
    source: the task's dataset.
    task: the task (modalities and variant fix the batch signature).
    seed: shuffling and augmentation seed (fold in the task so tasks differ).
    split: source split to read.
    num_threads: grain read threads (each transforms whole batches).
    prefetch: batches prefetched per task.
    rows: [start, stop) of this process's rows of every global batch of the variant's
      batch_size (multi-process runs: `imp.parallel.mesh.process_rows`); default all rows.
    audio_dtype: dtype of the audio batches, the model's compute dtype (`config.model.dtype`:
      bfloat16 halves their host memory and transfer); spectrograms are computed in float32.
  """
  check_variant(task)
  batch = task.variant.batch_size
  start, stop = rows or (0, batch)
  if not 0 <= start < stop <= batch:
    raise ValueError(f"task {task.name}: rows {start}:{stop} of a batch of {batch}.")
  n = len(source.split(split))
  if n == 0:
    raise ValueError(f"task {task.name}: dataset {source.name!r} split {split!r} has no "
                     "examples.")
  # Indices, not examples, go through shuffling: the guard reads and transforms example i and
  # can name it (or skip it) when it is bad. The stream is the same on every process.
  indices = grain.MapDataset.range(n).seed(seed).shuffle().repeat()
  batches = _TrainBatches(source, task, split, indices, seed, (start, stop),
                          jnp.dtype(audio_dtype))
  return grain.MapDataset.source(batches).to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
