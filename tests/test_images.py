"""Image files through Pillow: formats, depths, modes, EXIF orientation, resize/crop, bad files,
and a prepared folder that round-trips pixel for pixel."""

import io
import os

import numpy as np
import pytest
from PIL import Image

import imp.data.arrayrecord_source  # noqa: F401  (registers "arrayrecord")
from imp.data import load_source
from imp.data.images import read_image, resize, write_image
from imp.data.prepare import main


def _rgb(h=12, w=16, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# Lossless formats: the pixels must come back exactly.
LOSSLESS = {".png": {}, ".bmp": {}, ".tif": {}, ".webp": {"lossless": True}, ".ppm": {}}


@pytest.mark.parametrize("ext", sorted(LOSSLESS))
def test_lossless_rgb_and_gray_read_exactly(tmp_path, ext):
  rgb = _rgb()
  write_image(str(tmp_path / f"c{ext}"), rgb, **LOSSLESS[ext])
  back = read_image(str(tmp_path / f"c{ext}"))
  assert back.dtype == np.uint8 and back.shape == (12, 16, 3)
  np.testing.assert_array_equal(back, rgb)
  if ext != ".webp":  # WebP has no grayscale mode (Pillow stores it as RGB)
    gray = rgb[..., 0]
    write_image(str(tmp_path / f"g{ext.replace('.ppm', '.pgm')}"), gray)
    back = read_image(str(tmp_path / f"g{ext.replace('.ppm', '.pgm')}"))
    assert back.shape == (12, 16, 1)
    np.testing.assert_array_equal(back[..., 0], gray)


def test_jpeg_is_close_and_gif_gives_its_first_frame(tmp_path):
  smooth = np.broadcast_to(np.linspace(0, 255, 16, dtype=np.uint8)[None, :, None],
                           (12, 16, 3)).copy()
  write_image(str(tmp_path / "a.jpg"), smooth, quality=95)
  back = read_image(str(tmp_path / "a.jpg"))
  assert back.shape == (12, 16, 3)
  assert np.abs(back.astype(int) - smooth).max() <= 8
  frames = [Image.fromarray(np.full((6, 6), v, np.uint8)) for v in (40, 200, 90)]
  frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
  first = read_image(str(tmp_path / "anim.gif"))
  assert first.shape == (6, 6, 3)  # palette image -> RGB
  np.testing.assert_array_equal(first, 40)


def _png16_rgb(path, values: np.ndarray) -> None:
  """A 16-bit RGB PNG (Pillow cannot write one): IHDR bit depth 16, colour type 2."""
  import struct
  import zlib

  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

  h, w, _ = values.shape
  rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))
  header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                   + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_sixteen_bit_images_are_scaled_to_eight(tmp_path):
  values = np.array([[0, 257, 65535], [32768, 1000, 60000]], np.uint16)
  Image.fromarray(values).save(tmp_path / "d.png")  # a 16-bit grayscale PNG (mode I;16)
  back = read_image(str(tmp_path / "d.png"))
  assert back.dtype == np.uint8 and back.shape == (2, 3, 1)
  np.testing.assert_array_equal(back[..., 0], np.round(values / 257.0).astype(np.uint8))
  rgb = (np.arange(18).reshape(2, 3, 3) * 3800).astype(np.uint16)
  _png16_rgb(tmp_path / "rgb16.png", rgb)
  back = read_image(str(tmp_path / "rgb16.png"))  # Pillow keeps the high byte of each value
  assert back.dtype == np.uint8 and back.shape == (2, 3, 3)
  np.testing.assert_array_equal(back, rgb >> 8)


def test_transparency_is_composited_over_white(tmp_path):
  rgba = np.zeros((2, 2, 4), np.uint8)
  rgba[0, 0] = (200, 0, 0, 255)  # opaque red stays red
  rgba[0, 1] = (0, 0, 200, 0)  # fully transparent -> white
  rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black -> mid grey
  rgba[1, 1] = (0, 100, 0, 255)
  write_image(str(tmp_path / "t.png"), rgba)
  back = read_image(str(tmp_path / "t.png")).astype(int)
  assert back.shape == (2, 2, 3)
  np.testing.assert_array_equal(back[0, 0], (200, 0, 0))
  np.testing.assert_array_equal(back[0, 1], (255, 255, 255))
  assert np.all(np.abs(back[1, 0] - 127) <= 1)
  np.testing.assert_array_equal(back[1, 1], (0, 100, 0))
  la = Image.fromarray(rgba[..., [0, 3]], mode="LA")
  la.save(tmp_path / "la.png")
  gray = read_image(str(tmp_path / "la.png"))
  assert gray.shape == (2, 2, 1) and gray[0, 1, 0] == 255 and gray[0, 0, 0] == 200


def test_exif_orientation_is_applied(tmp_path):
  pixels = _rgb(4, 6)
  image = Image.fromarray(pixels)
  exif = image.getexif()
  exif[0x0112] = 6  # "rotate 90 CW to display"
  image.save(tmp_path / "r.png", exif=exif.tobytes())
  back = read_image(str(tmp_path / "r.png"))
  assert back.shape == (6, 4, 3)
  np.testing.assert_array_equal(back, np.rot90(pixels, k=-1))


def test_resize_and_center_crop():
  image = np.zeros((10, 20, 3), np.uint8)
  image[:, 5:15] = 255  # a white centre square between black side bands
  assert resize(image, (5, 5)).shape == (5, 5, 3)  # stretched: the bands survive
  assert resize(image, (5, 5))[:, 0].max() < 60
  crop = resize(image, (10, 10), center_crop=True)  # no scaling needed: the centre 10x10
  np.testing.assert_array_equal(crop, 255)
  half = resize(image, (5, 5), center_crop=True)  # scaled by 1/2, then the centre 5x5
  assert half.shape == (5, 5, 3) and half[:, 1:4].min() > 200
  gray = resize(image[..., :1], (4, 8))
  assert gray.shape == (4, 8, 1)


def test_bad_files_name_the_file(tmp_path):
  write_image(str(tmp_path / "ok.jpg"), _rgb(64, 64), quality=90)
  data = (tmp_path / "ok.jpg").read_bytes()
  (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])  # a truncated JPEG
  with pytest.raises(ValueError, match=r"cut.jpg: cannot decode the image: truncated or "
                                       r"corrupt data \(image file is truncated"):
    read_image(str(tmp_path / "cut.jpg"))
  (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n")
  with pytest.raises(ValueError, match=r"x.png: not an image file Pillow can read \(supported: "
                                       r"JPEG, PNG"):
    read_image(str(tmp_path / "x.png"))
  with pytest.raises(ValueError, match=r"gone.png: cannot read \(no such file\)"):
    read_image(str(tmp_path / "gone.png"))
  np.save(tmp_path / "f.npy", np.zeros((4, 4), np.float32))
  with pytest.raises(ValueError, match=r"f.npy: .npy images must be uint8"):
    read_image(str(tmp_path / "f.npy"))


def test_prepared_folder_round_trips_pixel_for_pixel(tmp_path, capsys):
  """Every lossless format in one folder; a truncated JPEG is skipped and counted."""
  originals = {}
  for c, name in enumerate(("cat", "dog")):
    (tmp_path / "in" / name).mkdir(parents=True)
    for i, ext in enumerate(sorted(LOSSLESS)):
      pixels = _rgb(8, 8, seed=10 * c + i)
      path = tmp_path / "in" / name / f"{i}{ext}"
      write_image(str(path), pixels, **LOSSLESS[ext])
      originals[pixels.tobytes()] = name
  buffer = io.BytesIO()
  Image.fromarray(_rgb(32, 32)).save(buffer, format="JPEG")
  (tmp_path / "in" / "dog" / "bad.jpg").write_bytes(buffer.getvalue()[:300])
  meta = main(["image_folder", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"),
               "--test-fraction", "0.4", "--on-error", "skip"])
  printed = capsys.readouterr().out
  assert "found 2 classes: cat (5), dog (6)" in printed
  assert "skipped 1 file(s):" in printed and printed.count("bad.jpg") == 1
  assert [os.path.basename(s["path"]) for s in meta["skipped"]] == ["bad.jpg"]
  assert meta["skipped"][0]["reason"].startswith("cannot decode the image")
  data = load_source("d", dict(source="arrayrecord", directory=str(tmp_path / "o")))
  seen = {}
  for split in ("train", "test"):
    for i in range(len(data.split(split))):
      example = data.split(split)[i]
      seen[example["image"].tobytes()] = data.class_names[example["label"]]
  assert seen == originals
