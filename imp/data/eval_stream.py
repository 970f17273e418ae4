"""Streamed evaluation splits: fixed-size batches read through grain, never a whole split.

`eval_stream(...)` is an `EvalStream`: iterating it reads the split batch by batch (grain
threads transform the rows of the next batches while the model runs on this one). Global
batch t is rows [t * batch, (t + 1) * batch) of the split; the last batch is padded with zero
rows, and `mask` [batch] marks the real ones, so every example counts exactly once. A process
reads only its `rows` [start, stop) of each global batch (`imp.parallel.mesh.process_rows`):
the fields it yields are [stop - start, ...]; `mask` is always the global [batch].

Rows are examples, or for video with `clips` > 1, clips (video-major: row r is clip r % clips
of video r // clips). Besides the modality's input every row carries its `label` (int32) and,
with `raw=True`, the raw-input baseline's features `raw` [dim] (float32): the stored pixels
for images, the model input normalised to [-1, 1] for video (averaged over clips by the eval
suite), the mean and
standard deviation over time of every mel bin for audio. Values are those of
`pipeline.eval_batches`, the whole-split path this replaces (kept as the tests' reference).
"""

from __future__ import annotations

from collections.abc import Iterator

import grain
import jax
import numpy as np

from imp.data import transforms
from imp.data.pipeline import (
  _check_example,
  _frame_stride,
  _frames_at,
  _ProcessRows,
  audio_features,
)
from imp.data.sources import DataSource

MODALITIES = ("image", "video", "audio", "text")


class _Rows:
  """fn(row) -> the transformed fields of one row of the split (zeros for padding rows)."""

  def __init__(self, source: DataSource, split: str, *, modality: str,
               resolution: tuple[int, int] | None, spectrogram: tuple[int, int] | None,
               frames: int, clips: int, text_length: int, raw: bool, where: str):
    if modality not in MODALITIES:
      raise ValueError(f"evaluation of modality {modality!r} is not supported; valid: "
                       f"{', '.join(MODALITIES)}.")
    if modality == "audio" and spectrogram is None:
      raise ValueError("evaluating audio needs `spectrogram` (time, mel bins).")
    self.source, self.split, self.data = source, split, source.split(split)
    self.modality, self.resolution, self.spectrogram = modality, resolution, spectrogram
    self.frames, self.clips, self.text_length = frames, clips, text_length
    self.raw, self.where = raw and modality != "text", where
    self.rows = len(self.data) * clips
    self._zeros: dict[str, np.ndarray] | None = None

  def _example(self, index: int, clip: int) -> dict[str, np.ndarray]:
    example = self.data[index]
    _check_example(example, self.source, (self.modality,))
    out = {"label": np.asarray(example["label"], np.int32)}
    if self.modality == "image":  # uint8, as in training: the model normalises it
      out["image"] = transforms.resize_image(np.asarray(example["image"]), self.resolution)
      raw = np.asarray(example["image"], np.float32)
    elif self.modality == "video":
      video = np.asarray(example["video"])
      try:
        index_of = transforms.spaced_clip_indices(
            len(video), self.frames, _frame_stride(example, self.source.clip_fps), self.clips)
      except ValueError as e:
        raise ValueError(f"{self.where}={self.clips}: dataset {self.source.name!r}, split "
                         f"{self.split!r}, example {index}: {e}") from e
      out["video"] = _frames_at(video, index_of[clip], self.resolution)
      raw = transforms.normalize_image(out["video"])
    elif self.modality == "audio":
      out["audio"] = audio_features(example, self.spectrogram, None)
      raw = np.concatenate([out["audio"].mean(axis=0), out["audio"].std(axis=0)], axis=0)
    else:  # text: the example's caption, else its class name in the first label template
      if "text" in example:
        text = example["text"]
        text = text.decode() if isinstance(text, bytes) else str(text)
      else:
        text = self.source.label_templates[0].format(self.source.class_names[int(out["label"])])
      out["text"] = self.source.tokenizer.encode(text, self.text_length)
    if self.raw:
      out["raw"] = np.asarray(raw, np.float32).reshape(-1)
    return out

  def __call__(self, row: int) -> dict[str, np.ndarray]:
    row = int(row)
    if row < self.rows:
      return self._example(*divmod(row, self.clips))
    if self._zeros is None:  # a padding row: zeros shaped as row 0
      self._zeros = {k: np.zeros_like(v) for k, v in self._example(0, 0).items()}
    return self._zeros


class EvalStream:
  """One split of an eval entry as fixed-size batches (see the module docstring).

  Attributes:
    examples: examples in the split; rows = examples * clips.
    batch_size: rows per global batch; num_batches = ceil(rows / batch_size).
    rows: [start, stop) of each global batch this process reads.
  """

  def __init__(self, source: DataSource, split: str, *, modality: str,
               resolution: tuple[int, int] | None, batch_size: int,
               spectrogram: tuple[int, int] | None = None, frames: int = 1, clips: int = 1,
               text_length: int = 16, raw: bool = False, where: str = "clips",
               rows: tuple[int, int] | None = None, num_threads: int = 2, prefetch: int = 2):
    self.clips = clips if modality == "video" else 1
    self._fn = _Rows(source, split, modality=modality, resolution=resolution,
                     spectrogram=spectrogram, frames=frames, clips=self.clips,
                     text_length=text_length, raw=raw, where=where)
    self.modality, self.batch_size = modality, batch_size
    self.examples = len(self._fn.data)
    self.num_batches = -(-self._fn.rows // batch_size)
    self.rows = rows or (0, batch_size)
    if not 0 <= self.rows[0] < self.rows[1] <= batch_size:
      raise ValueError(f"rows {self.rows} of an eval batch of {batch_size}.")
    self._options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)

  def mask(self, t: int) -> np.ndarray:
    """bool [batch_size]: the real rows of global batch t."""
    return t * self.batch_size + np.arange(self.batch_size) < self._fn.rows

  def spec(self) -> dict[str, jax.ShapeDtypeStruct]:
    """The model input of a global batch (no mask, label or raw), from one row's transform."""
    row = self._fn(0)
    return {self.modality: jax.ShapeDtypeStruct((self.batch_size,) + row[self.modality].shape,
                                                row[self.modality].dtype)}

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of every global batch, with the global `mask`."""
    stream = grain.MapDataset.range(self.num_batches * self.batch_size).map(self._fn)
    local = self.rows[1] - self.rows[0]
    ds = grain.MapDataset.source(_ProcessRows(stream, self.batch_size, self.rows)).batch(local)
    for t, batch in enumerate(ds.to_iter_dataset(self._options)):
      yield {**batch, "mask": self.mask(t)}


def eval_stream(source: DataSource, split: str, **kwargs) -> EvalStream:
  """`EvalStream(source, split, **kwargs)`: a split of an eval entry, streamed."""
  return EvalStream(source, split, **kwargs)
