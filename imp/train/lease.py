"""The workdir lease: one run at a time in a workdir.

Two runs in one workdir would interleave metrics.jsonl and replace each other's checkpoints.
A training run therefore holds `<workdir>/lease.json` (host, pid, start time, last refresh),
created only if absent, refreshed every REFRESH_SECONDS by a daemon thread and deleted at the
end. A second run finds it and is refused (WorkdirBusyError, one line naming the holder).

A holder killed with -9 cannot delete its lease, so a lease is taken over when its holder is
gone: on the same host when its pid no longer runs, on another host (a bucket workdir) when it
was not refreshed for EXPIRY_SECONDS. Only process 0 of a multi-process run takes it.

In a bucket, "created only if absent" is a write followed by a read-back of this run's token:
two runs starting within the same second may both pass it; the next refresh of the loser sees
the other token and stops that run's refreshing with a warning.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid

from imp import paths

log = logging.getLogger("imp.lease")

LEASE_FILE = "lease.json"
REFRESH_SECONDS = 10.0
EXPIRY_SECONDS = 60.0


class WorkdirBusyError(RuntimeError):
  """Another run holds the workdir."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process: it runs
    return True
  return True


def _gone(holder: dict, now: float) -> str | None:
  """Why the holder of a lease is gone (its lease may be taken over), or None if it runs."""
  stale = now - float(holder.get("refreshed", 0))
  if stale > EXPIRY_SECONDS:
    return f"not refreshed for {stale:.0f} s"
  if holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1))):
    return f"pid {holder.get('pid')} no longer runs on this host"
  return None


class Lease:
  """`with Lease(workdir): train` - WorkdirBusyError if another live run holds it."""

  def __init__(self, workdir: paths.PathLike):
    self.path = paths.as_path(workdir, key="workdir") / LEASE_FILE
    self.token = uuid.uuid4().hex
    self.since = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _record(self) -> bytes:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": self.since,
                       "refreshed": time.time(), "token": self.token}).encode()

  def _create(self) -> bool:
    """Writes the lease if no file is there; False if one is."""
    if paths.is_url(self.path):
      if self.path.exists():
        return False
      self.path.write_bytes(self._record())
      return self._holder().get("token") == self.token
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "wb") as f:
      f.write(self._record())
    return True

  def _holder(self) -> dict:
    try:
      holder = json.loads(self.path.read_text())
    except (OSError, ValueError):  # deleted meanwhile, or half written by a dying run
      return {}
    return holder if isinstance(holder, dict) else {}

  def acquire(self) -> None:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if not self._create():
      holder = self._holder()
      gone = _gone(holder, time.time())
      if gone is None:
        raise WorkdirBusyError(
            f"workdir {self.path.parent} is in use by the run of pid {holder.get('pid')} on "
            f"host {holder.get('host')} since {holder.get('since')} ({self.path}); wait for "
            f"it to end or stop it; once it is gone, rerun this command (a lease not refreshed "
            f"for {EXPIRY_SECONDS:.0f} s is taken over), or use another --workdir.")
      log.warning("taking over the lease of workdir %s from pid %s on host %s (since %s): %s",
                  self.path.parent, holder.get("pid"), holder.get("host"), holder.get("since"),
                  gone)
      paths.write_bytes(self.path, self._record())
    self._thread = threading.Thread(target=self._refresh, name="imp_lease", daemon=True)
    self._thread.start()

  def _refresh(self) -> None:
    while not self._stop.wait(REFRESH_SECONDS):
      if self._holder().get("token") not in (None, self.token):
        log.warning("the lease %s was taken over by another run; no longer refreshing it",
                    self.path)
        return
      with contextlib.suppress(OSError):  # a missed refresh: the next one may succeed
        paths.write_bytes(self.path, self._record())

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if self._holder().get("token") == self.token:
      with contextlib.suppress(OSError):
        self.path.unlink()

  def __enter__(self) -> Lease:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


@contextlib.contextmanager
def hold(workdir: paths.PathLike, *, take: bool = True):
  """The workdir's lease for the duration of the block, if `take` (process 0)."""
  if not take:
    yield None
    return
  with Lease(workdir) as lease:
    yield lease
