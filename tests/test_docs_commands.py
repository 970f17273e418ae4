"""The data commands of docs/data.md, run on files made here.

`write_media_examples(root)` writes a small folder of each media kind; the test runs the
documented commands on it (from `root`, as a user would) and checks what they print. The
outputs shown in the docs come from these commands on these files:

  python -c "from tests.test_docs_commands import write_media_examples as w; w('/tmp/media')"
"""

import io
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from imp.data import audio, video_file
from imp.data.images import write_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEAKERS = ("jackson", "nicolas", "theo", "yweweler")
DIGIT_HZ = (300.0, 700.0, 1100.0)

# The commands, exactly as the docs show them (run from the folder write_media_examples made).
COMMANDS = {
    "image": ["image_folder", "--input", "photos", "--output", "data/photos", "--resize", "32",
              "32", "--center-crop"],
    "audio": ["audio_folder", "--input", "speech", "--output", "data/speech", "--label-pattern",
              r"(?P<label>\d)_(?P<group>[a-z]+)_\d+\.(wav|flac)", "--group-pattern",
              r"(?P<label>\d)_(?P<group>[a-z]+)_\d+\.(wav|flac)", "--test-groups", "theo",
              "--class-names", "0=zero,1=one,2=two", "--sample-rate", "16000",
              "--clip-seconds", "1", "--log-mel"],
    "video": ["video_folder", "--input", "clips", "--output", "data/clips", "--fps", "8",
              "--resize", "32", "32", "--video-audio", "--sample-rate", "16000",
              "--clip-seconds", "1", "--log-mel"],
    "manifest": ["manifest", "--input", "pairs.jsonl", "--output", "data/pairs", "--on-error",
                 "skip"],
}


def _photo(rng, h, w, hue):
  y, x = np.mgrid[0:h, 0:w]
  base = np.stack([hue * np.ones_like(x), 255 * x / w, 255 * y / h], axis=-1)
  return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def _tone(freq, seconds, rate):
  return 0.4 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)


def write_media_examples(root: str) -> None:
  """photos/ (JPEG, PNG, an RGBA PNG), speech/ (WAV and FLAC at 8/22.05/44.1 kHz, named
  {digit}_{speaker}_{index}), clips/ (MP4 and WebM with a tone track), pairs.jsonl (image +
  caption, one truncated JPEG)."""
  rng = np.random.default_rng(0)
  for c, name in enumerate(("cat", "dog")):
    os.makedirs(os.path.join(root, "photos", name), exist_ok=True)
    for i in range(6):
      image = _photo(rng, 48, 64, 60 + 120 * c)
      ext = ".jpg" if i % 2 else ".png"
      write_image(os.path.join(root, "photos", name, f"{i}{ext}"), image)
  rgba = np.concatenate([_photo(rng, 40, 40, 60), np.full((40, 40, 1), 200, np.uint8)], -1)
  write_image(os.path.join(root, "photos", "cat", "transparent.png"), rgba)
  os.makedirs(os.path.join(root, "speech"), exist_ok=True)
  for d, hz in enumerate(DIGIT_HZ):
    for s, speaker in enumerate(SPEAKERS):
      for i in range(2):
        rate = (8000, 22050, 44100)[(s + i) % 3]
        ext = ".flac" if i else ".wav"
        audio.write_wav(os.path.join(root, "speech", f"{d}_{speaker}_{i}{ext}"),
                        _tone(hz + 15 * s, 0.5 + 0.2 * i, rate), rate)
  for c, (name, hz) in enumerate((("drum", 200.0), ("flute", 1500.0))):
    os.makedirs(os.path.join(root, "clips", name), exist_ok=True)
    for i, ext in enumerate((".mp4", ".webm", ".mp4")):
      frames = np.stack([np.roll(_photo(rng, 48, 64, 60 + 120 * c), 4 * t, axis=1)
                         for t in range(24)])
      video_file.write_video(os.path.join(root, "clips", name, f"{i}{ext}"), frames, 24.0,
                             audio=_tone(hz, 1.0, 16000), sample_rate=16000)
  os.makedirs(os.path.join(root, "pairs"), exist_ok=True)
  rows = []
  for i in range(10):
    path = os.path.join(root, "pairs", f"{i}.jpg")
    write_image(path, _photo(rng, 32, 32, 25 * i))
    rows.append(f'{{"image": "pairs/{i}.jpg", "text": "a gradient of hue {25 * i}"}}\n')
  buffer = io.BytesIO()
  Image.fromarray(_photo(rng, 32, 32, 0)).save(buffer, format="JPEG")
  with open(os.path.join(root, "pairs", "cut.jpg"), "wb") as f:
    f.write(buffer.getvalue()[:200])
  rows.append('{"image": "pairs/cut.jpg", "text": "a truncated file"}\n')
  with open(os.path.join(root, "pairs.jsonl"), "w") as f:
    f.writelines(rows)


def _run(root, args):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  run = subprocess.run([sys.executable, "-m", "imp.data.prepare", *args], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr
  return run.stdout


def test_documented_commands(tmp_path):
  write_media_examples(str(tmp_path))
  image = _run(tmp_path, COMMANDS["image"])
  assert "found 2 classes: cat (7), dog (6)" in image
  assert ("prepared image_folder photos -> data/photos: train 11, test 2 examples, 2 classes, "
          "fields image uint8 [32, 32, 3], label int32 []") in image
  speech = _run(tmp_path, COMMANDS["audio"])
  assert "found 3 classes: one (8), two (8), zero (8)" in speech
  assert ("train 18, test 6 examples, 3 classes, fields audio float32 [98, 64, 1], "
          "label int32 []") in speech
  assert "  test groups: theo" in speech
  clips = _run(tmp_path, COMMANDS["video"])
  assert "found 2 classes: drum (3), flute (3)" in clips
  assert ("train 4, test 2 examples, 2 classes, fields audio float32 [98, 64, 1], video uint8 "
          "[8, 32, 32, 3], fps float32 [], label int32 []") in clips
  pairs = _run(tmp_path, COMMANDS["manifest"])
  assert ("train 8, test 2 examples, 0 classes, fields image uint8 [32, 32, 3], text str "
          "[]") in pairs
  assert "skipped 1 file(s):" in pairs
  assert "cut.jpg: cannot decode the image: truncated or corrupt data" in pairs
