"""Converts a folder or manifest, once, into an ArrayRecord dataset for the `arrayrecord` source.

  python -m imp.data.prepare KIND --input PATH --output DIR [options]

KIND:
  image_folder  PATH/<class>/**/<image>: JPEG, PNG, WebP, BMP, GIF (first frame), TIFF, PGM/PPM
                and .npy, read with Pillow (EXIF orientation applied; grayscale kept as one
                channel, 16-bit scaled to 8, transparency composited over white). Stores image
                uint8 [H, W, C]; --resize H W (with --center-crop: keep the aspect ratio and cut
                the centre) stores every image at one size.
  audio_folder  PATH/<class>/**/<audio>: WAV (PCM 8-32 bit or float), FLAC, OGG, AIFF, MP3, read
                with soundfile, averaged to mono, resampled to --sample-rate. Stores audio
                float32 [samples] and sample_rate int32, or with --log-mel the log-mel
                spectrogram float32 [time, mel, 1]; --clip-seconds gives every clip one length.
  video_folder  PATH/<class>/**/<video file or clip folder>: MP4, WebM, AVI, MKV, MOV files
                (PyAV), or folders of numbered frame images. Stores video uint8 [frames, H, W,
                3] and fps float32 (files: sampled at --fps, else the file's rate; folders: the
                rate given by --fps). --video-audio adds the file's audio track (as audio).
  manifest      PATH is a .csv or .jsonl file with one example per row: an image, audio or
                video path (relative to the manifest's folder), optional text, optional label
                (class name), optional group.

Labels: the top-level folder under PATH names the class, or --label-pattern (a regex that must
match the whole file name; the group named "label", else group 1). --class-names renames them.
Splits: "train" and "test" from a seeded split of --test-fraction (stratified by label), whole
groups held out (--group-pattern with --test-groups, or a seeded choice of groups), or the
values of a manifest column (--split-by). The output DIR gets `<split>.array_record` and
`metadata.json` (class names, fields, counts, each split's groups, skipped files, warnings,
the source and options). `--on-error skip` skips unreadable files, counting and listing each
with its reason; `--on-error fail` (the default) stops at the first, naming it.
PATH and DIR may be local, gs:// or s3://: a bucket PATH is read through a temporary local
copy (imp/data/prepare_staging.py), and messages and metadata.json name its objects.
See docs/data.md for every option.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from imp import paths
from imp.data import audio, images, prepare_staging, video, video_file
from imp.data.arrayrecord_source import METADATA_FILE
from imp.data.prepare_inputs import (
  Item,
  list_folder,
  list_manifest,
  parse_class_names,
  read_manifest,
  rename_labels,
)
from imp.data.prepare_write import split_by_column, split_by_groups, split_items, write_dataset

KINDS = ("image_folder", "audio_folder", "video_folder", "manifest")


@dataclasses.dataclass(frozen=True)
class AudioOptions:
  log_mel: bool = False
  num_mel_bins: int = 64
  window_ms: float = 25.0
  hop_ms: float = 10.0
  clip_seconds: float | None = None  # keep the first seconds, zero-padded: fixed shapes
  sample_rate: int | None = None  # resample to this rate (None: keep each file's)


@dataclasses.dataclass(frozen=True)
class ImageOptions:
  resize: tuple[int, int] | None = None
  center_crop: bool = False
  channels: int | None = None  # every image converted to this many channels (1 or 3)


# --- Decoding -------------------------------------------------------------------------------


def _image(image: np.ndarray, options: ImageOptions) -> np.ndarray:
  if options.channels is not None:
    image = images.to_channels(image, options.channels)
  if options.resize is None:
    return image
  return images.resize(image, options.resize, options.center_crop)


def image_example(item: Item, options: ImageOptions) -> dict[str, np.ndarray]:
  return {"image": _image(images.read_image(item.path), options)}


def _audio_fields(waveform: np.ndarray, rate: int, options: AudioOptions) -> dict[str, np.ndarray]:
  if options.clip_seconds is not None:
    waveform = audio.pad_to_length(waveform, int(round(options.clip_seconds * rate)))
  if options.log_mel:
    return {"audio": audio.log_mel_spectrogram(
        waveform, sample_rate=rate, window_ms=options.window_ms, hop_ms=options.hop_ms,
        num_mel_bins=options.num_mel_bins)}
  return {"audio": waveform.astype(np.float32), "sample_rate": np.asarray(rate, np.int32)}


def audio_example(item: Item, options: AudioOptions) -> dict[str, np.ndarray]:
  waveform, rate = audio.read_audio(item.path, options.sample_rate)
  return _audio_fields(waveform, rate, options)


def video_example(item: Item, options: ImageOptions, fps: float | None,
                  audio_options: AudioOptions | None) -> dict[str, np.ndarray]:
  """A clip folder or video file as video uint8 [T, H, W, C] (+ fps, + its audio track)."""
  example: dict[str, np.ndarray] = {}
  if os.path.isdir(item.path):
    if audio_options is not None:
      raise ValueError(f"{item.path}: a folder of frames has no audio track; --video-audio "
                       f"needs video files.")
    clip = video.read_frame_folder(item.path, images.read_image, images.IMAGE_EXTENSIONS)
  else:
    max_seconds = audio_options.clip_seconds if audio_options else None
    clip, fps = video_file.read_video(item.path, fps, max_seconds)
    if audio_options is not None:
      waveform, rate = video_file.read_audio_track(item.path, audio_options.sample_rate,
                                                   max_seconds)
      example.update(_audio_fields(waveform, rate, audio_options))
  if options.resize is not None:
    clip = np.stack([_image(frame, options) for frame in clip])
  example["video"] = clip
  if fps is not None:
    example["fps"] = np.asarray(fps, np.float32)
  return example


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
                 help="held-out fraction per class, or of the groups (0: train split only)")
  p.add_argument("--seed", type=int, default=0, help="split seed")
  p.add_argument("--split-by", help="manifest column whose values name each row's split")
  p.add_argument("--on-error", choices=("fail", "skip"), default="fail")
  p.add_argument("--label-pattern",
                 help="regex matching the whole file name; its group 'label' (else group 1) "
                      "names the class (a pattern with '/' matches the path under --input)")
  p.add_argument("--class-names",
                 help="rename labels: 'old=new,...' or a file of such lines (or a .json object)")
  p.add_argument("--group-pattern",
                 help="regex matching the whole file name; its group 'group' (else group 1) "
                      "names the example's group (speaker, subject, source)")
  p.add_argument("--group-column", help="manifest: the column naming each row's group")
  p.add_argument("--test-groups",
                 help="comma-separated groups held out as the test split (with --group-pattern "
                      "or --group-column); without it, groups are held out at random")
  p.add_argument("--resize", type=int, nargs=2, metavar=("H", "W"), help="resize images/frames")
  p.add_argument("--center-crop", action="store_true",
                 help="with --resize: keep the aspect ratio, scale to cover H x W, cut the centre")
  p.add_argument("--channels", choices=("majority", "1", "3", "fail"), default="majority",
                 help="images: convert every image to the channels most of them have, or to 1 "
                      "or 3; 'fail' refuses a mix, naming the files")
  p.add_argument("--sample-rate", type=int, help="audio: resample every file to this rate (Hz)")
  p.add_argument("--log-mel", action="store_true", help="audio: store log-mel spectrograms")
  p.add_argument("--num-mel-bins", type=int, default=64)
  p.add_argument("--window-ms", type=float, default=25.0)
  p.add_argument("--hop-ms", type=float, default=10.0)
  p.add_argument("--clip-seconds", type=float,
                 help="audio: keep the first seconds, zero-padding shorter files (fixed shapes); "
                      "video files: decode the first seconds")
  p.add_argument("--fps", type=float,
                 help="video files: sample frames at this rate; frame folders: their frame rate")
  p.add_argument("--video-audio", action="store_true",
                 help="video files: store the audio track too (as audio, like audio_folder)")
  p.add_argument("--image-column", help="manifest: image path column (default 'image' if present)")
  p.add_argument("--audio-column", help="manifest: audio path column (default 'audio' if present)")
  p.add_argument("--video-column", help="manifest: video column (default 'video' if present)")
  p.add_argument("--text-column", help="manifest: text column (default 'text' if present)")
  p.add_argument("--label-column", help="manifest: label column (default 'label' if present)")
  return p


def _check_output(output: str, overwrite: bool) -> None:
  out = paths.check_reachable(output, key="--output")
  if not out.is_dir():
    if out.exists():
      raise ValueError(f"--output {output}: exists and is not a directory.")
    return
  old = [p for p in out.iterdir() if p.name == METADATA_FILE or p.name.endswith(".array_record")]
  if old and not overwrite:
    raise ValueError(f"--output {output}: already holds a prepared dataset "
                     f"({', '.join(sorted(p.name for p in old))}); pass --overwrite to replace "
                     "it.")
  for p in old:
    p.unlink()


def _write(output: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
  """write_dataset into `output`; into a bucket through a local folder, uploaded when whole
  (array_record writes local files only), metadata.json last so that a reader never finds it
  before the files it lists."""
  if not paths.is_url(output):
    # Written beside `output` and moved in when complete (metadata last): an interrupted
    # prepare leaves no dataset that looks finished.
    with paths.folder_when_complete(output, last=METADATA_FILE) as partial:
      return write_dataset(str(partial), *args, **kwargs)
  with tempfile.TemporaryDirectory(prefix="imp_prepare_") as local:
    meta = write_dataset(local, *args, **kwargs)
    paths.upload_tree(local, output, last=METADATA_FILE)
  return meta


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
          "label": pick(args.label_column, "label"), "group": args.group_column}


def _check_flags(args: argparse.Namespace) -> None:
  """Flags that do not fit the kind, or each other: one message naming them."""
  manifest = args.kind == "manifest"
  if args.split_by is not None and not manifest:
    raise ValueError("--split-by works with the manifest kind only.")
  if args.group_column is not None and not manifest:
    raise ValueError("--group-column works with the manifest kind only; folders take "
                     "--group-pattern.")
  if manifest and (args.label_pattern or args.group_pattern):
    raise ValueError("--label-pattern and --group-pattern work with the folder kinds; a "
                     "manifest names labels and groups with --label-column and --group-column.")
  if args.split_by is not None and (args.test_groups or args.group_pattern):
    raise ValueError("--split-by decides the splits itself; drop --test-groups/--group-pattern.")
  if args.test_groups is not None and not (args.group_pattern or args.group_column):
    raise ValueError("--test-groups needs --group-pattern (or --group-column for a manifest) "
                     "to say which group each file is in.")
  if args.center_crop and not args.resize:
    raise ValueError("--center-crop needs --resize H W (the size to cut).")
  if args.video_audio and args.kind not in ("video_folder", "manifest"):
    raise ValueError("--video-audio works with video files (video_folder or a manifest's "
                     "video column).")
  if args.sample_rate is not None and args.sample_rate <= 0:
    raise ValueError(f"--sample-rate {args.sample_rate}: must be a positive number of Hz.")
  if args.fps is not None and not args.fps > 0:
    raise ValueError(f"--fps {args.fps}: must be positive.")


def _decoder(modality: str, args: argparse.Namespace,
             options: dict[str, Any]) -> Callable[[Item], dict[str, np.ndarray]]:
  """The decoding function for a modality; records its options in `options`."""
  image_options = ImageOptions(tuple(args.resize) if args.resize else None, args.center_crop,
                               options.get("channels"))
  audio_options = AudioOptions(args.log_mel, args.num_mel_bins, args.window_ms, args.hop_ms,
                               args.clip_seconds, args.sample_rate)
  if modality == "image":
    options.update(resize=image_options.resize, center_crop=args.center_crop)
    return functools.partial(image_example, options=image_options)
  if modality == "video":
    options.update(resize=image_options.resize, center_crop=args.center_crop, fps=args.fps,
                   video_audio=args.video_audio)
    if args.video_audio:
      options["audio"] = dataclasses.asdict(audio_options)
    return functools.partial(video_example, options=image_options, fps=args.fps,
                             audio_options=audio_options if args.video_audio else None)
  options["audio"] = dataclasses.asdict(audio_options)
  return functools.partial(audio_example, options=audio_options)


def _channels(items: Sequence[Item], setting: str, local: Callable[[str], str] = str) -> int:
  """The one channel count of every stored image (--channels): a dataset mixing grayscale
  and RGB would fail at its first batch. Prints how many images are converted. `local(path)`
  is the file to read (a bucket input's local copy)."""
  found = {item.path: images.image_channels(local(item.path)) for item in items}
  counts = collections.Counter(c for c in found.values() if c is not None)
  if setting in ("1", "3"):
    target = int(setting)
  else:  # the majority; a tie goes to RGB, which loses nothing
    target = max(counts, key=lambda c: (counts[c], c)) if counts else 3
  other = sorted(p for p, c in found.items() if c is not None and c != target)
  if other and setting == "fail":
    shown = ", ".join(other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
    raise ValueError(
        f"--input mixes {counts[target]} image(s) of {target} channel(s) with {len(other)} of "
        f"{4 - target}: {shown}. Pass --channels majority, 1 or 3 to convert them.")
  if other:
    print(f"converted {len(other)} of {len(found)} images to {target} channel(s) "
          f"(--channels {setting}): {', '.join(other[:5])}"
          + (f" and {len(other) - 5} more" if len(other) > 5 else ""))
  return target


def _splits(args: argparse.Namespace, items: Sequence[Item],
            options: dict[str, Any]) -> tuple[dict[str, list[Item]], dict[str, dict[str, Any]]]:
  """The splits, and per-split metadata (groups); records what decided them in `options`."""
  if args.split_by is not None:
    options["split_by"] = args.split_by
    return split_by_column(items, args.split_by), {}
  if args.group_pattern or args.group_column:
    test_groups = None if args.test_groups is None else [
        g.strip() for g in args.test_groups.split(",") if g.strip()]
    splits, chosen = split_by_groups(items, test_groups, args.test_fraction, args.seed)
    options.update(group_pattern=args.group_pattern, group_column=args.group_column,
                   test_groups=chosen)
    if test_groups is None:  # a seeded choice of groups: the fraction and seed decided it
      options.update(test_fraction=args.test_fraction, seed=args.seed)
    info = {split: {"groups": sorted({x.group for x in members})}
            for split, members in splits.items()}
    return splits, info
  options.update(test_fraction=args.test_fraction, seed=args.seed)
  return split_items(items, args.test_fraction, args.seed), {}


def _list(args: argparse.Namespace, source: str, options: dict[str, Any]
          ) -> tuple[str, list[Item], list[dict[str, Any]]]:
  """(modality, items, unlabelled entries) of the local input `source`; records options."""
  if args.kind == "manifest":
    rows = read_manifest(source)
    columns = _manifest_columns(args, rows)
    modality = next(m for m in ("image", "audio", "video") if columns[m])
    items = list_manifest(source, rows, path_column=columns[modality],
                          text_column=columns["text"], label_column=columns["label"],
                          split_by=args.split_by, group_column=columns["group"])
    options["columns"] = columns
    return modality, items, []
  items, unlabelled = list_folder(args.kind, source, args.label_pattern, args.group_pattern)
  options.update(label_pattern=args.label_pattern, group_pattern=args.group_pattern)
  return args.kind.split("_")[0], items, unlabelled


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the command line; returns the written metadata. Errors raise ValueError."""
  args = _parser().parse_args(argv)
  given = str(paths.as_path(args.input, key="--input"))
  output = str(paths.as_path(args.output, key="--output"))
  _check_flags(args)
  _check_output(output, args.overwrite)
  options: dict[str, Any] = {}
  with prepare_staging.staged(given, args.kind) as staging:
    # A bucket input is listed and decoded from its local copy; items keep their URLs.
    listed = staging.root if staging else os.path.abspath(given)
    modality, items, unlabelled = _list(args, listed, options)
    local: Callable[[str], str] = staging.local if staging else str
    if staging:
      items, unlabelled = staging.as_urls(items, unlabelled)
    source = given if staging else listed
    if unlabelled and args.on_error == "fail":
      first = unlabelled[0]
      raise ValueError(f"{first['path']}: {first['reason']} (pass --on-error skip to skip "
                       f"{len(unlabelled)} such file(s)).")
    if not items:
      raise ValueError(f"--input {source}: no usable files ({len(unlabelled)} without a label).")
    if args.class_names:
      options["class_names"] = parse_class_names(args.class_names)
      items = rename_labels(items, options["class_names"])
    if modality == "image":
      options["channels"] = _channels(items, args.channels, local)
    decode = _decoder(modality, args, options)
    splits, split_info = _splits(args, items, options)
    counts = collections.Counter(item.label for item in items if item.label is not None)
    if counts:
      print(f"found {len(counts)} classes: "
            + ", ".join(f"{name} ({counts[name]})" for name in sorted(counts)))
    meta = _write(output, splits, staging.decoder(decode) if staging else decode,
                  class_names=sorted(counts), on_error=args.on_error,
                  metadata={"kind": args.kind, "source": source, "options": options},
                  skipped=unlabelled, split_info=split_info)
  _print_summary(args.kind, given, output, meta)
  return meta


def _print_summary(kind: str, source: str, output: str, meta: Mapping[str, Any]) -> None:
  counts = ", ".join(f"{split} {info['count']}" for split, info in meta["splits"].items())
  print(f"prepared {kind} {source} -> {output}: {counts} examples, "
        f"{len(meta['class_names'])} classes, fields "
        + ", ".join(f"{k} {v['dtype']} {v['shape']}" for k, v in meta["fields"].items()))
  for split, info in meta["splits"].items():
    if "groups" in info:
      print(f"  {split} groups: {', '.join(info['groups'])}")
  audio_shape = meta["fields"].get("audio", {}).get("shape", [])
  if None in audio_shape:
    print("  note: audio lengths vary; pass --clip-seconds for fixed-length clips")
  if meta["skipped"]:
    print(f"skipped {len(meta['skipped'])} file(s):")
    for s in meta["skipped"]:
      print(f"  {s['path']}: {s['reason']}")
  for warning in meta["warnings"]:
    print(f"warning: {warning}")


def run_command(command: Callable[[], Any]) -> None:
  """Runs a data command line: a ValueError prints one `error: ...` line and exits 1."""
  try:
    command()
  except ValueError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  run_command(main)
