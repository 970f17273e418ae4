"""Audio features: mel filterbank, log-mel spectrograms of tones, WAV reading, crops."""

import wave

import numpy as np
import pytest

from imp.data import audio


def tone(freq: float, seconds: float = 0.5, rate: int = 16000, amplitude: float = 0.5):
  t = np.arange(int(seconds * rate)) / rate
  return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_mel_scale_is_monotone_and_inverts():
  hz = np.linspace(0, 8000, 200)
  mel = audio.hz_to_mel(hz)
  assert np.all(np.diff(mel) > 0)
  np.testing.assert_allclose(audio.mel_to_hz(mel), hz, atol=1e-6)
  assert audio.hz_to_mel(1000.0) == pytest.approx(1000.0, abs=0.5)  # the scale's anchor


def test_filterbank_rows_are_triangles():
  bank = audio.mel_filterbank(257, 16000, 40)
  assert bank.shape == (257, 40) and bank.dtype == np.float32
  assert bank.min() >= 0.0 and bank.max() <= 1.0
  peaks = bank.argmax(axis=0)
  assert np.all(np.diff(peaks) >= 0)  # filter centres rise with the mel bin
  for m in range(40):
    col = bank[:, m]
    nonzero = np.flatnonzero(col)
    assert len(nonzero) >= 1
    # One contiguous support, rising to the peak and falling after it.
    assert np.all(np.diff(nonzero) == 1)
    up, down = col[nonzero[0]:peaks[m] + 1], col[peaks[m]:nonzero[-1] + 1]
    assert np.all(np.diff(up) >= 0) and np.all(np.diff(down) <= 0)
  # Inside [fmin, fmax], adjacent triangles overlap into a partition of unity, away from the
  # two outermost half-triangles.
  total = bank.sum(axis=1)
  hz = np.linspace(0, 8000, 257)
  centres = audio.mel_to_hz(np.linspace(0, audio.hz_to_mel(8000), 42))
  inner = (hz > centres[1]) & (hz < centres[-2])
  np.testing.assert_allclose(total[inner], 1.0, atol=1e-5)


def test_filterbank_rejects_bad_ranges():
  with pytest.raises(ValueError, match="fmax <= sample_rate / 2 = 8000"):
    audio.mel_filterbank(257, 16000, 40, fmax=9000)


def test_frame_count_arithmetic():
  window, hop, n_fft = audio.frame_sizes(16000, 25.0, 10.0)
  assert (window, hop, n_fft) == (400, 160, 512)
  for samples, frames in ((16000, 98), (400, 1), (399, 1), (560, 2), (559, 1), (1, 1)):
    assert audio.num_frames(samples, window, hop) == frames
    spec = audio.log_mel_spectrogram(np.zeros(samples, np.float32), num_mel_bins=32)
    assert spec.shape == (frames, 32, 1) and spec.dtype == np.float32
  with pytest.raises(ValueError, match="waveform is empty"):
    audio.log_mel_spectrogram(np.zeros(0))


def _centres(num_mel_bins, fmax=8000.0):
  """Centre frequencies (Hz) of the mel filters."""
  return audio.mel_to_hz(np.linspace(0, audio.hz_to_mel(fmax), num_mel_bins + 2))[1:-1]


@pytest.mark.parametrize("mel_bin", [12, 30, 55])
def test_tone_at_a_filter_centre_peaks_in_that_bin(mel_bin):
  freq = float(_centres(64)[mel_bin])
  spec = audio.log_mel_spectrogram(tone(freq), num_mel_bins=64)[..., 0]
  assert np.all(spec.argmax(axis=1) == mel_bin)
  # Silence sits at log(eps); the tone stands far above it.
  assert spec.max() - np.log(1e-6) > 10


@pytest.mark.parametrize("freq", [440.0, 1000.0, 2500.0, 6000.0])
def test_tone_peaks_in_the_mel_bin_containing_it(freq):
  spec = audio.log_mel_spectrogram(tone(freq), num_mel_bins=40)[..., 0]
  # The bin containing f: the filter whose centre is nearest f on the mel scale.
  expected = int(np.argmin(abs(audio.hz_to_mel(_centres(40)) - audio.hz_to_mel(freq))))
  assert np.all(spec.argmax(axis=1) == expected)


def test_wav_round_trip_and_stereo_to_mono(tmp_path):
  wave_in = tone(440.0, 0.1, 8000)
  path = tmp_path / "a.wav"
  audio.write_wav(path, wave_in, 8000)
  back, rate = audio.read_wav(str(path))
  assert rate == 8000 and back.dtype == np.float32 and back.shape == wave_in.shape
  np.testing.assert_allclose(back, wave_in, atol=1 / 32768)
  stereo = np.stack([wave_in, np.zeros_like(wave_in)], axis=1)
  audio.write_wav(tmp_path / "s.wav", stereo, 8000)
  mono, _ = audio.read_wav(str(tmp_path / "s.wav"))
  np.testing.assert_allclose(mono, wave_in / 2, atol=1 / 32768)


def test_bad_wav_files_name_the_file(tmp_path):
  text = tmp_path / "notes.wav"
  text.write_text("not audio")
  with pytest.raises(ValueError, match=r"notes.wav: not a PCM WAV file"):
    audio.read_wav(str(text))
  eight_bit = tmp_path / "u8.wav"
  with wave.open(str(eight_bit), "wb") as f:
    f.setnchannels(1)
    f.setsampwidth(1)
    f.setframerate(8000)
    f.writeframes(bytes(100))
  with pytest.raises(ValueError, match=r"u8.wav: unsupported sample width of 8 bits"):
    audio.read_wav(str(eight_bit))
  empty = tmp_path / "empty.wav"
  audio.write_wav(empty, np.zeros(0), 8000)
  with pytest.raises(ValueError, match=r"empty.wav: empty WAV file"):
    audio.read_wav(str(empty))
  truncated = tmp_path / "cut.wav"
  audio.write_wav(truncated, tone(440.0, 0.1, 8000), 8000)
  truncated.write_bytes(truncated.read_bytes()[:-100])
  with pytest.raises(ValueError, match=r"cut.wav: truncated"):
    audio.read_wav(str(truncated))


def test_random_crop_and_pad():
  rng = np.random.default_rng(0)
  x = np.arange(10, dtype=np.float32)
  np.testing.assert_array_equal(audio.pad_to_length(x, 13), np.r_[x, 0, 0, 0])
  np.testing.assert_array_equal(audio.random_crop(x, 12, rng), np.r_[x, 0, 0])
  starts = set()
  for _ in range(50):
    crop = audio.random_crop(x, 4, rng)
    assert crop.shape == (4,) and np.all(np.diff(crop) == 1)
    starts.add(int(crop[0]))
  assert starts == set(range(7))  # every window position occurs
