"""Audio features: mel filterbank, log-mel spectrograms (vs librosa), file reading, crops."""

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


# (file name, soundfile subtype, largest error vs the float input): every PCM depth, float,
# FLAC (lossless 16-bit) and OGG/Vorbis (lossy: checked by its spectrum below).
FORMATS = [("u8.wav", "PCM_U8", 1 / 128), ("s16.wav", "PCM_16", 1 / 32768),
           ("s24.wav", "PCM_24", 2 ** -23), ("s32.wav", "PCM_32", 2 ** -30),
           ("f32.wav", "FLOAT", 1e-7), ("f64.wav", "DOUBLE", 1e-7),
           ("x.flac", "PCM_16", 1 / 32768), ("x.ogg", "VORBIS", None)]


@pytest.mark.parametrize("name,subtype,error", FORMATS)
def test_reads_any_pcm_depth_float_flac_and_ogg(tmp_path, name, subtype, error):
  wave_in = tone(1000.0, 0.5, 16000)
  stereo = np.stack([wave_in, -wave_in * 0.5], axis=1)  # mono = the mean: wave_in / 4
  audio.write_wav(tmp_path / name, stereo, 16000, subtype=subtype)
  back, rate = audio.read_audio(str(tmp_path / name))
  assert rate == 16000 and back.dtype == np.float32 and back.ndim == 1
  if error is not None:
    assert back.shape == wave_in.shape
    np.testing.assert_allclose(back, wave_in / 4, atol=error)
  else:  # Vorbis: the 1 kHz tone survives with about its energy
    spectrum = np.abs(np.fft.rfft(back))
    assert abs(spectrum.argmax() * rate / len(back) - 1000.0) < 5
    assert np.sqrt(np.mean(back ** 2)) == pytest.approx(np.sqrt(np.mean((wave_in / 4) ** 2)),
                                                        rel=0.1)


def test_resampling_keeps_the_tone_and_the_duration(tmp_path):
  # 44.1 kHz -> 16 kHz (and up, 8 kHz -> 16 kHz): polyphase resampling keeps pitch and length.
  for rate in (44100, 8000):
    audio.write_wav(tmp_path / f"{rate}.wav", tone(1500.0, 0.5, rate), rate, subtype="FLOAT")
    back, out_rate = audio.read_audio(str(tmp_path / f"{rate}.wav"), sample_rate=16000)
    assert out_rate == 16000 and len(back) == 8000
    spectrum = np.abs(np.fft.rfft(back))
    assert spectrum.argmax() * 16000 / len(back) == pytest.approx(1500.0, abs=2.0)
    # The steady part matches a tone made at 16 kHz (edges are the filter's transients).
    np.testing.assert_allclose(back[500:-500], tone(1500.0, 0.5, 16000)[500:-500], atol=0.02)
  # A 7 kHz tone is above the 4 kHz Nyquist frequency of 8 kHz audio: resampling filters it
  # out rather than aliasing it to 1 kHz.
  audio.write_wav(tmp_path / "hi.wav", tone(7000.0, 0.5, 32000), 32000, subtype="FLOAT")
  low, _ = audio.read_audio(str(tmp_path / "hi.wav"), sample_rate=8000)
  assert np.sqrt(np.mean(low[200:-200] ** 2)) < 0.01


def test_bad_audio_files_name_the_file(tmp_path):
  text = tmp_path / "notes.wav"
  text.write_text("not audio")
  with pytest.raises(ValueError, match=r"notes.wav: not a readable audio file \(Format not "
                                       r"recognised\); readable: WAV"):
    audio.read_audio(str(text))
  tiny = tmp_path / "tiny.wav"  # 20 bytes of a real WAV header: a non-empty reason
  audio.write_wav(tiny, tone(440.0, 0.1, 8000), 8000)
  tiny.write_bytes(tiny.read_bytes()[:20])
  with pytest.raises(ValueError, match=r"tiny.wav: not a readable audio file \(\S.+\)"):
    audio.read_audio(str(tiny))
  empty = tmp_path / "empty.wav"
  audio.write_wav(empty, np.zeros(0), 8000)
  with pytest.raises(ValueError, match=r"empty.wav: empty audio file"):
    audio.read_audio(str(empty))
  with pytest.raises(ValueError, match=r"gone.wav: cannot read \(no such file\)"):
    audio.read_audio(str(tmp_path / "gone.wav"))
  # A truncated file yields the samples it holds (libsndfile reads to the end of the data).
  truncated = tmp_path / "cut.wav"
  audio.write_wav(truncated, tone(440.0, 0.1, 8000), 8000)
  truncated.write_bytes(truncated.read_bytes()[:-100])
  assert len(audio.read_audio(str(truncated))[0]) == 800 - 50


@pytest.mark.parametrize("rate,window_ms,hop_ms,mels", [(16000, 32.0, 10.0, 64),
                                                        (16000, 25.0, 10.0, 40),
                                                        (8000, 25.0, 12.5, 32)])
def test_log_mel_matches_librosa(rate, window_ms, hop_ms, mels):
  """Our log-mel against librosa's (HTK mel, unnormalised filters, periodic Hann, power 2).

  librosa centres a window of `window` samples in each n_fft frame, so its frame t starts
  (n_fft - window) // 2 samples later than ours: padding the waveform by that much at both
  ends gives the same frames. Tolerance: 1e-4 absolute on log(mel + 1e-6), i.e. 0.01% on
  the mel power (measured: about 1e-6, float32 rounding).
  """
  librosa = pytest.importorskip("librosa")
  rng = np.random.default_rng(0)
  wave_in = (tone(440.0, 0.7, rate) + tone(2100.0, 0.7, rate, 0.2)
             + 0.05 * rng.standard_normal(int(0.7 * rate)).astype(np.float32))
  ours = audio.log_mel_spectrogram(wave_in, sample_rate=rate, window_ms=window_ms,
                                   hop_ms=hop_ms, num_mel_bins=mels)[..., 0]
  window, hop, n_fft = audio.frame_sizes(rate, window_ms, hop_ms)
  offset = (n_fft - window) // 2
  padded = np.pad(wave_in, (offset, n_fft - window - offset))
  mel = librosa.feature.melspectrogram(
      y=padded, sr=rate, n_fft=n_fft, hop_length=hop, win_length=window, window="hann",
      center=False, power=2.0, n_mels=mels, htk=True, norm=None, fmin=0.0, fmax=rate / 2)
  theirs = np.log(mel.T + 1e-6)  # [time, mel]
  assert theirs.shape == ours.shape
  np.testing.assert_allclose(ours, theirs, atol=1e-4)


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
