"""One notion of a path: a local path, `gs://bucket/...` or `s3://bucket/...`.

Every path a user gives imp (workdir, data directories, tokenizer files, the compilation
cache, `prepare --output`, evaluation and analysis outputs) goes through here. It is
`etils.epath.Path`, the path type orbax itself uses, with fsspec (gcsfs, s3fs) behind the
bucket schemes, so `pathlib.Path("gs://b/x")` (which folds the `//` into a local folder
`gs:/b/x`) never appears. Credentials and emulators are the client libraries' own business:
application default credentials or `STORAGE_EMULATOR_HOST` for gcsfs, AWS's chain or
`AWS_ENDPOINT_URL` for s3fs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import uuid

import fsspec
from etils import epath

Path = epath.Path
log = logging.getLogger("imp.paths")
PathLike = str | os.PathLike | epath.Path

URL_SCHEMES = ("gs://", "s3://")

# No cached listings: several processes, and tensorstore (orbax's array writer, which does not
# go through fsspec), change a run's bucket, and fsspec keeps one filesystem per thread, so a
# listing one thread cached goes stale when another moves a checkpoint (orbax then found a
# set-aside step still "there" and failed to delete it).
for _protocol in ("gs", "gcs", "s3", "s3a"):
  fsspec.config.conf.setdefault(_protocol, {}).setdefault("use_listings_cache", False)


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


def command_line_path(path: PathLike, *, key: str) -> epath.Path:
  """`check_reachable(path)` for a command's flag: a bad one is one `FATAL` line on stderr and
  exit status 2, as imp.main reports a bad flag."""
  try:
    return check_reachable(path, key=key)
  except PathError as e:
    sys.stderr.write(f"FATAL {e}\n")
    sys.exit(2)


def bucket_of(path: PathLike) -> str:
  """`gs://bucket` of `gs://bucket/a/b` (the same for s3://)."""
  scheme, rest = str(path).split("://", 1)
  return f"{scheme}://{rest.split('/', 1)[0]}"


def check_reachable(path: PathLike, *, key: str = "path") -> epath.Path:
  """`as_path(path)`, after making sure its bucket exists and the credentials may list it.

  A run would otherwise compile for a minute and then fail at its first write. Local paths
  pass unchecked (their directory is made when the run writes).

  Raises:
    PathError: naming `key`, the URL and the client library's reason.
  """
  result = as_path(path, key=key)
  if not is_url(result):
    return result
  bucket = bucket_of(result)
  try:
    found = epath.Path(bucket).exists()
  except Exception as e:  # noqa: BLE001 - refused credentials, no network: the library's words
    reason = " ".join(str(e).split())[:300] or type(e).__name__
    raise PathError(f"{key}={str(result)!r}: cannot reach {bucket} ({type(e).__name__}: "
                    f"{reason}); credentials: {_CREDENTIALS[bucket[:2]]}.") from e
  if not found:
    raise PathError(f"{key}={str(result)!r}: bucket {bucket} does not exist (or these "
                    f"credentials may not see it); create it or pick another. Credentials: "
                    f"{_CREDENTIALS[bucket[:2]]}.")
  return result


_CREDENTIALS = {
    "gs": "application default credentials (gcloud auth application-default login, or the "
          "VM's service account)",
    "s3": "AWS's default chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, or the "
          "instance role)",
}


def move_tree(source: PathLike, target: PathLike) -> None:
  """Moves the folder `source` to `target`: a rename on a local disk; in a bucket, where a
  folder is only a name prefix, a server-side copy of every object under it, then a delete.
  (fsspec's own recursive move also copies the folder names themselves, which s3 refuses.)"""
  source, target = as_path(source), as_path(target)
  if not is_url(source):
    source.rename(target)
    return
  fs, root = fsspec.core.url_to_fs(str(source))
  _, destination = fsspec.core.url_to_fs(str(target))
  for name in fs.find(root):
    fs.copy(name, destination + name[len(root):])
  fs.rm(root, recursive=True)


def upload_tree(local: PathLike, target: PathLike, *, last: str | None = None) -> None:
  """Copies the files under the local folder `local` to `target` (a bucket prefix or a local
  folder), each one whole; the file named `last` (e.g. an index of the others) goes last."""
  target = as_path(target)
  files = sorted(os.path.relpath(os.path.join(root, name), local)
                 for root, _, names in os.walk(local) for name in names)
  for rel in sorted(files, key=lambda f: f == last):
    destination = target / rel
    if not is_url(destination):
      destination.parent.mkdir(parents=True, exist_ok=True)
    with open(os.path.join(local, rel), "rb") as src, destination.open("wb") as dst:
      shutil.copyfileobj(src, dst)


def bucket_cache_dir() -> str:
  """Where `local_copy` keeps bucket folders: $XDG_CACHE_HOME/imp/buckets, else
  ~/.cache/imp/buckets (beside the compilation cache)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
  return os.path.expanduser(os.path.join(base, "imp", "buckets"))


_COPY_INDEX = ".imp_copy.json"  # in a local copy: each object's version tag when copied


def _version_tag(info: dict) -> str:
  """What changes when an object is rewritten: its ETag (s3), MD5 or CRC32C (GCS), else its
  size and time."""
  for field in ("ETag", "md5Hash", "crc32c"):
    if info.get(field):
      return str(info[field])
  return f"{info.get('size')}@{info.get('LastModified') or info.get('updated') or ''}"


def local_copy(url: PathLike, *, key: str = "path") -> epath.Path:
  """A local copy of the bucket folder `url` (a local path is returned as it is), for readers
  that open local files only: array_record reads s3:// through it.

  It lives under `bucket_cache_dir()/<scheme>/<bucket>/<prefix>` and is refreshed object by
  object: an object whose version tag differs from the one recorded at its copy is fetched
  again (to a temporary name, then renamed), so a folder prepared again is read anew, and
  processes on one host may copy at once.

  Raises:
    PathError: naming `key` and the URL, when the bucket is unreachable or nothing is there.
  """
  if not is_url(url):
    return as_path(url, key=key)
  check_reachable(url, key=key)
  fs, root = fsspec.core.url_to_fs(str(url))
  root = root.rstrip("/")
  objects = {name: info for name, info in fs.find(root, detail=True).items()
             if info.get("type") != "directory"}
  if not objects:
    raise PathError(f"{key}={str(url)!r} does not exist (no objects under it).")
  target = os.path.join(bucket_cache_dir(), str(url).split("://", 1)[0], root)
  index_file = os.path.join(target, _COPY_INDEX)
  index = json.loads(epath.Path(index_file).read_text()) if os.path.exists(index_file) else {}
  gone = sorted(set(index) - {os.path.relpath(name, root) for name in objects})
  for rel in gone:  # objects deleted from the bucket since the last copy
    with contextlib.suppress(FileNotFoundError):
      os.remove(os.path.join(target, rel))
    del index[rel]
  fetched = 0
  for name, info in sorted(objects.items()):
    rel, tag = os.path.relpath(name, root), _version_tag(info)
    local = os.path.join(target, rel)
    if index.get(rel) == tag and os.path.exists(local):
      continue
    os.makedirs(os.path.dirname(local), exist_ok=True)
    partial = f"{local}.{uuid.uuid4().hex[:8]}.partial"
    fs.get_file(name, partial)
    os.replace(partial, local)
    index[rel] = tag
    fetched += 1
  if fetched or gone:
    log.info("%s: copied %d of %d objects to %s (%d removed)", url, fetched, len(objects),
             target, len(gone))
    write_text(index_file, json.dumps(index, indent=1))
  return epath.Path(target)


def write_bytes(path: PathLike, data: bytes) -> None:
  """Writes `data` whole or not at all: a local file through a temporary name and a rename
  (its folder made if missing); an object in a bucket is one put, which is atomic already."""
  path = as_path(path)
  if is_url(path):
    path.write_bytes(data)
    return
  path.parent.mkdir(parents=True, exist_ok=True)
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
