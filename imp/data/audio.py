"""Audio: file reading (soundfile), resampling (scipy), log-mel spectrograms and crops.

The log-mel is NumPy (checked against librosa in tests/test_audio.py), so it runs in grain
worker threads and in `imp.data.prepare` alike; neither librosa nor TensorFlow is needed.
"""

from __future__ import annotations

import os

import numpy as np


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
  """HTK mel scale: 2595 * log10(1 + hz / 700)."""
  return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
  """Inverse of `hz_to_mel`."""
  return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(num_fft_bins: int, sample_rate: int, num_mel_bins: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
  """HTK-style triangular mel filters as float32 [num_fft_bins, num_mel_bins].

  `num_fft_bins` is the rfft size (n_fft // 2 + 1), covering 0..sample_rate / 2. Filter m
  rises linearly (in Hz) from edge m to a peak of 1 at edge m + 1 and falls to 0 at edge m + 2,
  where the num_mel_bins + 2 edges are evenly spaced on the mel scale over [fmin, fmax].
  """
  nyquist = sample_rate / 2.0
  fmax = nyquist if fmax is None else float(fmax)
  if num_fft_bins < 2 or num_mel_bins < 1:
    raise ValueError(
        f"mel_filterbank: need num_fft_bins >= 2 and num_mel_bins >= 1, got {num_fft_bins} and "
        f"{num_mel_bins}.")
  if not 0.0 <= fmin < fmax <= nyquist:
    raise ValueError(
        f"mel_filterbank: need 0 <= fmin < fmax <= sample_rate / 2 = {nyquist}, got fmin={fmin}, "
        f"fmax={fmax}.")
  fft_hz = np.linspace(0.0, nyquist, num_fft_bins)
  edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), num_mel_bins + 2))
  lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
  rising = (fft_hz[:, None] - lower) / (centre - lower)
  falling = (upper - fft_hz[:, None]) / (upper - centre)
  return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def frame_sizes(sample_rate: int, window_ms: float, hop_ms: float) -> tuple[int, int, int]:
  """(window samples, hop samples, n_fft): n_fft is the next power of two >= the window."""
  window = int(round(sample_rate * window_ms / 1000.0))
  hop = int(round(sample_rate * hop_ms / 1000.0))
  if window < 2 or hop < 1:
    raise ValueError(
        f"window_ms={window_ms} and hop_ms={hop_ms} at {sample_rate} Hz give a window of {window} "
        f"and a hop of {hop} samples; need a window >= 2 and a hop >= 1.")
  return window, hop, 1 << (window - 1).bit_length()


def num_frames(num_samples: int, window: int, hop: int) -> int:
  """Frames of a waveform: 1 + (num_samples - window) // hop; one for anything up to a window.

  A waveform shorter than a window is zero-padded to one window; trailing samples that do not
  fill a whole hop past the last full window are dropped.
  """
  return 1 + max(0, num_samples - window) // hop


def log_mel_spectrogram(waveform: np.ndarray, *, sample_rate: int = 16000,
                        window_ms: float = 25.0, hop_ms: float = 10.0, num_mel_bins: int = 64,
                        fmin: float = 0.0, fmax: float | None = None,
                        eps: float = 1e-6) -> np.ndarray:
  """log(mel power + eps) of a mono waveform as float32 [time, num_mel_bins, 1].

  Frames of `window_ms` every `hop_ms` (time = `num_frames(...)`), Hann-windowed, zero-padded
  to a power-of-two rfft; power |X|^2 is pooled by `mel_filterbank`. The trailing axis makes
  the spectrogram a one-channel image for image-style encoders.
  """
  waveform = np.asarray(waveform, np.float32)
  if waveform.ndim != 1:
    raise ValueError(f"log_mel_spectrogram: waveform must be [samples], got shape "
                     f"{list(waveform.shape)}.")
  if waveform.size == 0:
    raise ValueError("log_mel_spectrogram: waveform is empty.")
  window, hop, n_fft = frame_sizes(sample_rate, window_ms, hop_ms)
  frames_count = num_frames(len(waveform), window, hop)
  needed = (frames_count - 1) * hop + window
  if len(waveform) < needed:
    waveform = np.pad(waveform, (0, needed - len(waveform)))
  starts = np.arange(frames_count)[:, None] * hop
  frames = waveform[starts + np.arange(window)]  # [time, window]
  # Periodic Hann (as in STFT practice): overlapping windows sum to a constant.
  hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(window) / window)
  power = np.abs(np.fft.rfft(frames * hann, n=n_fft, axis=-1)) ** 2  # [time, n_fft // 2 + 1]
  mel = power @ mel_filterbank(n_fft // 2 + 1, sample_rate, num_mel_bins, fmin, fmax)
  return np.log(mel + eps).astype(np.float32)[..., None]


def read_audio(path: str, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
  """An audio file as (float32 mono [samples] in [-1, 1], sample rate), through libsndfile.

  Reads what soundfile (libsndfile) reads: WAV of any PCM depth (8/16/24/32-bit) or float,
  FLAC, OGG/Vorbis and Opus, AIFF, MP3 and more. Channels are averaged to mono. With
  `sample_rate`, the waveform is resampled to it (`resample`). A truncated file yields the
  samples it holds (libsndfile reads up to the end of the data).

  Raises:
    ValueError: naming `path` and the reason: missing, not an audio format libsndfile reads,
      or no samples.
  """
  import soundfile

  if not os.path.isfile(path):
    what = "a directory, not a file" if os.path.isdir(path) else "no such file"
    raise ValueError(f"{path}: cannot read ({what}).")
  try:
    samples, rate = soundfile.read(os.fspath(path), dtype="float32", always_2d=True)
  except soundfile.LibsndfileError as e:
    raise ValueError(
        f"{path}: not a readable audio file ({e.error_string.rstrip('.')}); readable: WAV (PCM "
        f"8-32 bit or float), FLAC, OGG, AIFF, MP3 and the other libsndfile formats.") from e
  except (soundfile.SoundFileError, RuntimeError, OSError) as e:
    raise ValueError(f"{path}: cannot read the audio ({e or type(e).__name__}).") from e
  if samples.size == 0:
    raise ValueError(f"{path}: empty audio file (no samples).")
  waveform = samples.mean(axis=1)
  if sample_rate is not None and int(sample_rate) != rate:
    waveform, rate = resample(waveform, rate, int(sample_rate)), int(sample_rate)
  return waveform.astype(np.float32), int(rate)


def read_wav(path: str) -> tuple[np.ndarray, int]:
  """`read_audio` at the file's own rate (kept for callers that read WAV files)."""
  return read_audio(path)


def resample(waveform: np.ndarray, rate: int, target: int) -> np.ndarray:
  """float [samples] from `rate` to `target` Hz: scipy's polyphase filter (anti-aliased).

  The output has ceil(samples * target / rate) samples.
  """
  import math

  from scipy.signal import resample_poly

  if rate <= 0 or target <= 0:
    raise ValueError(f"resample: sample rates must be positive, got {rate} -> {target}.")
  if rate == target:
    return np.asarray(waveform, np.float32)
  g = math.gcd(int(rate), int(target))
  return resample_poly(np.asarray(waveform, np.float64), target // g, rate // g).astype(np.float32)


def write_wav(path: str, waveform: np.ndarray, sample_rate: int,
              subtype: str | None = None) -> None:
  """Writes float [samples] (mono) or [samples, channels] in [-1, 1] with soundfile.

  The format follows the file's extension (.wav, .flac, .ogg, ...); `subtype` is
  soundfile's (PCM_16, PCM_24, FLOAT, VORBIS, ...; default: the format's, 16-bit for WAV).
  """
  import soundfile

  soundfile.write(os.fspath(path), np.asarray(waveform, np.float64), int(sample_rate),
                  subtype=subtype)


def pad_to_length(waveform: np.ndarray, length: int) -> np.ndarray:
  """The first `length` samples of [samples, ...], zero-padded at the end when shorter."""
  if len(waveform) >= length:
    return waveform[:length]
  pad = [(0, length - len(waveform))] + [(0, 0)] * (waveform.ndim - 1)
  return np.pad(waveform, pad)


def random_crop(waveform: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
  """A random `length`-sample window of [samples, ...]; shorter inputs are zero-padded."""
  if len(waveform) <= length:
    return pad_to_length(waveform, length)
  start = int(rng.integers(0, len(waveform) - length + 1))
  return waveform[start:start + length]
