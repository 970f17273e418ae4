"""Checkpoint arrays in s3://: orbax's array store (tensorstore) pointed at its `s3` driver.

orbax 0.12 builds each array's tensorstore key-value store itself: its `gcs` driver for a
gs:// path and the local `file` driver for any other, so an s3:// checkpoint stops with
"Checkpoint path should be absolute" (or, without OCDBT, lands in a local folder `s3:`).
tensorstore has had an `s3` driver since 0.1.38, and orbax's own list of remote stores already
names it; only the path test in front of it is missing. `enable()` adds that test: an s3:// path
takes the same road as gs:// (OCDBT over a bucket key prefix), with the `s3` driver at its end.
No fork of orbax, no copy step: every process writes its shards straight to the bucket, as it
does for gs://.

The three names replaced are orbax internals (`tensorstore_utils._use_gcs_driver`,
`_normalize_path`, `gcs_utils.get_kvstore_for_gcs`); `enable()` checks that they are there and
says which orbax would need a new look when they are not. Everything else is orbax's public
API: the CheckpointManager marks a finished save with a commit file (`CommitFileTemporaryPath`,
what it uses for gs://), since a bucket has no folder to rename.

Credentials follow AWS's default chain (tensorstore's `s3` driver reads the AWS variables,
~/.aws and the instance role). tensorstore does not read AWS's endpoint variable, so
`AWS_ENDPOINT_URL_S3` or else `AWS_ENDPOINT_URL` (the names every AWS SDK reads: a MinIO or
an emulator) is passed on as the store's `endpoint`.
"""

from __future__ import annotations

import os

import orbax.checkpoint as ocp

from imp import paths

_ENABLED = False


def _kvstore(path: str, gcs_kvstore):
  """tensorstore's `s3` key-value store for `s3://bucket/key`; `gcs_kvstore(path)` otherwise."""
  if not path.startswith("s3://"):
    return gcs_kvstore(path)
  bucket, _, key = path[len("s3://"):].partition("/")
  spec = {"driver": "s3", "bucket": bucket, "path": key}
  endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
  if endpoint:
    spec["endpoint"] = endpoint
  return spec


def enable(workdir: paths.PathLike) -> None:
  """Lets orbax keep arrays under s3:// (idempotent).

  Raises:
    paths.PathError: naming the workdir, when this orbax lacks the names replaced here.
  """
  global _ENABLED
  if _ENABLED:
    return
  from orbax.checkpoint._src.path import gcs_utils
  from orbax.checkpoint._src.serialization import tensorstore_utils as ts_utils

  missing = [name for module, name in ((ts_utils, "_use_gcs_driver"),
                                       (ts_utils, "_normalize_path"),
                                       (gcs_utils, "get_kvstore_for_gcs"))
             if not callable(getattr(module, name, None))]
  if missing:
    raise paths.PathError(
        f"workdir={str(workdir)!r}: imp keeps s3:// checkpoints through orbax 0.12's "
        f"tensorstore path functions, and orbax {ocp.__version__} lacks {', '.join(missing)}; "
        "install orbax-checkpoint 0.12 (pyproject.toml) or use gs:// or a local path.")
  use_gcs, normalize, gcs_kvstore = (ts_utils._use_gcs_driver, ts_utils._normalize_path,
                                     gcs_utils.get_kvstore_for_gcs)
  ts_utils._use_gcs_driver = lambda d: d.startswith("s3://") or use_gcs(d)
  # os.path.normpath folds "s3://" to "s3:/", as orbax restores "gs://" after it
  ts_utils._normalize_path = lambda p: (normalize(p).replace("s3:/", "s3://", 1)
                                        if p.startswith("s3://") else normalize(p))
  gcs_utils.get_kvstore_for_gcs = lambda p: _kvstore(p, gcs_kvstore)
  _ENABLED = True


def temporary_path_class(directory: paths.PathLike):
  """How orbax marks a finished save: a commit file in a bucket (no folders to rename there;
  orbax's own default for gs://), orbax's default (a rename) on a disk."""
  return ocp.path.atomicity.CommitFileTemporaryPath if paths.is_url(directory) else None
