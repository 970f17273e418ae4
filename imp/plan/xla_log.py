"""XLA's own log lines during compiles, kept in a file and counted per program.

XLA's C++ writes its warnings (`[SPMD] Involuntary full rematerialization ...`, `Very slow
compile?`) straight to file descriptor 2, past Python's sys.stderr, some of them 1,000
characters long. `Capture` points fd 2 at <workdir>/xla_compile.log while programs compile;
each compile thread marks where its own lines start and end (`Capture.span`), and the lines of
that span whose absl prefix carries the thread's native id are its program's: several programs
compile at once, each in one thread (`threading.get_native_id()` is the id absl prints).

  W1206 03:34:56.456164    8400 spmd_partitioner.cc:666] [SPMD] Involuntary full ...
  ^severity+date  time      thread  file:line
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

_PREFIX = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+(\d+) [^\]]+\] ?(.*)$")
REMAT = "Involuntary full rematerialization"


@dataclasses.dataclass
class Lines:
  """A program's XLA log lines (filled when its compile ends)."""

  lines: list[str] = dataclasses.field(default_factory=list)

  @property
  def warnings(self) -> int:
    """Log records at warning severity or above (W, E, F); continuation lines not counted."""
    return sum(1 for line in self.lines if line[:1] in "WEF" and _PREFIX.match(line))

  @property
  def involuntary_remats(self) -> int:
    return sum(1 for line in self.lines if REMAT in line)


def thread_lines(text: str, thread_id: int) -> list[str]:
  """The absl log records of `text` written by native thread `thread_id` (with any
  continuation lines that follow a record, such as a multi-line HLO dump)."""
  out, mine = [], False
  for line in text.splitlines():
    match = _PREFIX.match(line)
    if match:
      mine = int(match.group(1)) == thread_id
    if mine:
      out.append(line)
  return out


class Capture:
  """fd 2 redirected to `path` (appended) while entered; `span()` attributes lines."""

  def __init__(self, path: str | Path):
    self.path = Path(path)
    self._saved: int | None = None
    self._fd: int | None = None

  def __enter__(self) -> Capture:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    self._saved = os.dup(2)
    os.dup2(self._fd, 2)
    return self

  def __exit__(self, *exc) -> None:
    sys.stderr.flush()
    os.dup2(self._saved, 2)
    os.close(self._saved)
    os.close(self._fd)

  def restore_console(self) -> None:
    """fd 2 back to the console now (a Ctrl-C exit that skips __exit__)."""
    if self._saved is not None:
      os.dup2(self._saved, 2)

  @contextlib.contextmanager
  def span(self) -> Iterator[Lines]:
    """The calling thread's lines while the block runs (one compile)."""
    start = os.fstat(self._fd).st_size
    found = Lines()
    try:
      yield found
    finally:
      end = os.fstat(self._fd).st_size
      with open(self.path, "rb") as f:
        f.seek(start)
        text = f.read(end - start).decode("utf-8", "replace")
      found.lines = thread_lines(text, threading.get_native_id())


@contextlib.contextmanager
def no_capture() -> Iterator[Lines]:
  """`Capture.span`'s stand-in when nothing is captured (lines stay on the console)."""
  yield Lines()
