"""One notion of a path: a local path, `gs://bucket/...` or `s3://bucket/...`.

Every path a user gives imp (workdir, data directories, tokenizer files, the compilation
cache, `prepare --input/--output`, evaluation and analysis outputs) goes through here. It is
`etils.epath.Path`, the path type orbax itself uses, with fsspec (gcsfs, s3fs) behind the
bucket schemes, so `pathlib.Path("gs://b/x")` (which folds the `//` into a local folder
`gs:/b/x`) never appears. Credentials and emulators are the client libraries' own business:
application default credentials or `STORAGE_EMULATOR_HOST` for gcsfs, AWS's chain or
`AWS_ENDPOINT_URL` for s3fs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from typing import Union

from etils import epath

Path = epath.Path
PathLike = Union[str, os.PathLike, epath.Path]

URL_SCHEMES = ("gs://", "s3://")


class PathError(ValueError):
  """A path imp cannot use: an unknown scheme, a missing bucket, refused credentials."""


def is_url(path: PathLike) -> bool:
  """True for a bucket URL (gs://, s3://), False for a local path."""
  return str(path).startswith(URL_SCHEMES)


def as_path(path: PathLike, *, key: str = "path") -> epath.Path:
  """`path` as an epath.Path: `~` expanded for local paths; any other `scheme://` refused.

  Raises:
    PathError: naming `key` and the path, when the scheme is neither local nor gs:// / s3://.
  """
  text = os.fspath(path) if not isinstance(path, epath.Path) else str(path)
  if "://" in text and not is_url(text):
    scheme = text.split("://", 1)[0]
    raise PathError(f"{key}={text!r}: unknown scheme {scheme}://; valid: a local path, "
                    f"{', '.join(s + 'bucket/...' for s in URL_SCHEMES)}.")
  if not is_url(text):
    text = os.path.expanduser(text)
  return epath.Path(text)


def write_bytes(path: PathLike, data: bytes) -> None:
  """Writes `data` whole or not at all: a local file through a temporary name and a rename;
  an object in a bucket is one put, which is atomic already."""
  path = as_path(path)
  if is_url(path):
    path.write_bytes(data)
    return
  tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
  try:
    tmp.write_bytes(data)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def write_text(path: PathLike, text: str) -> None:
  """`write_bytes` for UTF-8 text."""
  write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def folder_when_complete(path: PathLike, *, last: str | None = None):
  """Yields a temporary sibling folder (`.<name>.partial-<id>`) to write a local folder into;
  when the block completes, it becomes `path` (a rename; into an existing `path` its entries
  are moved, `last` - the file that marks the folder finished - after the others). An
  interrupted block leaves nothing at `path` that looks finished: its partial folder is
  deleted, or after a kill -9 left under a name no reader takes for data.
  """
  path = as_path(path)
  if is_url(path):  # a bucket has no folders to rename: objects appear one by one
    yield path
    return
  tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
  tmp.mkdir(parents=True)
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if not path.exists():
    os.rename(tmp, path)
    return
  for name in sorted(os.listdir(tmp), key=lambda n: n == last):
    os.replace(tmp / name, path / name)
  tmp.rmdir()
