"""Builds a small real video dataset: scikit-learn digits moving on a canvas (Moving-MNIST style).

  python -m imp.data.moving_digits --output DIR [--frames 16] [--canvas 16] [--fps 16]
                                   [--seed 0] [--overwrite]

Writes, under DIR:
  frames/<digit>/<index>/<t>.png   one clip per scikit-learn digit image (1,797): the 8x8 digit
                                   moving over a black `--canvas` x `--canvas` frame for
                                   `--frames` frames, bouncing off the edges (the Moving-MNIST
                                   construction of Srivastava et al. 2015, one digit per clip)
  prepared                         `prepare video_folder --fps F` (seeded, stratified 20% test)

Each clip's start position and velocity are drawn from a generator seeded with (seed, image
index), so the same arguments give the same files. There is exactly one clip per source image,
so the train and test splits never share a digit image. Class folders use the digit names
("zero" .. "nine"), as `imp.data.spoken_digits` does, so a `paired` source can join these
videos with the spoken digits by label.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import numpy as np

from imp.data import prepare
from imp.data.images import write_image
from imp.data.sources import DIGIT_NAMES
from imp.data.spoken_digits import digit_images, empty_output_dir

SPEED = (0.5, 1.5)  # pixels per frame, uniform


def trajectory(rng: np.random.Generator, frames: int, room: int) -> np.ndarray:
  """int [frames, 2] top-left (row, col) positions in 0..room, moving at a constant speed and
  reflecting off the edges (room = canvas size - digit size)."""
  if room < 0:
    raise ValueError(f"the canvas is smaller than the digit (room {room}); use --canvas >= 8.")
  position = rng.uniform(0, room, size=2)
  angle = rng.uniform(0, 2 * np.pi)
  velocity = rng.uniform(*SPEED) * np.array([np.sin(angle), np.cos(angle)])
  positions = []
  for _ in range(frames):
    positions.append(np.round(position).astype(np.int64))
    position = position + velocity
    for axis in range(2):  # reflect off the walls
      if position[axis] < 0:
        position[axis], velocity[axis] = -position[axis], -velocity[axis]
      elif position[axis] > room:
        position[axis], velocity[axis] = 2 * room - position[axis], -velocity[axis]
  return np.stack(positions)


def moving_clip(image: np.ndarray, positions: np.ndarray, canvas: int) -> np.ndarray:
  """uint8 [frames, canvas, canvas]: `image` [h, w] pasted at each (row, col) of `positions`."""
  h, w = image.shape
  clip = np.zeros((len(positions), canvas, canvas), np.uint8)
  for t, (row, col) in enumerate(positions):
    clip[t, row:row + h, col:col + w] = image
  return clip


def write_moving_digits(directory: str, *, frames: int, canvas: int, seed: int) -> int:
  """Writes <directory>/<digit name>/<index>/<t>.png for every digit image; returns the count."""
  if frames < 1:
    raise ValueError(f"--frames {frames}: need at least 1 frame.")
  images, labels = digit_images()
  room = canvas - images.shape[1]
  for index, (image, label) in enumerate(zip(images, labels, strict=True)):
    rng = np.random.default_rng((seed, index))
    clip = moving_clip(image, trajectory(rng, frames, room), canvas)
    folder = os.path.join(directory, DIGIT_NAMES[label], f"{index:04d}")
    os.makedirs(folder, exist_ok=True)
    for t, frame in enumerate(clip):
      write_image(os.path.join(folder, f"{t:02d}.png"), frame)
  return len(images)


def main(argv: Sequence[str] | None = None) -> str:
  """Runs the command line; returns the prepared dataset's directory."""
  p = argparse.ArgumentParser(prog="python -m imp.data.moving_digits", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--output", required=True)
  p.add_argument("--overwrite", action="store_true", help="delete DIR's earlier contents")
  p.add_argument("--frames", type=int, default=16, help="frames per clip")
  p.add_argument("--canvas", type=int, default=16, help="frame height and width (pixels)")
  p.add_argument("--fps", type=float, default=16.0, help="the frame rate stored with the clips")
  p.add_argument("--seed", type=int, default=0, help="trajectory and split seed")
  args = p.parse_args(argv)
  output = empty_output_dir(args.output, args.overwrite)
  frames_dir = os.path.join(output, "frames")
  write_moving_digits(frames_dir, frames=args.frames, canvas=args.canvas, seed=args.seed)
  prepared = os.path.join(output, "prepared")
  prepare.main(["video_folder", "--input", frames_dir, "--output", prepared, "--fps",
                str(args.fps), "--test-fraction", "0.2", "--seed", str(args.seed)])
  return prepared


if __name__ == "__main__":
  prepare.run_command(main)
