"""What `imp.data.prepare` reads: the items of a folder or manifest, their labels and groups.

An `Item` is one example before decoding: a file (or a clip folder) and what the listing says
about it. Labels come from the top-level folder under --input, or from --label-pattern; groups
(speakers, subjects, sources: held out whole by --test-groups) from --group-pattern or a
manifest column. Patterns must match the whole file name (`re.fullmatch`); a pattern with a
"/" is matched against the path relative to --input instead.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from imp.data.images import IMAGE_EXTENSIONS
from imp.data.video_file import VIDEO_EXTENSIONS


@dataclasses.dataclass(frozen=True)
class Item:
  """One input example before decoding: a file, and what the listing says about it."""

  path: str
  label: str | None = None  # class name
  text: str | None = None
  split: str | None = None  # from --split-by
  group: str | None = None  # from --group-pattern / --group-column


def files_under(directory: str) -> list[str]:
  """Non-hidden files below `directory`, sorted (so outputs do not depend on listing order)."""
  found = []
  for root, dirs, files in os.walk(directory):
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    found += [os.path.join(root, f) for f in files if not f.startswith(".")]
  return sorted(found)


def check_input_dir(path: str) -> None:
  if not os.path.isdir(path):
    what = "no such directory" if not os.path.exists(path) else "not a directory"
    raise ValueError(f"--input {path}: {what}; a folder kind reads a directory of class "
                     f"sub-folders (or files named for --label-pattern).")


def video_entries(path: str) -> tuple[list[str], list[str]]:
  """(video files and clip folders, other files) under `path`, sorted.

  A clip folder holds image frames and no sub-folder. Other files (neither a video file nor a
  clip folder's frame) are returned so that they are reported, not silently dropped.
  """
  entries, others = [], []
  for root, dirs, files in os.walk(path):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    files = [f for f in files if not f.startswith(".")]
    clip = not dirs and root != path and any(
        os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS for f in files)
    if clip:
      entries.append(root)
    for f in files:
      ext = os.path.splitext(f)[1].lower()
      if ext in VIDEO_EXTENSIONS:
        entries.append(os.path.join(root, f))
      elif not (clip and ext in IMAGE_EXTENSIONS):
        others.append(os.path.join(root, f))
  return sorted(entries), sorted(others)


class NamePattern:
  """A --label-pattern / --group-pattern: a regex that must match the whole name.

  The value is the named group `group` (label or group), else the first group, else the
  whole match. A pattern holding "/" matches the path relative to --input (with "/").
  """

  def __init__(self, flag: str, pattern: str, group: str):
    try:
      self.regex = re.compile(pattern)
    except re.error as e:
      raise ValueError(f"{flag} {pattern!r}: not a regular expression ({e}).") from e
    self.flag, self.pattern, self.group = flag, pattern, group
    self.on_path = "/" in pattern

  def __call__(self, path: str, root: str) -> str | None:
    name = os.path.relpath(path, root).replace(os.sep, "/") if self.on_path else (
        os.path.basename(path.rstrip(os.sep)))
    match = self.regex.fullmatch(name)
    if match is None:
      return None
    if self.group in self.regex.groupindex:
      return match.group(self.group)
    return match.group(1) if self.regex.groups else match.group(0)

  def reason(self) -> str:
    target = "path relative to --input" if self.on_path else "whole file name"
    return f"{self.flag} '{self.pattern}' does not match the {target}"


def list_folder(kind: str, path: str, label_pattern: str | None,
                group_pattern: str | None) -> tuple[list[Item], list[dict]]:
  """Items of an image_folder / audio_folder / video_folder input, and {"path", "reason"}
  for entries that got no label or group (reported, and skipped with --on-error skip)."""
  check_input_dir(path)
  others: list[str] = []
  if kind == "video_folder":
    entries, others = video_entries(path)
  else:
    entries = files_under(path)
  labels = NamePattern("--label-pattern", label_pattern, "label") if label_pattern else None
  groups = NamePattern("--group-pattern", group_pattern, "group") if group_pattern else None
  items, unlabelled = [], [
      {"path": f, "reason": f"neither a video file ({', '.join(VIDEO_EXTENSIONS)}) nor a frame "
                            f"of a clip folder (a folder of images with no sub-folder)"}
      for f in others]
  for entry in entries:
    rel = os.path.relpath(entry, path).split(os.sep)
    if labels is not None:
      label = labels(entry, path)
      if label is None:
        unlabelled.append({"path": entry, "reason": labels.reason()})
        continue
    elif len(rel) < 2:
      unlabelled.append({"path": entry, "reason": "directly in --input, so no class folder "
                                                  "names its label (or pass --label-pattern)"})
      continue
    else:
      label = rel[0]  # the top-level folder under --input names the class
    group = None
    if groups is not None:
      group = groups(entry, path)
      if group is None:
        unlabelled.append({"path": entry, "reason": groups.reason()})
        continue
    items.append(Item(entry, label=label, group=group))
  if not items and not unlabelled:
    wanted = {"image_folder": "image files", "audio_folder": "audio files",
              "video_folder": f"video files ({', '.join(VIDEO_EXTENSIONS)}) or clip folders "
                              f"of frame images"}[kind]
    raise ValueError(f"--input {path}: nothing to read; {kind} expects {wanted} in class "
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
                  text_column: str | None, label_column: str | None, split_by: str | None,
                  group_column: str | None = None) -> list[Item]:
  """One Item per manifest row; relative paths are taken from the manifest's folder."""
  base = os.path.dirname(os.path.abspath(path))
  items = []
  for i, row in enumerate(rows, 1):
    for column in (path_column, text_column, label_column, split_by, group_column):
      if column is not None and row.get(column) in (None, ""):
        raise ValueError(f"{path}: row {i} has no {column!r} value (keys: "
                         f"{', '.join(map(str, row))}).")

    def value(column: str | None, row=row) -> str | None:
      return None if column is None else str(row[column])

    items.append(Item(os.path.join(base, str(row[path_column])), label=value(label_column),
                      text=value(text_column), split=value(split_by), group=value(group_column)))
  return items


def parse_class_names(value: str) -> dict[str, str]:
  """--class-names: "old=new,..." or a file (.json object, or one `old=new` per line)."""
  if os.path.isfile(value):
    with open(value, encoding="utf-8") as f:
      text = f.read()
    if value.lower().endswith(".json"):
      try:
        mapping = json.loads(text)
      except json.JSONDecodeError as e:
        raise ValueError(f"--class-names {value}: not JSON ({e}).") from e
      if not isinstance(mapping, dict):
        raise ValueError(f"--class-names {value}: must hold a JSON object {{label: name}}.")
      return {str(k): str(v) for k, v in mapping.items()}
    pairs = [line.strip() for line in text.splitlines() if line.strip()]
  else:
    pairs = [p.strip() for p in value.split(",") if p.strip()]
  mapping = {}
  for pair in pairs:
    old, sep, new = pair.partition("=")
    if not sep or not old.strip() or not new.strip():
      raise ValueError(f"--class-names: {pair!r} is not `label=name`; give e.g. "
                       f"--class-names 0=zero,1=one or a file of such lines (or a .json object).")
    mapping[old.strip()] = new.strip()
  return mapping


def rename_labels(items: Sequence[Item], mapping: Mapping[str, str]) -> list[Item]:
  """Items with labels renamed by --class-names; labels not in `mapping` keep their name."""
  found = sorted({item.label for item in items if item.label is not None})
  unknown = sorted(set(mapping) - set(found))
  if unknown:
    raise ValueError(f"--class-names renames {', '.join(map(repr, unknown))}, which no example "
                     f"has; the labels found: {', '.join(found) or 'none'}.")
  return [dataclasses.replace(item, label=mapping.get(item.label, item.label)) for item in items]
