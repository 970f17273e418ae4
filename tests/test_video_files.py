"""Video files through PyAV: frame counts, fps resampling, the audio track, prepare, bad files.

The videos are made with PyAV too (`video_file.write_video`): frame t is a flat image of
brightness 8 t, so a decoded frame says which frame it is even after lossy compression.
"""

import os

import numpy as np
import pytest

import imp.data.arrayrecord_source  # noqa: F401  (registers "arrayrecord")
from imp.data import eval_batches, load_source, task_dataset, video_file
from imp.data.prepare import main
from imp.tasks import Task, Variant

FRAMES, FPS, SIZE, RATE = 30, 30.0, 16, 16000


def _frames(count=FRAMES) -> np.ndarray:
  return np.broadcast_to((8 * np.arange(count, dtype=np.uint8))[:, None, None, None],
                         (count, SIZE, SIZE, 3)).copy()


def _tone(freq, seconds=1.0, rate=RATE):
  return 0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)


def _index(frames: np.ndarray) -> np.ndarray:
  """Which source frame each decoded frame is (its mean brightness / 8)."""
  return np.round(frames.reshape(len(frames), -1).mean(axis=1) / 8).astype(int)


@pytest.mark.parametrize("ext", [".mp4", ".webm", ".avi"])
def test_frame_counts_fps_resampling_and_audio_track(tmp_path, ext):
  path = str(tmp_path / f"clip{ext}")
  video_file.write_video(path, _frames(), FPS, audio=_tone(440.0), sample_rate=RATE)
  frames, fps = video_file.read_video(path)
  assert frames.dtype == np.uint8 and frames.shape == (FRAMES, SIZE, SIZE, 3) and fps == FPS
  np.testing.assert_array_equal(_index(frames), np.arange(FRAMES))
  # 30 -> 10 fps: every third frame; 30 -> 60 fps: each frame twice; 30 -> 12: frame floor(2.5 k).
  down, fps = video_file.read_video(path, fps=10)
  assert fps == 10 and len(down) == 10
  np.testing.assert_array_equal(_index(down), np.arange(0, FRAMES, 3))
  up, _ = video_file.read_video(path, fps=60)
  np.testing.assert_array_equal(_index(up), np.repeat(np.arange(FRAMES), 2))
  odd, _ = video_file.read_video(path, fps=12)
  np.testing.assert_array_equal(_index(odd), np.floor(np.arange(12) * 2.5).astype(int))
  first, _ = video_file.read_video(path, max_seconds=0.5)
  assert len(first) == 15
  # The audio track: a 440 Hz tone of (about) one second, resampled on request.
  for rate in (None, 8000):
    waveform, got_rate = video_file.read_audio_track(path, sample_rate=rate)
    assert got_rate == (rate or (48000 if ext == ".webm" else RATE))
    assert abs(len(waveform) / got_rate - 1.0) < 0.05
    spectrum = np.abs(np.fft.rfft(waveform))
    assert spectrum.argmax() * got_rate / len(waveform) == pytest.approx(440.0, abs=3)


def test_bad_video_files(tmp_path):
  (tmp_path / "notes.mp4").write_text("not a video")
  with pytest.raises(ValueError, match=r"notes.mp4: not a video file FFmpeg can read"):
    video_file.read_video(str(tmp_path / "notes.mp4"))
  video_file.write_video(str(tmp_path / "empty.avi"), _frames(0), FPS)
  with pytest.raises(ValueError, match=r"empty.avi: the video stream has no frames"):
    video_file.read_video(str(tmp_path / "empty.avi"))
  video_file.write_video(str(tmp_path / "silent.mp4"), _frames(3), FPS)
  with pytest.raises(ValueError, match=r"silent.mp4: has no audio track"):
    video_file.read_audio_track(str(tmp_path / "silent.mp4"))
  with pytest.raises(ValueError, match=r"gone.mp4: cannot read \(no such file\)"):
    video_file.read_video(str(tmp_path / "gone.mp4"))


def test_prepare_video_files_with_their_audio(tmp_path, capsys):
  """A video_folder of MP4/WebM/AVI files: clips at --fps, the audio track as a second modality
  of the same example; an empty video is skipped and counted."""
  tones = {"low": 300.0, "high": 2000.0}
  for name, freq in tones.items():
    (tmp_path / "in" / name).mkdir(parents=True)
    for i, ext in enumerate((".mp4", ".webm", ".avi")):
      video_file.write_video(str(tmp_path / "in" / name / f"{i}{ext}"), _frames(), FPS,
                             audio=_tone(freq), sample_rate=RATE)
  video_file.write_video(str(tmp_path / "in" / "low" / "empty.avi"), _frames(0), FPS)
  meta = main(["video_folder", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"),
               "--fps", "10", "--resize", "8", "8", "--video-audio", "--sample-rate", "8000",
               "--clip-seconds", "1", "--log-mel", "--num-mel-bins", "16",
               "--test-fraction", "0.34", "--on-error", "skip"])
  printed = capsys.readouterr().out
  assert "skipped 1 file(s):" in printed and "empty.avi: the video stream has no frames" in printed
  assert meta["fields"]["video"] == {"dtype": "uint8", "shape": [10, 8, 8, 3]}
  assert meta["fields"]["fps"] == {"dtype": "float32", "shape": []}
  # 1 s at 8 kHz, 25 ms windows every 10 ms: 1 + (8000 - 200) // 80 = 98 frames.
  assert meta["fields"]["audio"] == {"dtype": "float32", "shape": [98, 16, 1]}
  assert sum(v["count"] for v in meta["splits"].values()) == 6 and len(meta["skipped"]) == 1
  data = load_source("v", dict(source="arrayrecord", directory=str(tmp_path / "o"),
                               clip_fps=5))
  assert data.modalities == ("video", "audio", "text")
  for i in range(len(data.split("train"))):
    example = data.split("train")[i]
    np.testing.assert_array_equal(_index(example["video"]), np.arange(0, FRAMES, 3))
    assert float(example["fps"]) == 10.0
    peak = int(example["audio"][..., 0].mean(axis=0).argmax())  # the tone's mel bin
    assert (peak < 8) == (data.class_names[example["label"]] == "low")
  videos = eval_batches(data, "test", modality="video", resolution=(8, 8), batch_size=2,
                        frames=2)
  assert videos.batches[0]["video"].shape == (2, 2, 8, 8, 3)
  sounds = eval_batches(data, "test", modality="audio", resolution=None, batch_size=2,
                        spectrogram=(98, 16))
  assert sounds.batches[0]["audio"].shape == (2, 98, 16, 1)
  # One example gives both modalities: a video<->audio contrastive task reads them together.
  task = Task(name="va/base", entry="va", dataset="v", objective="nce",
              modalities=("video", "audio"), weight=1.0,
              variant=Variant("base", batch_size=2, resolution=(8, 8), frames=2,
                              spectrogram=(64, 16)))
  batch = next(iter(task_dataset(data, task, seed=0, num_threads=1)))
  assert batch["video"].shape == (2, 2, 8, 8, 3) and batch["audio"].shape == (2, 64, 16, 1)
  assert os.path.isfile(tmp_path / "o" / "metadata.json")
