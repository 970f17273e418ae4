"""Converts a local folder, once, into an ArrayRecord dataset for the `arrayrecord` source.

  python -m imp.data.prepare KIND --input PATH --output DIR [options]

KIND:
  image_folder  PATH/<class>/**/<image>: one sub-folder per class. Supported image files:
                .npy (uint8 [H, W] or [H, W, C], read with allow_pickle=False) and netpbm
                .pgm/.ppm/.pnm (P2/P3 ASCII, P5/P6 binary, maxval <= 255). Other files
                (PNG, JPEG, ...) are errors naming the file. Files directly in PATH are ignored.
  audio_folder  PATH/**/<file>.wav (16-bit PCM): label from the parent folder's name, or from
                `--label-pattern` (a regex on the file name; the group named "label", else
                group 1). Stores audio float32 [samples] and sample_rate int32, or with
                --log-mel the log-mel spectrogram float32 [time, mel, 1].
  video_folder  PATH/<class>/<clip>/<frame>: one folder of numbered frame images (formats as
                image_folder) per clip; stores video uint8 [frames, H, W, C], and with --fps
                the frame rate fps float32 (the pipeline samples clips at a dataset's clip_fps).
  manifest      PATH is a .csv or .jsonl file with one example per row: an image, audio or
                video (clip folder) path (relative to the manifest's folder), optional text,
                optional label (class name).

The output DIR gets `<split>.array_record` (one `np.savez` record per example, no pickle) per
split and `metadata.json` (class names, fields with dtypes/shapes, counts, skipped files, the
source path and options). Splits: "train" and "test" from a seeded split of
`--test-fraction` (stratified by label when there are labels), or the values of a manifest
column (`--split-by`). `--on-error skip` skips unreadable files, listing each with its reason
on stdout and in metadata.json; `--on-error fail` (the default) stops at the first, naming it.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from imp.data import audio, video
from imp.data.arrayrecord_source import (
  FORMAT,
  FORMAT_VERSION,
  METADATA_FILE,
  WRITER_OPTIONS,
  encode_record,
  field_dtype,
  split_file,
)
from imp.data.transforms import resize_image

KINDS = ("image_folder", "audio_folder", "video_folder", "manifest")
IMAGE_EXTENSIONS = (".npy", ".pgm", ".ppm", ".pnm")
AUDIO_EXTENSIONS = (".wav",)


@dataclasses.dataclass(frozen=True)
class Item:
  """One input example before decoding: a file, and what the listing says about it."""

  path: str
  label: str | None = None  # class name
  text: str | None = None
  split: str | None = None  # from --split-by


@dataclasses.dataclass(frozen=True)
class AudioOptions:
  log_mel: bool = False
  num_mel_bins: int = 64
  window_ms: float = 25.0
  hop_ms: float = 10.0
  clip_seconds: float | None = None  # keep the first seconds, zero-padded: fixed shapes


# --- Image decoding -------------------------------------------------------------------------


def _netpbm_header(raw: bytes, path: str) -> tuple[list[int], int]:
  """[width, height, maxval] and the offset of the data after the header's last token."""
  magic = raw[:2]
  wanted = 3
  values: list[int] = []
  pos = 2
  while len(values) < wanted:
    while pos < len(raw) and (raw[pos:pos + 1].isspace() or raw[pos:pos + 1] == b"#"):
      if raw[pos:pos + 1] == b"#":  # a comment runs to the end of the line
        end = raw.find(b"\n", pos)
        pos = len(raw) if end < 0 else end
      pos += 1
    start = pos
    while pos < len(raw) and raw[pos:pos + 1].isdigit():
      pos += 1
    if start == pos:
      raise ValueError(f"{path}: truncated or malformed netpbm header ({magic.decode()} needs "
                       f"width, height and maxval).")
    values.append(int(raw[start:pos]))
  return values, pos


def read_netpbm(path: str) -> np.ndarray:
  """A PGM/PPM file (P2, P3, P5, P6; maxval <= 255) as uint8 [H, W, 1] or [H, W, 3]."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise ValueError(f"{path}: cannot read ({e.strerror or e}).") from e
  magic = raw[:2]
  if magic not in (b"P2", b"P3", b"P5", b"P6"):
    raise ValueError(
        f"{path}: not a supported netpbm image (magic {raw[:2]!r}); supported: P2/P5 (PGM) and "
        f"P3/P6 (PPM).")
  (width, height, maxval), pos = _netpbm_header(raw, path)
  if width < 1 or height < 1 or not 0 < maxval <= 255:
    raise ValueError(f"{path}: unsupported netpbm size {width}x{height} or maxval {maxval} "
                     f"(need maxval 1..255: 8-bit images).")
  channels = 3 if magic in (b"P3", b"P6") else 1
  count = width * height * channels
  if magic in (b"P5", b"P6"):
    data = raw[pos + 1:pos + 1 + count]  # exactly one whitespace byte ends the header
    if len(data) != count:
      raise ValueError(f"{path}: truncated: {width}x{height}x{channels} needs {count} data "
                       f"bytes, the file has {len(data)}.")
    pixels = np.frombuffer(data, np.uint8)
  else:
    try:
      pixels = np.array(raw[pos:].split(), np.int64)
    except ValueError as e:
      raise ValueError(f"{path}: malformed ASCII netpbm data ({e}).") from e
    if len(pixels) != count or pixels.max(initial=0) > maxval:
      raise ValueError(f"{path}: {len(pixels)} ASCII values (max {pixels.max(initial=0)}), "
                       f"but {width}x{height}x{channels} with maxval {maxval} needs {count}.")
  image = pixels.reshape(height, width, channels)
  if maxval != 255:  # rescale so that every image uses the 0..255 range the pipeline expects
    image = np.round(image.astype(np.float32) * (255.0 / maxval))
  return image.astype(np.uint8)


def write_netpbm(path: str, image: np.ndarray) -> None:
  """Writes uint8 [H, W], [H, W, 1] (P5 PGM) or [H, W, 3] (P6 PPM)."""
  image = np.asarray(image, np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  magic = {1: b"P5", 3: b"P6"}[image.shape[2]]
  with open(path, "wb") as f:
    f.write(magic + b"\n%d %d\n255\n" % (image.shape[1], image.shape[0]) + image.tobytes())


def read_image(path: str) -> np.ndarray:
  """An image file as uint8 [H, W, C] (see IMAGE_EXTENSIONS); ValueError naming the file."""
  ext = os.path.splitext(path)[1].lower()
  if ext == ".npy":
    try:
      image = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
      raise ValueError(f"{path}: not a readable .npy array ({e}).") from e
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
      raise ValueError(f"{path}: .npy images must be uint8 [H, W] or [H, W, C], got "
                       f"{image.dtype} {list(image.shape)}.")
    return image[..., None] if image.ndim == 2 else image
  if ext in (".pgm", ".ppm", ".pnm"):
    return read_netpbm(path)
  raise ValueError(f"{path}: unsupported image format {ext or '(no extension)'!r}; supported: "
                   f"{', '.join(IMAGE_EXTENSIONS)} (convert PNG/JPEG to .npy or netpbm first).")


def _image_example(item: Item, resize: tuple[int, int] | None,
                   image: np.ndarray | None = None) -> dict[str, np.ndarray]:
  image = read_image(item.path) if image is None else image
  if resize is not None:
    image = np.clip(np.round(resize_image(image.astype(np.float32), resize)), 0, 255)
    image = image.astype(np.uint8)
  return {"image": image}


def _video_example(item: Item, resize: tuple[int, int] | None,
                   fps: float | None) -> dict[str, np.ndarray]:
  clip = video.read_frame_folder(item.path, read_image, IMAGE_EXTENSIONS)
  if resize is not None:
    clip = np.stack([_image_example(Item(f"{item.path}[{i}]"), resize, frame)["image"]
                     for i, frame in enumerate(clip)])
  example = {"video": clip}
  if fps is not None:
    example["fps"] = np.asarray(fps, np.float32)
  return example


def _audio_example(item: Item, options: AudioOptions) -> dict[str, np.ndarray]:
  waveform, rate = audio.read_wav(item.path)
  if options.clip_seconds is not None:
    waveform = audio.pad_to_length(waveform, int(round(options.clip_seconds * rate)))
  if options.log_mel:
    return {"audio": audio.log_mel_spectrogram(
        waveform, sample_rate=rate, window_ms=options.window_ms, hop_ms=options.hop_ms,
        num_mel_bins=options.num_mel_bins)}
  return {"audio": waveform.astype(np.float32), "sample_rate": np.asarray(rate, np.int32)}


# --- Listing inputs -------------------------------------------------------------------------


def _files_under(directory: str) -> list[str]:
  """Non-hidden files below `directory`, sorted (so outputs do not depend on listing order)."""
  found = []
  for root, dirs, files in os.walk(directory):
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    found += [os.path.join(root, f) for f in files if not f.startswith(".")]
  return sorted(found)


def _check_input_dir(path: str) -> None:
  if not os.path.isdir(path):
    raise ValueError(f"--input {path}: not a directory.")


def list_image_folder(path: str) -> list[Item]:
  """One Item per file under each class sub-folder of `path`."""
  _check_input_dir(path)
  classes = sorted(d for d in os.listdir(path)
                   if not d.startswith(".") and os.path.isdir(os.path.join(path, d)))
  items = [Item(f, label=c) for c in classes for f in _files_under(os.path.join(path, c))]
  if not items:
    raise ValueError(f"--input {path}: no image files; image_folder expects one sub-folder per "
                     f"class holding {', '.join(IMAGE_EXTENSIONS)} files (found "
                     f"{len(classes)} sub-folders).")
  return items


def list_audio_folder(path: str, label_pattern: str | None) -> tuple[list[Item], list[dict]]:
  """Items for the .wav files under `path`, and {"path", "reason"} for files without a label."""
  _check_input_dir(path)
  pattern = re.compile(label_pattern) if label_pattern else None
  items, unlabelled = [], []
  for f in _files_under(path):
    if pattern is None:
      parent = os.path.dirname(f)
      if os.path.samefile(parent, path):
        unlabelled.append({"path": f, "reason": "directly in --input, so no class folder names "
                                                "its label (or pass --label-pattern)"})
        continue
      items.append(Item(f, label=os.path.basename(parent)))
      continue
    match = pattern.search(os.path.basename(f))
    if match is None:
      unlabelled.append({"path": f, "reason": f"--label-pattern {label_pattern!r} does not "
                                              f"match the file name"})
      continue
    label = match.group("label") if "label" in pattern.groupindex else match.group(
        1 if pattern.groups else 0)
    items.append(Item(f, label=label))
  if not items and not unlabelled:
    raise ValueError(f"--input {path}: no files; audio_folder expects .wav files in class "
                     f"sub-folders (or named for --label-pattern).")
  return items, unlabelled


def _read_manifest_rows(path: str) -> list[dict[str, Any]]:
  ext = os.path.splitext(path)[1].lower()
  try:
    with open(path, encoding="utf-8", newline="") as f:
      if ext == ".csv":
        return [dict(row) for row in csv.DictReader(f)]
      if ext in (".jsonl", ".json"):
        rows = []
        for line_no, line in enumerate(f, 1):
          if not line.strip():
            continue
          try:
            row = json.loads(line)
          except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {line_no} is not JSON ({e}).") from e
          if not isinstance(row, dict):
            raise ValueError(f"{path}: line {line_no} is not a JSON object.")
          rows.append(row)
        return rows
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not readable ({e}).") from e
  raise ValueError(f"{path}: unsupported manifest type {ext!r}; use .csv or .jsonl.")


def read_manifest(path: str) -> list[dict[str, Any]]:
  """The rows of a .csv or .jsonl manifest; ValueError when missing, malformed or empty."""
  if not os.path.isfile(path):
    raise ValueError(f"--input {path}: not a file; the manifest kind reads a .csv or .jsonl file.")
  rows = _read_manifest_rows(path)
  if not rows:
    raise ValueError(f"{path}: the manifest has no rows.")
  return rows


def list_manifest(path: str, rows: Sequence[Mapping[str, Any]], *, path_column: str,
                  text_column: str | None, label_column: str | None,
                  split_by: str | None) -> list[Item]:
  """One Item per manifest row; relative paths are taken from the manifest's folder."""
  base = os.path.dirname(os.path.abspath(path))
  items = []
  for i, row in enumerate(rows, 1):
    for column in (path_column, text_column, label_column, split_by):
      if column is not None and row.get(column) in (None, ""):
        raise ValueError(f"{path}: row {i} has no {column!r} value (keys: "
                         f"{', '.join(map(str, row))}).")
    items.append(Item(
        os.path.join(base, str(row[path_column])),
        label=None if label_column is None else str(row[label_column]),
        text=None if text_column is None else str(row[text_column]),
        split=None if split_by is None else str(row[split_by])))
  return items


# --- Splitting ------------------------------------------------------------------------------


def _rounded(n: int, fraction: float) -> int:
  return int(np.floor(n * fraction + 0.5))


def split_items(items: Sequence[Item], test_fraction: float, seed: int) -> dict[str, list[Item]]:
  """{"train": ..., "test": ...}: per class, round(count * test_fraction) go to "test".

  Seeded and stratified when items have labels (each class is split on its own), a plain
  seeded split otherwise; each split keeps the input order. test_fraction 0: "train" only.
  """
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(f"--test-fraction {test_fraction}: must be in [0, 1).")
  if test_fraction == 0.0:
    return {"train": list(items)}
  rng = np.random.default_rng(seed)
  groups: dict[str | None, list[int]] = {}
  for i, item in enumerate(items):
    groups.setdefault(item.label, []).append(i)
  test = set()
  for label in sorted(groups, key=str):
    members = np.asarray(groups[label])
    test.update(rng.permutation(members)[:_rounded(len(members), test_fraction)].tolist())
  return {"train": [x for i, x in enumerate(items) if i not in test],
          "test": [x for i, x in enumerate(items) if i in test]}


def split_by_column(items: Sequence[Item], column: str) -> dict[str, list[Item]]:
  names = sorted({item.split for item in items})
  for name in names:
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
      raise ValueError(f"--split-by {column}: split name {name!r} must be letters, digits, _ "
                       f"or - (it names a file).")
  return {name: [x for x in items if x.split == name] for name in names}


# --- Writing --------------------------------------------------------------------------------


class _FieldSpecs:
  """Accumulates each field's dtype and shape (a dim becomes None where examples differ)."""

  def __init__(self):
    self.specs: dict[str, dict[str, Any]] = {}

  def add(self, example: Mapping[str, np.ndarray], path: str) -> None:
    if self.specs and set(example) != set(self.specs):
      raise ValueError(f"{path}: fields {sorted(example)} differ from earlier examples' "
                       f"{sorted(self.specs)}.")
    for name, value in example.items():
      dtype, shape = field_dtype(value), list(value.shape)
      spec = self.specs.setdefault(name, {"dtype": dtype, "shape": shape})
      if spec["dtype"] != dtype or len(spec["shape"]) != len(shape):
        raise ValueError(f"{path}: field {name!r} is {dtype} {shape}, but earlier examples are "
                         f"{spec['dtype']} {spec['shape']}.")
      spec["shape"] = [d if d == s else None for d, s in zip(spec["shape"], shape, strict=True)]


def write_dataset(output: str, splits: Mapping[str, Sequence[Item]],
                  decode: Callable[[Item], dict[str, np.ndarray]], *, class_names: Sequence[str],
                  on_error: str, metadata: Mapping[str, Any],
                  skipped: Iterable[Mapping[str, str]] = ()) -> dict[str, Any]:
  """Decodes and writes every split, then metadata.json; returns the metadata.

  A failure (a bad file under on_error="fail", an empty split) removes what this call wrote.
  """
  from array_record.python.array_record_module import ArrayRecordWriter

  if on_error not in ("fail", "skip"):
    raise ValueError(f"--on-error {on_error!r}: must be 'fail' or 'skip'.")
  label_ids = {name: i for i, name in enumerate(class_names)}
  skipped = [dict(s) for s in skipped]
  specs = _FieldSpecs()
  split_meta: dict[str, dict[str, Any]] = {}
  os.makedirs(output, exist_ok=True)
  written: list[str] = []
  try:
    for split, items in splits.items():
      path = os.path.join(output, split_file(split))
      written.append(path)
      writer = ArrayRecordWriter(path, WRITER_OPTIONS)
      count, class_counts = 0, [0] * len(class_names)
      try:
        for item in items:
          try:
            example = decode(item)
          except ValueError as e:
            if on_error == "fail":
              raise ValueError(f"{e} (pass --on-error skip to skip bad files)") from e
            skipped.append({"path": item.path, "reason": str(e)})
            continue
          if item.text is not None:
            example["text"] = np.asarray(item.text)
          if item.label is not None:
            example["label"] = np.asarray(label_ids[item.label], np.int32)
            class_counts[label_ids[item.label]] += 1
          specs.add(example, item.path)
          writer.write(encode_record(example))
          count += 1
      finally:
        writer.close()
      if count == 0:
        raise ValueError(
            f"split {split!r} is empty ({len(items)} listed files, all skipped)"
            if items else f"split {split!r} is empty: too few examples for this split (lower "
                          f"or raise --test-fraction, or add data)")
      split_meta[split] = {"file": split_file(split), "count": count}
      if class_names:
        split_meta[split]["class_counts"] = class_counts
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        **metadata,
        "class_names": list(class_names),
        "fields": specs.specs,
        "splits": split_meta,
        "skipped": skipped,
    }
    with open(os.path.join(output, METADATA_FILE), "w", encoding="utf-8") as f:
      json.dump(meta, f, indent=2)
      f.write("\n")
  except BaseException:
    for path in written:
      if os.path.exists(path):
        os.remove(path)
    raise
  return meta


# --- Command line ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m imp.data.prepare", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("kind", choices=KINDS)
  p.add_argument("--input", required=True, help="folder (or manifest file) to convert")
  p.add_argument("--output", required=True, help="directory for the prepared dataset")
  p.add_argument("--overwrite", action="store_true",
                 help="delete a dataset prepared in --output first")
  p.add_argument("--test-fraction", type=float, default=0.2,
                 help="held-out fraction per class (0: train split only)")
  p.add_argument("--seed", type=int, default=0, help="split seed")
  p.add_argument("--split-by", help="manifest column whose values name each row's split")
  p.add_argument("--on-error", choices=("fail", "skip"), default="fail")
  p.add_argument("--resize", type=int, nargs=2, metavar=("H", "W"), help="resize images")
  p.add_argument("--label-pattern", help="audio_folder: regex on file names giving the label")
  p.add_argument("--log-mel", action="store_true", help="store log-mel spectrograms")
  p.add_argument("--num-mel-bins", type=int, default=64)
  p.add_argument("--window-ms", type=float, default=25.0)
  p.add_argument("--hop-ms", type=float, default=10.0)
  p.add_argument("--clip-seconds", type=float,
                 help="audio: keep the first seconds, zero-padding shorter files (fixed shapes)")
  p.add_argument("--image-column", help="manifest: image path column (default 'image' if present)")
  p.add_argument("--audio-column", help="manifest: audio path column (default 'audio' if present)")
  p.add_argument("--video-column", help="manifest: clip folder column (default 'video' if present)")
  p.add_argument("--fps", type=float, help="video: the frame rate of the stored frames")
  p.add_argument("--text-column", help="manifest: text column (default 'text' if present)")
  p.add_argument("--label-column", help="manifest: label column (default 'label' if present)")
  return p


def _check_output(output: str, overwrite: bool) -> None:
  if not os.path.isdir(output):
    if os.path.exists(output):
      raise ValueError(f"--output {output}: exists and is not a directory.")
    return
  old = [f for f in os.listdir(output) if f == METADATA_FILE or f.endswith(".array_record")]
  if old and not overwrite:
    raise ValueError(f"--output {output}: already holds a prepared dataset "
                     f"({', '.join(sorted(old))}); pass --overwrite to replace it.")
  for f in old:
    os.remove(os.path.join(output, f))


def _manifest_columns(args: argparse.Namespace,
                      rows: Sequence[Mapping[str, Any]]) -> dict[str, str | None]:
  """Which manifest columns hold what: explicit flags, else the conventional names."""
  keys = set(rows[0])

  def pick(flag: str | None, default: str) -> str | None:
    return flag if flag is not None else (default if default in keys else None)

  image, sound = pick(args.image_column, "image"), pick(args.audio_column, "audio")
  clip = pick(args.video_column, "video")
  if sum(c is not None for c in (image, sound, clip)) != 1:
    raise ValueError(
        f"{args.input}: need exactly one of an image, an audio and a video path column "
        f"(columns: {', '.join(sorted(keys)) or 'none'}); name it with --image-column, "
        "--audio-column or --video-column.")
  return {"image": image, "audio": sound, "video": clip, "text": pick(args.text_column, "text"),
          "label": pick(args.label_column, "label")}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the command line; returns the written metadata. Errors raise ValueError."""
  args = _parser().parse_args(argv)
  source = os.path.abspath(os.path.expanduser(args.input))
  args.input = source
  output = os.path.expanduser(args.output)
  if args.split_by is not None and args.kind != "manifest":
    raise ValueError("--split-by works with the manifest kind only.")
  _check_output(output, args.overwrite)
  audio_options = AudioOptions(args.log_mel, args.num_mel_bins, args.window_ms, args.hop_ms,
                               args.clip_seconds)
  resize = tuple(args.resize) if args.resize else None
  unlabelled: list[dict] = []
  options: dict[str, Any] = {"test_fraction": args.test_fraction, "seed": args.seed}
  if args.kind == "image_folder":
    items = list_image_folder(source)
    decode = functools.partial(_image_example, resize=resize)
    options["resize"] = resize
  elif args.kind == "video_folder":
    items = [Item(clip, label=label) for clip, label in video.list_clips(source)]
    decode = functools.partial(_video_example, resize=resize, fps=args.fps)
    options.update(resize=resize, fps=args.fps)
  elif args.kind == "audio_folder":
    items, unlabelled = list_audio_folder(source, args.label_pattern)
    decode = functools.partial(_audio_example, options=audio_options)
    options["audio"] = dataclasses.asdict(audio_options)
    options["label_pattern"] = args.label_pattern
    if unlabelled and args.on_error == "fail":
      first = unlabelled[0]
      raise ValueError(f"{first['path']}: {first['reason']} (pass --on-error skip to skip "
                       f"{len(unlabelled)} such file(s)).")
  else:
    rows = read_manifest(source)
    columns = _manifest_columns(args, rows)
    path_column = columns["image"] or columns["audio"] or columns["video"]
    items = list_manifest(source, rows, path_column=path_column, text_column=columns["text"],
                          label_column=columns["label"], split_by=args.split_by)
    if columns["image"]:
      decode = functools.partial(_image_example, resize=resize)
      options["resize"] = resize
    elif columns["video"]:
      decode = functools.partial(_video_example, resize=resize, fps=args.fps)
      options.update(resize=resize, fps=args.fps)
    else:
      decode = functools.partial(_audio_example, options=audio_options)
      options["audio"] = dataclasses.asdict(audio_options)
    options["columns"] = columns
  if not items:
    raise ValueError(f"--input {source}: no usable files ({len(unlabelled)} without a label).")
  if args.split_by is not None:
    options["split_by"] = args.split_by
    splits = split_by_column(items, args.split_by)
  else:
    splits = split_items(items, args.test_fraction, args.seed)
  class_names = sorted({item.label for item in items if item.label is not None})
  meta = write_dataset(output, splits, decode, class_names=class_names, on_error=args.on_error,
                       metadata={"kind": args.kind, "source": source, "options": options},
                       skipped=unlabelled)
  counts = ", ".join(f"{split} {info['count']}" for split, info in meta["splits"].items())
  print(f"prepared {args.kind} {source} -> {output}: {counts} examples, "
        f"{len(class_names)} classes, fields "
        + ", ".join(f"{k} {v['dtype']} {v['shape']}" for k, v in meta["fields"].items()))
  if meta["skipped"]:
    print(f"skipped {len(meta['skipped'])} file(s):")
    for s in meta["skipped"]:
      print(f"  {s['path']}: {s['reason']}")
  return meta


def run_command(command: Callable[[], Any]) -> None:
  """Runs a data command line: a ValueError prints one `error: ...` line and exits 1."""
  try:
    command()
  except ValueError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  run_command(main)
