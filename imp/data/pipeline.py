"""Per-example transforms and fixed-shape evaluation batches (training: `imp.data.training`).

Batch fields (fixed shape per variant, which is what makes one compiled step per task work):
  image: uint8 [batch, height, width, channels] (the model normalises pixels to [-1, 1] in
         its compute dtype on the device, `imp.model.embedders.normalize_pixels`)
  audio: float32 [batch, time, mel, 1] log-mel spectrogram (from stored waveforms or
         spectrograms; cropped at random in training, from the start in evaluation); in
         training, in the model's compute dtype (`task_dataset`'s audio_dtype)
  video: uint8 [batch, frames, height, width, channels] (a clip sampled at the dataset's
         clip_fps: random start in training, the middle in evaluation)
  text:  int32 [batch, text_length] tokens of the dataset's tokenizer (byte-level by default;
         label text when the dataset has no captions)
  label: int32 [batch]
  mask:  bool [batch] (evaluation only: False rows pad the last batch)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from imp.data import audio, transforms
from imp.data.sources import DataSource
from imp.tasks import Task

log = logging.getLogger("imp")


def _check_example(example: dict[str, np.ndarray], source: DataSource,
                   modalities: tuple[str, ...]) -> None:
  """Raises ValueError for a label outside the class list or a wrongly shaped or typed input
  (images and video must be uint8 pixels)."""
  if "label" in example and source.class_names:
    label = int(np.asarray(example["label"]))
    if not 0 <= label < source.num_classes:
      raise ValueError(f"label {label} is outside the {source.num_classes} classes of "
                       f"dataset {source.name!r} (valid: 0..{source.num_classes - 1}).")
  for modality, rank, shape in (("image", 3, "[height, width, channels]"),
                                ("video", 4, "[frames, height, width, channels]")):
    if modality not in modalities:
      continue
    if np.ndim(example[modality]) != rank:
      raise ValueError(f"{modality} of shape {list(np.shape(example[modality]))}; valid: "
                       f"{shape}.")
    if np.asarray(example[modality]).dtype != np.uint8:
      raise ValueError(f"{modality} of dtype {np.asarray(example[modality]).dtype} in dataset "
                       f"{source.name!r}; valid: uint8 pixels in [0, 255] (the model "
                       "normalises them on the device).")


def check_variant(task: Task) -> None:
  """Raises ValueError unless the task's variant sets the shape of each of its modalities."""
  variant = task.variant
  for modality in task.modalities:
    if modality in ("image", "video") and variant.resolution is None:
      raise ValueError(f"task {task.name}: variant needs `resolution` for {modality!r}.")
    if modality == "audio" and variant.spectrogram is None:
      raise ValueError(f"task {task.name}: variant needs `spectrogram` (time, mel bins) for "
                       "audio.")
    if modality == "text" and variant.text_length is None:
      raise ValueError(f"task {task.name}: variant needs `text_length` for text.")


def _example_fn(source: DataSource, task: Task, train: bool, augment: Mapping[str, Any]):
  """Returns fn(example, rng) -> dict of per-example arrays for `task`."""
  variant = task.variant
  check_variant(task)
  augment = augment if train else {}
  tokenizer = source.tokenizer

  def fn(example: dict[str, np.ndarray], rng: np.random.Generator | None) -> dict:
    _check_example(example, source, task.modalities)
    out = {}
    if "label" in example:
      out["label"] = np.asarray(example["label"], np.int32)
    if "image" in task.modalities:
      image = np.asarray(example["image"])
      if augment and rng is not None:
        image = transforms.augment_image(image, augment, rng, variant.resolution)
      out["image"] = transforms.resize_image(image, variant.resolution)
    if "video" in task.modalities:
      out["video"] = video_features(example, variant.frames, variant.resolution,
                                    source.clip_fps, rng if train else None)
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


# Errors a bad example raises while it is read or transformed (the decoders and transforms
# raise ValueError naming the file or record; the others come from malformed arrays).
EXAMPLE_ERRORS = (ValueError, KeyError, IndexError, TypeError, OSError, EOFError)


def video_features(example: dict[str, np.ndarray], frames: int, resolution: tuple[int, int],
                   clip_fps: float | None, rng: np.random.Generator | None) -> np.ndarray:
  """A clip of `frames` frames as uint8 [frames, H, W, C].

  Frames are `stride` = round(stored fps / clip_fps) apart (1 without either); the clip
  starts at random when `rng` is given (training), else in the middle (evaluation). Videos
  shorter than the clip repeat their last frame.
  """
  video = np.asarray(example["video"])
  index = transforms.clip_indices(len(video), frames, _frame_stride(example, clip_fps), rng)
  return _frames_at(video, index, resolution)


def _frame_stride(example: dict[str, np.ndarray], clip_fps: float | None) -> int:
  """Stored frames between a clip's frames: round(stored fps / clip_fps), 1 without either."""
  if clip_fps and "fps" in example:
    return max(1, int(round(float(example["fps"]) / clip_fps)))
  return 1


def _frames_at(video: np.ndarray, index: np.ndarray, resolution: tuple[int, int]) -> np.ndarray:
  """uint8 video [T, H, W, C] at frame indices [frames] -> uint8 [frames, *resolution, C]."""
  return np.stack([transforms.resize_image(f, resolution) for f in video[index]])


def video_clips(example: dict[str, np.ndarray], frames: int, resolution: tuple[int, int],
                clip_fps: float | None, clips: int) -> np.ndarray:
  """`clips` evenly spaced clips (`transforms.spaced_clip_indices`) as uint8
  [clips, frames, H, W, C]; clips=1 is `video_features`' evaluation clip."""
  video = np.asarray(example["video"])
  index = transforms.spaced_clip_indices(len(video), frames, _frame_stride(example, clip_fps),
                                         clips)
  return np.stack([_frames_at(video, i, resolution) for i in index])


def spectrogram_of(example: dict[str, np.ndarray], mel: int) -> np.ndarray:
  """An example's audio as a log-mel spectrogram float32 [time, mel, 1] of any length: a
  stored waveform ([samples], with "sample_rate") is transformed, a stored spectrogram must
  already have `mel` bins."""
  x = np.asarray(example["audio"], np.float32)
  if x.ndim == 1:
    rate = int(example.get("sample_rate", 16000))
    x = audio.log_mel_spectrogram(x, sample_rate=rate, num_mel_bins=mel)
  if x.ndim != 3 or x.shape[1] != mel:
    raise ValueError(f"audio example of shape {x.shape} does not give {mel} mel bins; "
                     f"valid: a waveform [samples] or a spectrogram [time, {mel}, 1].")
  return x


def audio_features(example: dict[str, np.ndarray], spectrogram: tuple[int, int],
                   rng: np.random.Generator | None) -> np.ndarray:
  """An example's audio as a log-mel spectrogram float32 [time, mel, 1] of fixed size.

  Stored waveforms ([samples], with "sample_rate") are transformed here with `mel` bins;
  stored spectrograms must already have `mel` bins. Time is cropped (at random when `rng` is
  given) or zero-padded to `time` frames.
  """
  frames, mel = spectrogram
  x = spectrogram_of(example, mel)
  if rng is not None:
    return audio.random_crop(x, frames, rng)
  return audio.pad_to_length(x, frames)


class _ProcessRows:
  """Random access to this process's rows of a global example stream.

  `stream[g]` is example g of the stream (shuffled, repeated and transformed, computed only
  when read). Global batch t is stream positions [t * batch, (t + 1) * batch); this process
  reads positions t * batch + [start, stop) of each, so the batch of step t is the same
  examples in the same order for any number of processes (each transforms only its own rows).
  """

  def __init__(self, stream: grain.MapDataset, batch: int, rows: tuple[int, int]):
    self.stream, self.batch = stream, batch
    self.start, self.local = rows[0], rows[1] - rows[0]

  def __len__(self) -> int:
    return len(self.stream) // self.batch * self.local

  def __getitem__(self, index: int) -> dict:
    step, row = divmod(int(index), self.local)
    return self.stream[step * self.batch + self.start + row]


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

  batches: tuple[dict[str, np.ndarray], ...]  # rows: examples, or clips (example-major)
  labels: np.ndarray  # int32 [examples]
  raw: np.ndarray  # the flattened raw inputs [examples, ...], for raw-pixel baselines
  clips: int = 1  # rows per example: video clips, averaged by the eval suite

  def __iter__(self):
    return iter(self.batches)


def eval_batches(source: DataSource, split: str, *, modality: str,
                 resolution: tuple[int, int] | None, batch_size: int,
                 spectrogram: tuple[int, int] | None = None, frames: int = 1,
                 clips: int = 1, where: str = "clips") -> EvalBatches:
  """Deterministic fixed-shape batches of one split for feature extraction.

  Video takes `clips` evenly spaced clips of `frames` frames (at the source's clip_fps; one
  clip: the middle one) per example, as consecutive rows; `raw` is their mean over clips. A
  video too short for `clips` distinct clips is an error naming `where` and the example.
  `raw`, the input
  of the raw-input baseline probe, is the stored pixels for images, and the mean and standard
  deviation over time of every mel bin for audio ([2 * mel]: a bag-of-frames baseline; a probe
  on the whole flattened spectrogram takes minutes on a CPU).
  """
  data = source.split(split)
  if modality == "image":
    inputs = np.stack([
        transforms.resize_image(np.asarray(x), resolution) for x in data.fields[modality]
    ])
    raw = data.fields[modality]
  elif modality == "video":
    per_video = []
    for i in range(len(data)):
      try:
        per_video.append(video_clips(data[i], frames, resolution, source.clip_fps, clips))
      except ValueError as e:
        raise ValueError(f"{where}={clips}: dataset {source.name!r}, split {split!r}, "
                         f"example {i}: {e}") from e
    inputs = np.stack(per_video)  # uint8 [examples, clips, frames, H, W, C]
    raw = transforms.normalize_image(inputs).mean(axis=1)
    inputs = inputs.reshape((-1,) + inputs.shape[2:])
  elif modality == "audio":
    if spectrogram is None:
      raise ValueError("evaluating audio needs `spectrogram` (time, mel bins).")
    inputs = np.stack([audio_features(data[i], spectrogram, None) for i in range(len(data))])
    raw = np.concatenate([inputs.mean(axis=1), inputs.std(axis=1)], axis=1)
  else:
    raise ValueError(f"evaluation of modality {modality!r} is not supported; valid: image, "
                     "video, audio.")
  labels = np.asarray(data.fields["label"], np.int32)
  batches = []
  for start in range(0, len(inputs), batch_size):
    chunk = inputs[start:start + batch_size]
    real = len(chunk)
    pad = batch_size - real
    batches.append({
        modality: np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)]),
        "mask": np.arange(batch_size) < real,
    })
  return EvalBatches(tuple(batches), labels, np.asarray(raw, np.float32).reshape(len(data), -1),
                     clips=clips if modality == "video" else 1)


def prompt_tokens(source: DataSource, text_length: int,
                  templates: Sequence[str] | None = None) -> np.ndarray:
  """int32 [classes, templates, text_length]: every class name in every template."""
  tokenizer = source.tokenizer
  templates = tuple(templates or source.label_templates)
  return np.stack([
      np.stack([tokenizer.encode(t.format(name), text_length) for t in templates])
      for name in source.class_names
  ])
