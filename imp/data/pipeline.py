"""grain pipelines: one per task variant for training, fixed-shape batches for evaluation.

Batch fields (fixed shape per variant, which is what makes one compiled step per task work):
  image: float32 [batch, height, width, channels] in [-1, 1]
  audio: float32 [batch, time, mel, 1] log-mel spectrogram (from stored waveforms or
         spectrograms; cropped at random in training, from the start in evaluation)
  text:  int32 [batch, text_length] byte tokens (label text when the dataset has no captions)
  label: int32 [batch]
  mask:  bool [batch] (evaluation only: False rows pad the last batch)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from imp.data import audio, transforms
from imp.data.sources import DataSource
from imp.data.tokenizer import ByteTokenizer
from imp.tasks import Task


def _example_fn(source: DataSource, task: Task, tokenizer: ByteTokenizer, train: bool,
                augment: Mapping[str, Any]):
  """Returns fn(example, rng) -> dict of per-example arrays for `task`."""
  variant = task.variant
  for modality in task.modalities:
    if modality in ("image", "video") and variant.resolution is None:
      raise ValueError(f"task {task.name}: variant needs `resolution` for {modality!r}.")
    if modality == "audio" and variant.spectrogram is None:
      raise ValueError(f"task {task.name}: variant needs `spectrogram` (time, mel bins) for "
                       "audio.")
    if modality == "text" and variant.text_length is None:
      raise ValueError(f"task {task.name}: variant needs `text_length` for text.")
  translate = int(augment.get("translate", 0)) if train else 0

  def fn(example: dict[str, np.ndarray], rng: np.random.Generator | None) -> dict:
    out = {}
    if "label" in example:
      out["label"] = np.asarray(example["label"], np.int32)
    if "image" in task.modalities:
      image = example["image"]
      if translate and rng is not None:
        image = transforms.random_translate(image, translate, rng)
      image = transforms.normalize_image(image)
      out["image"] = transforms.resize_image(image, variant.resolution)
    if "audio" in task.modalities:
      out["audio"] = audio_features(example, variant.spectrogram, rng if train else None)
    if "text" in task.modalities:
      if "text" in example:
        text = str(example["text"])
      else:
        text = transforms.label_text(int(example["label"]), source.class_names,
                                     source.label_templates, rng if train else None)
      out["text"] = tokenizer.encode(text, variant.text_length)
    return out

  return fn


def audio_features(example: dict[str, np.ndarray], spectrogram: tuple[int, int],
                   rng: np.random.Generator | None) -> np.ndarray:
  """An example's audio as a log-mel spectrogram float32 [time, mel, 1] of fixed size.

  Stored waveforms ([samples], with "sample_rate") are transformed here with `mel` bins;
  stored spectrograms must already have `mel` bins. Time is cropped (at random when `rng` is
  given) or zero-padded to `time` frames.
  """
  frames, mel = spectrogram
  x = np.asarray(example["audio"], np.float32)
  if x.ndim == 1:
    rate = int(example.get("sample_rate", 16000))
    x = audio.log_mel_spectrogram(x, sample_rate=rate, num_mel_bins=mel)
  if x.ndim != 3 or x.shape[1] != mel:
    raise ValueError(f"audio example of shape {x.shape} does not give {mel} mel bins; "
                     f"valid: a waveform [samples] or a spectrogram [time, {mel}, 1].")
  if rng is not None:
    return audio.random_crop(x, frames, rng)
  return audio.pad_to_length(x, frames)


def task_dataset(
    source: DataSource,
    task: Task,
    *,
    seed: int,
    split: str = "train",
    num_threads: int = 2,
    prefetch: int = 4,
    shard: tuple[int, int] = (0, 1),
    batch_size: int | None = None,
) -> grain.IterDataset:
  """An endless, shuffled, batched training pipeline for one task variant.

  Args:
    source: the task's dataset.
    task: the task (modalities and variant fix the batch signature).
    seed: shuffling and augmentation seed (fold in the task so tasks differ).
    split: source split to read.
    num_threads: grain read threads.
    prefetch: batches prefetched per task.
    shard: (index, count) of this process, for multi-host runs.
    batch_size: rows this process produces per batch (default: the variant's global batch;
      a multi-host run passes batch_size // processes).
  """
  tokenizer = ByteTokenizer()
  fn = _example_fn(source, task, tokenizer, train=True, augment=source.augment)
  index, count = shard
  ds = grain.MapDataset.source(source.split(split))
  if count > 1:
    ds = ds[index::count]
  ds = (ds.seed(seed).shuffle().repeat()
        .random_map(fn)
        .batch(batch_size or task.variant.batch_size, drop_remainder=True))
  return ds.to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))


class TaskIterators:
  """One live grain iterator per task, created on first use; state is checkpointable."""

  def __init__(self, datasets: Mapping[str, grain.IterDataset]):
    self._datasets = dict(datasets)
    self._iterators: dict[str, Iterator] = {}

  def _iterator(self, task_name: str):
    if task_name not in self._iterators:
      self._iterators[task_name] = iter(self._datasets[task_name])
    return self._iterators[task_name]

  def next(self, task_name: str) -> dict[str, np.ndarray]:
    return next(self._iterator(task_name))

  def get_state(self) -> dict[str, Any]:
    """task name -> grain iterator state (JSON-serialisable)."""
    return {name: it.get_state() for name, it in self._iterators.items()}

  def set_state(self, state: Mapping[str, Any]) -> None:
    for name, task_state in state.items():
      if name not in self._datasets:
        raise ValueError(
            f"checkpoint has data state for task {name!r}, which this config does not have; "
            f"tasks: {', '.join(self._datasets)}.")
      self._iterator(name).set_state(task_state)


@dataclasses.dataclass(frozen=True)
class EvalBatches:
  """A split as fixed-shape batches; `mask` marks the real rows of the padded last batch."""

  batches: tuple[dict[str, np.ndarray], ...]
  labels: np.ndarray  # int32 [examples]
  raw: np.ndarray  # the flattened raw inputs [examples, ...], for raw-pixel baselines

  def __iter__(self):
    return iter(self.batches)


def eval_batches(source: DataSource, split: str, *, modality: str,
                 resolution: tuple[int, int] | None, batch_size: int,
                 spectrogram: tuple[int, int] | None = None) -> EvalBatches:
  """Deterministic fixed-shape batches of one split for feature extraction."""
  data = source.split(split)
  if modality == "image":
    images = np.stack([
        transforms.resize_image(transforms.normalize_image(x), resolution)
        for x in data.fields[modality]
    ])
  elif modality == "audio":
    if spectrogram is None:
      raise ValueError("evaluating audio needs `spectrogram` (time, mel bins).")
    images = np.stack([audio_features(data[i], spectrogram, None) for i in range(len(data))])
  else:
    raise ValueError(f"evaluation of modality {modality!r} is not supported; valid: image, "
                     "audio.")
  labels = np.asarray(data.fields["label"], np.int32)
  batches = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    real = len(chunk)
    pad = batch_size - real
    batches.append({
        modality: np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)]),
        "mask": np.arange(batch_size) < real,
    })
  # The baseline's raw input: pixels as stored, or the spectrogram for audio.
  raw = data.fields[modality] if modality == "image" else images
  return EvalBatches(tuple(batches), labels, np.asarray(raw, np.float32).reshape(len(data), -1))


def prompt_tokens(source: DataSource, text_length: int,
                  templates: Sequence[str] | None = None) -> np.ndarray:
  """int32 [classes, templates, text_length]: every class name in every template."""
  tokenizer = ByteTokenizer()
  templates = tuple(templates or source.label_templates)
  return np.stack([
      np.stack([tokenizer.encode(t.format(name), text_length) for t in templates])
      for name in source.class_names
  ])
