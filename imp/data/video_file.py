"""Video files (MP4, WebM, AVI, MKV, MOV, ...) through PyAV (FFmpeg's decoders, `av` on PyPI).

`read_video` decodes a file's first video stream to uint8 RGB frames [frames, H, W, 3] and,
with `fps`, samples them at that rate: output frame k is the last frame shown at time k / fps
(what FFmpeg's `fps` filter does), so a 30 fps file read at fps=10 keeps every third frame and
one read at a higher rate repeats frames. `read_audio_track` decodes the first audio stream to
a mono waveform, the second modality of a video example. `write_video` makes small files for
tests and examples with the same library.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".webm", ".avi", ".mkv", ".mov", ".mpg", ".mpeg", ".ogv")
# Encoders per container for `write_video` (all ship in PyAV's wheels).
_VIDEO_CODECS = {".mp4": "mpeg4", ".m4v": "mpeg4", ".mov": "mpeg4", ".avi": "mpeg4",
                 ".mkv": "ffv1", ".webm": "libvpx"}
_AUDIO_CODECS = {".mp4": ("aac", None), ".m4v": ("aac", None), ".mov": ("aac", None),
                 ".avi": ("pcm_s16le", None), ".mkv": ("pcm_s16le", None),
                 ".webm": ("libopus", 48000)}


def _open(path: str):
  import av

  if not os.path.isfile(path):
    what = "a directory, not a file" if os.path.isdir(path) else "no such file"
    raise ValueError(f"{path}: cannot read ({what}).")
  try:
    return av.open(os.fspath(path))
  except (av.FFmpegError, OSError, ValueError) as e:
    raise ValueError(f"{path}: not a video file FFmpeg can read ({e}); readable: MP4, WebM, "
                     f"AVI, MKV, MOV and the other FFmpeg containers.") from e


def read_video(path: str, fps: float | None = None,
               max_seconds: float | None = None) -> tuple[np.ndarray, float]:
  """The first video stream as (uint8 [frames, H, W, 3], frames per second).

  Args:
    path: the video file.
    fps: sample frames at this rate (see the module docstring); None keeps every decoded frame
      and returns the stream's average rate.
    max_seconds: decode only the first seconds (None: all).

  Raises:
    ValueError: naming `path`: unreadable, no video stream, no frames, corrupt data.
  """
  import av

  with _open(path) as container:
    if not container.streams.video:
      raise ValueError(f"{path}: has no video stream (streams: "
                       f"{', '.join(s.type for s in container.streams) or 'none'}).")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    tick = float(stream.time_base) if stream.time_base else 1e-3
    frames, times = [], []
    try:
      for frame in container.decode(stream):
        time = float(frame.time) if frame.time is not None else len(frames) / float(rate or 1)
        if max_seconds is not None and time >= max_seconds:
          break
        frames.append(frame.to_ndarray(format="rgb24"))
        times.append(time)
    except (av.FFmpegError, ValueError) as e:
      raise ValueError(f"{path}: corrupt video data after {len(frames)} frames ({e}).") from e
  if not frames:
    raise ValueError(f"{path}: the video stream has no frames; a video example needs at least "
                     f"one.")
  native = float(rate) if rate else None
  if fps is None:
    if native is None:
      raise ValueError(f"{path}: the stream does not say its frame rate; pass --fps.")
    return np.stack(frames), native
  if not fps > 0:
    raise ValueError(f"fps={fps}: must be positive.")
  times = np.asarray(times) - times[0]
  frame_time = 1.0 / native if native else (times[-1] / max(1, len(times) - 1) or 1.0 / fps)
  duration = times[-1] + frame_time
  if max_seconds is not None:
    duration = min(duration, max_seconds)
  # Timestamps are whole ticks of the time base (1 ms in WebM, so 1/30 s is stored as 33 ms):
  # compare times with a tick of slack, less than a quarter of either frame interval.
  slack = min(tick, 0.25 / fps, 0.25 * frame_time)
  count = max(1, math.ceil((duration - slack) * fps))
  # Output frame k: the last decoded frame shown at k / fps.
  index = np.searchsorted(times, np.arange(count) / fps + slack, side="right") - 1
  return np.stack(frames)[np.clip(index, 0, len(frames) - 1)], float(fps)


def read_audio_track(path: str, sample_rate: int | None = None,
                     max_seconds: float | None = None) -> tuple[np.ndarray, int]:
  """The first audio stream as (float32 mono [samples], rate); resampled with `sample_rate`.

  Raises:
    ValueError: naming `path`: no audio stream, no samples, corrupt data.
  """
  import av

  from imp.data import audio

  with _open(path) as container:
    if not container.streams.audio:
      raise ValueError(f"{path}: has no audio track (pass no --video-audio for silent videos).")
    stream = container.streams.audio[0]
    resampler = av.AudioResampler(format="fltp")  # planar float, the stream's layout and rate
    chunks, rate = [], stream.rate
    try:
      for frame in container.decode(stream):
        for converted in resampler.resample(frame):
          chunks.append(converted.to_ndarray().mean(axis=0))  # [channels, n] -> mono
          rate = converted.sample_rate
      for converted in resampler.resample(None):  # flush
        chunks.append(converted.to_ndarray().mean(axis=0))
    except (av.FFmpegError, ValueError) as e:
      raise ValueError(f"{path}: corrupt audio data ({e}).") from e
  waveform = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
  if waveform.size == 0:
    raise ValueError(f"{path}: the audio track has no samples.")
  if max_seconds is not None:
    waveform = waveform[:int(round(max_seconds * rate))]
  if sample_rate is not None and int(sample_rate) != rate:
    waveform, rate = audio.resample(waveform, rate, int(sample_rate)), int(sample_rate)
  return waveform, int(rate)


def write_video(path: str, frames: np.ndarray, fps: float,
                audio: np.ndarray | None = None, sample_rate: int = 16000,
                codec: str | None = None) -> None:
  """Writes uint8 frames [T, H, W, 3] (H, W even) at `fps`, with an optional mono track.

  The container follows the extension (.mp4, .webm, .avi, .mkv, .mov); `codec` overrides the
  default video encoder (mpeg4, libvpx for WebM, ffv1 for MKV). Audio: float [samples] in
  [-1, 1] at `sample_rate` (AAC in MP4/MOV, Opus at 48 kHz in WebM, PCM in AVI/MKV).
  """
  import fractions

  import av

  ext = os.path.splitext(path)[1].lower()
  if ext not in _VIDEO_CODECS:
    raise ValueError(f"{path}: write_video writes {', '.join(sorted(_VIDEO_CODECS))} files.")
  frames = np.asarray(frames, np.uint8)
  rate = fractions.Fraction(fps).limit_denominator(1001)
  with av.open(os.fspath(path), "w") as container:
    stream = container.add_stream(codec or _VIDEO_CODECS[ext], rate=rate)
    stream.height, stream.width = frames.shape[1], frames.shape[2]
    stream.pix_fmt = "yuv420p" if stream.codec_context.name != "ffv1" else "yuv444p"
    if stream.codec_context.name == "mpeg4":
      stream.codec_context.bit_rate = 4_000_000  # close to the input at test sizes
    track = None
    if audio is not None:
      name, fixed_rate = _AUDIO_CODECS[ext]
      out_rate = fixed_rate or int(sample_rate)
      if out_rate != sample_rate:
        from imp.data.audio import resample

        audio = resample(np.asarray(audio, np.float32), int(sample_rate), out_rate)
      track = container.add_stream(name, rate=out_rate, layout="mono")
    if not len(frames):
      container.start_encoding()  # write the header: a file with a stream and no frames
    for image in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
    if track is not None:
      _write_audio(container, track, np.asarray(audio, np.float32))


def _write_audio(container, track, waveform: Sequence[float]) -> None:
  import av

  fmt = track.codec_context.format.name if track.codec_context.format else "fltp"
  size = track.codec_context.frame_size or 1024
  resampler = av.AudioResampler(format=fmt, layout="mono", rate=track.rate)
  pts = 0
  for start in range(0, len(waveform), size):
    chunk = np.asarray(waveform[start:start + size], np.float32)[None]
    frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
    frame.sample_rate, frame.pts = track.rate, pts
    pts += chunk.shape[1]
    for converted in resampler.resample(frame):
      for packet in track.encode(converted):
        container.mux(packet)
  for packet in track.encode():
    container.mux(packet)
