"""Videos stored as folders of numbered image frames (decoding for `imp.data.prepare`).

  PATH/<class>/<clip>/<frame>.{png,jpg,...}    one folder per clip, frames in file-name number
                                               order (frame_2 before frame_10)

A clip decodes to uint8 [frames, H, W, C]; record the frames' rate with --fps. Video files
(MP4, WebM, ...) are decoded by `imp.data.video_file` instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import numpy as np


def _frame_order(name: str) -> tuple:
  """Sort key: the digit runs of a file name as numbers (natural order), then the name."""
  return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)), name


def frame_files(clip_dir: str, extensions: tuple[str, ...]) -> list[str]:
  """The frame files of a clip folder in natural number order; ValueError naming the folder."""
  if not os.path.isdir(clip_dir):
    raise ValueError(f"{clip_dir}: not a folder of video frames.")
  names = [n for n in os.listdir(clip_dir)
           if not n.startswith(".") and os.path.splitext(n)[1].lower() in extensions]
  if not names:
    raise ValueError(f"{clip_dir}: no frame files ({', '.join(extensions)}).")
  return [os.path.join(clip_dir, n) for n in sorted(names, key=_frame_order)]


def read_frame_folder(clip_dir: str, read_image: Callable[[str], np.ndarray],
                      extensions: tuple[str, ...]) -> np.ndarray:
  """A clip folder as uint8 [frames, H, W, C]; every frame must have the first one's shape."""
  frames = []
  for path in frame_files(clip_dir, extensions):
    frame = read_image(path)
    if frames and frame.shape != frames[0].shape:
      raise ValueError(f"{path}: frame of shape {list(frame.shape)}, but the clip's first frame "
                       f"is {list(frames[0].shape)}; all frames of a clip need one shape.")
    frames.append(frame)
  return np.stack(frames)
