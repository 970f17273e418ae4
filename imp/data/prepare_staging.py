"""A bucket `--input` for `imp.data.prepare`: its objects read through a local copy.

The listing (`os.walk`) and the decoders (Pillow, soundfile, PyAV, which open local paths)
read local files, so a gs:// or s3:// input is copied to a temporary folder first: a folder
kind's whole folder, or a manifest and then the objects its rows name (relative to the
manifest's folder, as on a disk). Items keep the object's URL as their path: every error, skip
list, printed line and metadata.json names what is in the bucket, and `local(path)` gives the
copy to read. The copy is deleted when the command ends; it needs local disk for the input
(the output is also written locally first: array_record writes local files only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import fsspec

from imp import paths
from imp.data.prepare_inputs import Item


class Staging:
  """The local copy of one bucket input; `url` is the input, `root` its local copy."""

  def __init__(self, url: str, kind: str, folder: str):
    self.url = url.rstrip("/")
    self._fs, self._key = fsspec.core.url_to_fs(self.url)
    name = self.url.rsplit("/", 1)[-1]
    self.root = os.path.join(folder, name)
    self.base_url, self.base = (self.url, self.root) if kind != "manifest" else (
        self.url.rsplit("/", 1)[0], folder)
    if kind != "manifest":
      if not self._fs.isdir(self._key):
        raise ValueError(f"--input {url}: no such folder in the bucket; a folder kind reads a "
                         "directory of class sub-folders (or files named for --label-pattern).")
      self._download(self._key, self.root)
    elif not self._fs.isfile(self._key):
      raise ValueError(f"--input {url}: no such object; the manifest kind reads a .csv or "
                       ".jsonl file.")
    else:
      self._fs.get_file(self._key, self.root)

  def _download(self, key: str, local: str) -> None:
    """The object `key`, or every object under the prefix `key`, to `local` (absent: nothing)."""
    for found in self._fs.find(key, withdirs=False) or []:
      target = os.path.join(local, os.path.relpath(found, key)) if found != key else local
      os.makedirs(os.path.dirname(target), exist_ok=True)
      self._fs.get_file(found, target)

  def to_url(self, local: str) -> str:
    """The object a path under the local copy stands for."""
    return self.base_url + "/" + os.path.relpath(local, self.base).replace(os.sep, "/")

  def local(self, path: str) -> str:
    """The local copy of the object `path` (a URL under the input; anything else unchanged)."""
    if not path.startswith(self.base_url + "/"):
      return path
    return os.path.join(self.base, *path[len(self.base_url) + 1:].split("/"))

  def as_urls(self, items: Sequence[Item], skipped: Sequence[dict[str, Any]]
              ) -> tuple[list[Item], list[dict[str, Any]]]:
    """Listed items and skipped entries named by their objects' URLs; a manifest's objects
    (files or clip folders) are downloaded here, the folder kinds' already are."""
    named = [dataclasses.replace(item, path=self.to_url(item.path)) for item in items]
    if self.base_url != self.url:  # a manifest: fetch what its rows name
      for item in named:
        self._download(self._fs._strip_protocol(item.path), self.local(item.path))
    return named, [{**entry, "path": self.to_url(entry["path"])} for entry in skipped]

  def decoder(self, decode: Callable[[Item], Any]) -> Callable[[Item], Any]:
    """`decode` reading the local copy; its errors name the object's URL."""

    def decode_copy(item: Item) -> Any:
      local = self.local(item.path)
      try:
        return decode(dataclasses.replace(item, path=local))
      except ValueError as e:
        raise ValueError(str(e).replace(local, item.path)) from e

    return decode_copy


@contextlib.contextmanager
def staged(given: str, kind: str) -> Iterator[Staging | None]:
  """The local copy of a bucket `--input` (deleted on leaving); None for a local input."""
  if not paths.is_url(given):
    yield None
    return
  paths.check_reachable(given, key="--input")
  with tempfile.TemporaryDirectory(prefix="imp_prepare_input_") as folder:
    staging = Staging(given, kind, folder)
    try:
      yield staging
    except ValueError as e:  # a listing error names the bucket, not its temporary copy
      raise ValueError(str(e).replace(staging.base, staging.base_url)) from e
