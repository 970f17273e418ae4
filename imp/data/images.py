"""Image files through Pillow, as the uint8 [H, W, C] arrays that `imp.data.prepare` stores.

Reads every format Pillow reads (JPEG, PNG, WebP, BMP, GIF, TIFF, PGM/PPM, ...) plus `.npy`
arrays. What a decoded image becomes:
  - EXIF orientation is applied (a phone photo taken upright is stored upright).
  - GIF and other animations: the first frame.
  - Grayscale (L, 1, I;16, I, F) stays one channel: [H, W, 1]; everything else is RGB [H, W, 3].
  - 16-bit grayscale (and 32-bit integer) images are scaled to 8 bits: round(v * 255 / 65535);
    16-bit RGB keeps the high byte of each value (Pillow's reading: v >> 8).
  - Transparency (RGBA, LA, palette with transparency) is composited over white: transparent
    pixels become white, as image viewers and browsers show them on a white page; the alpha
    channel is then dropped (the encoders take 1 or 3 channels).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

# File extensions the folder kinds read as images (other files are reported, not decoded).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".pgm",
                    ".ppm", ".pnm", ".pbm", ".npy")
_GRAY_MODES = ("1", "L", "I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _to_uint8_gray(image) -> np.ndarray:
  """A one-channel Pillow image of any depth as uint8 [H, W]."""
  if image.mode in ("1", "L"):
    return np.asarray(image.convert("L"), np.uint8)
  values = np.asarray(image).astype(np.float64)
  if image.mode == "F":  # float images: [0, 1] when they fit, else their full range
    top = 1.0 if values.size and values.max() <= 1.0 and values.min() >= 0.0 else 255.0
    return np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8)
  # I;16 and I (Pillow reads 16-bit PNG/TIFF as one of these): 16 bits of range.
  return np.clip(np.round(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)


def pil_to_array(image) -> np.ndarray:
  """A Pillow image as uint8 [H, W, 1] (grayscale) or [H, W, 3]; see the module docstring."""
  from PIL import Image, ImageOps

  image = ImageOps.exif_transpose(image)
  if image.mode == "P":  # palette: to RGBA when it has transparency, else RGB
    image = image.convert("RGBA" if "transparency" in image.info else "RGB")
  if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    image = Image.alpha_composite(white, rgba).convert("RGB" if image.mode != "LA" else "L")
  if image.mode in _GRAY_MODES:
    return _to_uint8_gray(image)[..., None]
  if image.mode != "RGB":  # CMYK, YCbCr, HSV, RGBX, ...
    image = image.convert("RGB")
  return np.asarray(image, np.uint8)


def read_image(path: str) -> np.ndarray:
  """An image file as uint8 [H, W, C], C 1 or 3; ValueError naming the file and why."""
  if os.path.splitext(path)[1].lower() == ".npy":
    return _read_npy(path)
  from PIL import Image, UnidentifiedImageError

  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(path) as image:
        image.seek(0)  # animations: the first frame
        image.load()  # decode now: a truncated file fails here, not later
        return pil_to_array(image)
  except FileNotFoundError as e:
    raise ValueError(f"{path}: cannot read (no such file).") from e
  except UnidentifiedImageError as e:
    raise ValueError(f"{path}: not an image file Pillow can read (supported: JPEG, PNG, WebP, "
                     f"BMP, GIF, TIFF, PGM/PPM, ...).") from e
  except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombWarning,
          Image.DecompressionBombError) as e:
    # Truncated or corrupt data ("image file is truncated", "broken data stream", ...).
    raise ValueError(f"{path}: cannot decode the image: truncated or corrupt data "
                     f"({e or type(e).__name__}).") from e


def _read_npy(path: str) -> np.ndarray:
  try:
    image = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise ValueError(f"{path}: not a readable .npy array ({e}).") from e
  if image.dtype != np.uint8 or image.ndim not in (2, 3):
    raise ValueError(f"{path}: .npy images must be uint8 [H, W] or [H, W, C], got "
                     f"{image.dtype} {list(image.shape)}.")
  return image[..., None] if image.ndim == 2 else image


def resize(image: np.ndarray, size: tuple[int, int], center_crop: bool = False) -> np.ndarray:
  """uint8 [H, W, C] resized to [size[0], size[1], C] with Pillow's antialiased bicubic filter.

  center_crop=False stretches to `size`; True keeps the aspect ratio: scales so that the image
  covers `size`, then cuts the centre (what ImageNet-style evaluation does).
  """
  from PIL import Image

  height, width = int(size[0]), int(size[1])
  channels = image.shape[2]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  if center_crop:
    h, w = image.shape[:2]
    scale = max(height / h, width / w)
    scaled = (max(width, round(w * scale)), max(height, round(h * scale)))
    pil = pil.resize(scaled, Image.Resampling.BICUBIC)
    left, top = (scaled[0] - width) // 2, (scaled[1] - height) // 2
    pil = pil.crop((left, top, left + width, top + height))
  elif (image.shape[0], image.shape[1]) != (height, width):
    pil = pil.resize((width, height), Image.Resampling.BICUBIC)
  out = np.asarray(pil, np.uint8)
  return out[..., None] if out.ndim == 2 else out


def write_image(path: str, image: np.ndarray, **save_options) -> None:
  """Writes uint8 [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] with Pillow; the format follows
  the extension (.png, .jpg, .webp, .bmp, .gif, .pgm, ...); `save_options` go to
  `PIL.Image.save` (e.g. quality=90 for JPEG)."""
  from PIL import Image

  image = np.asarray(image, np.uint8)
  if image.ndim == 3 and image.shape[2] == 1:
    image = image[..., 0]
  Image.fromarray(image).save(path, **save_options)


def image_channels(path: str) -> int | None:
  """The channels `read_image` gives a file (1 or 3), from its header alone; None when the
  header does not say (an unreadable file: decoding it reports why)."""
  try:
    if os.path.splitext(path)[1].lower() == ".npy":
      shape = np.load(path, mmap_mode="r").shape
      return 1 if len(shape) == 2 else int(shape[-1])
    from PIL import Image

    with Image.open(path) as image:
      return 1 if image.mode in (*_GRAY_MODES, "LA") else 3
  except Exception:  # noqa: BLE001 - any unreadable header: the decode names the file and why
    return None


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
  """uint8 [H, W, C] with `channels` (1 or 3): gray repeated into RGB, or RGB to luminance
  (Pillow's ITU-R 601-2 'L')."""
  if image.shape[2] == channels:
    return image
  if channels == 3:
    return np.repeat(image, 3, axis=2)
  from PIL import Image

  return np.asarray(Image.fromarray(image).convert("L"), np.uint8)[..., None]
