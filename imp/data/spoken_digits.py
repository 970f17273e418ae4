"""Builds the local folders of the audio-visual digits experiment, reproducibly.

  python -m imp.data.spoken_digits --output DIR [--overwrite]

Writes, under DIR:
  wav/<voice>/<digit>_s<speed>_p<pitch>.wav   one spoken digit ("zero" .. "nine") per file,
                                              synthesised by espeak-ng for every voice, speed
                                              (words per minute) and pitch (0..99)
  wav/manifest.csv                            audio, label, voice, split: the voices in
                                              `--test-voices` form the "test" split, so
                                              held-out accuracy is over unseen voices
  images/<digit>/<index>.png                  scikit-learn's 1,797 8x8 handwritten digits
  prepared/spoken                             `prepare manifest --split-by split --log-mel`
  prepared/images                             `prepare image_folder` (seeded 20% test split)

The same arguments give the same files: espeak-ng is deterministic, and so is the split. The
command prints a digest of the synthesised WAV files (`speech_digest`), so that two machines
can tell whether they trained on the same speech (another espeak-ng build may synthesise
other samples).
Class folders use the digit names, so the two prepared datasets share class names and a
`paired` source can join them by label.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import shutil
import subprocess
from collections.abc import Sequence

import numpy as np

from imp import paths
from imp.data import prepare
from imp.data.images import write_image
from imp.data.sources import DIGIT_NAMES

TRAIN_VOICES = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
                "en-us+f2", "en+m3")
TEST_VOICES = ("en-gb-x-gbcwmd", "en-us-nyc+f4")
SPEEDS = (130, 165, 200)
PITCHES = (35, 50, 65)


def espeak_binary() -> str | None:
  """The espeak-ng executable, or None when it is not installed."""
  return shutil.which("espeak-ng")


def synthesise(text: str, path: str, *, voice: str, speed: int, pitch: int) -> None:
  """Speaks `text` into the WAV file `path` with espeak-ng; ValueError naming the voice."""
  binary = espeak_binary()
  if binary is None:
    raise ValueError("espeak-ng is not installed (Debian: apt-get install espeak-ng); it "
                     "synthesises the spoken digits.")
  result = subprocess.run(
      [binary, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", path, text],
      capture_output=True, text=True, check=False)
  if result.returncode != 0 or not os.path.isfile(path):
    raise ValueError(f"espeak-ng -v {voice} failed for {text!r}: "
                     f"{result.stderr.strip() or f'exit status {result.returncode}'}.")


def write_spoken_digits(directory: str, *, train_voices: Sequence[str],
                        test_voices: Sequence[str], speeds: Sequence[int],
                        pitches: Sequence[int]) -> str:
  """Writes the WAV files and their manifest under `directory`; returns the manifest path."""
  overlap = sorted(set(train_voices) & set(test_voices))
  if overlap:
    raise ValueError(f"voices {overlap} are in both --train-voices and --test-voices; held-out "
                     "voices must be unseen in training.")
  rows = []
  for split, voices in (("train", train_voices), ("test", test_voices)):
    for voice in voices:
      folder = os.path.join(directory, voice.replace("+", "_"))
      os.makedirs(folder, exist_ok=True)
      for digit in DIGIT_NAMES:
        for speed in speeds:
          for pitch in pitches:
            name = f"{digit}_s{speed}_p{pitch}.wav"
            synthesise(digit, os.path.join(folder, name), voice=voice, speed=speed, pitch=pitch)
            rows.append({"audio": os.path.join(os.path.basename(folder), name), "label": digit,
                         "voice": voice, "split": split})
  manifest = os.path.join(directory, "manifest.csv")
  with open(manifest, "w", encoding="utf-8", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=("audio", "label", "voice", "split"))
    writer.writeheader()
    writer.writerows(rows)
  return manifest


def speech_digest(directory: str) -> tuple[str, int]:
  """(sha256 hex over every WAV file's relative path and bytes, in sorted order; file count)
  of a folder `write_spoken_digits` wrote."""
  paths = sorted(os.path.relpath(os.path.join(root, name), directory)
                 for root, _, names in os.walk(directory) for name in names
                 if name.endswith(".wav"))
  digest = hashlib.sha256()
  for path in paths:
    digest.update(path.encode() + b"\0")
    with open(os.path.join(directory, path), "rb") as f:
      digest.update(f.read())
  return digest.hexdigest(), len(paths)


def espeak_version() -> str:
  """The first line of `espeak-ng --version` ("" when it is not installed)."""
  binary = espeak_binary()
  if binary is None:
    return ""
  result = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
  lines = result.stdout.strip().splitlines()
  return lines[0].split("  Data at")[0].strip() if lines else ""


def digit_images() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's 1,797 handwritten digits: uint8 images [n, 8, 8] (0..16 scaled by 16, so
  0..255) and int labels [n]."""
  from sklearn.datasets import load_digits

  digits = load_digits()
  return np.clip(digits.images * 16.0, 0, 255).astype(np.uint8), digits.target


def write_digit_images(directory: str) -> int:
  """scikit-learn's digits as <directory>/<digit name>/<index>.png; returns the count."""
  images, labels = digit_images()
  for index, (image, label) in enumerate(zip(images, labels, strict=True)):
    folder = os.path.join(directory, DIGIT_NAMES[label])
    os.makedirs(folder, exist_ok=True)
    write_image(os.path.join(folder, f"{index:04d}.png"), image)
  return len(images)


def empty_output_dir(path: str, overwrite: bool) -> str:
  """--output of a data-building command, as an absolute path: new or empty, or emptied
  with --overwrite; ValueError naming it otherwise."""
  output = os.path.abspath(os.path.expanduser(path))
  if os.path.exists(output) and os.listdir(output):
    if not overwrite:
      raise ValueError(f"--output {output}: not empty; pass --overwrite to rebuild it.")
    shutil.rmtree(output)
  return output


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
  """Runs the command line; returns {"spoken": dir, "images": dir} of the prepared datasets."""
  p = argparse.ArgumentParser(prog="python -m imp.data.spoken_digits", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--output", required=True)
  p.add_argument("--overwrite", action="store_true", help="delete DIR's earlier contents")
  p.add_argument("--train-voices", nargs="+", default=TRAIN_VOICES)
  p.add_argument("--test-voices", nargs="+", default=TEST_VOICES)
  p.add_argument("--speeds", type=int, nargs="+", default=SPEEDS)
  p.add_argument("--pitches", type=int, nargs="+", default=PITCHES)
  p.add_argument("--num-mel-bins", type=int, default=32)
  p.add_argument("--clip-seconds", type=float, default=1.0)
  args = p.parse_args(argv)
  output = empty_output_dir(args.output, args.overwrite)
  # Built beside --output and renamed when complete: an interrupted build (only wav/, say)
  # leaves nothing that the experiments take for finished data.
  with paths.folder_when_complete(output) as partial:
    build_folders(str(partial), args)
  return {"spoken": os.path.join(output, "prepared", "spoken"),
          "images": os.path.join(output, "prepared", "images")}


def build_folders(output: str, args: argparse.Namespace) -> None:
  """Speech, its manifest, the digit images and both prepared datasets under `output`."""
  manifest = write_spoken_digits(os.path.join(output, "wav"), train_voices=args.train_voices,
                                 test_voices=args.test_voices, speeds=args.speeds,
                                 pitches=args.pitches)
  digest, files = speech_digest(os.path.join(output, "wav"))
  print(f"speech: {files} WAV files, sha256 {digest} ({espeak_version()})")
  write_digit_images(os.path.join(output, "images"))
  prepared = {"spoken": os.path.join(output, "prepared", "spoken"),
              "images": os.path.join(output, "prepared", "images")}
  prepare.main(["manifest", "--input", manifest, "--output", prepared["spoken"], "--split-by",
                "split", "--log-mel", "--num-mel-bins", str(args.num_mel_bins),
                "--clip-seconds", str(args.clip_seconds)])
  prepare.main(["image_folder", "--input", os.path.join(output, "images"), "--output",
                prepared["images"], "--test-fraction", "0.2", "--seed", "0"])


if __name__ == "__main__":
  prepare.run_command(main)
