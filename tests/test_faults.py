"""Faults tried on purpose (docs/faults.md): a failed save, a second run in one workdir, a
signal during an evaluation, unreadable checkpoints, interrupted data preparation."""

import errno
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import jax.numpy as jnp
import pytest
from conftest import tiny_digits_config as _small
from orbax.checkpoint._src.handlers import json_checkpoint_handler
from test_prepare import _write_image_folder
from test_reliability import _main

from imp import experiment
from imp.data import prepare, spoken_digits
from imp.model import embedders
from imp.run import metric_writers
from imp.train import lease


def _fail_save_of(monkeypatch, step):
  """The asynchronous write of checkpoint `step`'s metadata fails as on a full disk."""
  real = json_checkpoint_handler.JsonCheckpointHandler._save_fn

  async def failing(self, x, directory):
    if re.search(rf"/checkpoints/{step}\b", str(directory)):
      raise OSError(errno.ENOSPC, "No space left on device", str(directory))
    return await real(self, x, directory)

  monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", failing)


def test_failed_asynchronous_save_stops_at_the_next_save_and_keeps_the_committed_one(
    tmp_path, monkeypatch):
  _fail_save_of(monkeypatch, 8)
  with pytest.raises(experiment.CheckpointSaveError) as error:
    experiment.train(_small(total_steps=12, checkpoint_keep=1), tmp_path)
  message = str(error.value)
  assert "checkpoint save of step 8 to" in message and "No space left on device" in message
  assert "MiB free of" in message and "newest committed checkpoint, step 4, is kept" in message
  kept = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
  assert kept == ["4"]  # keep=1: step 4 is deleted only once a newer one commits


def _fail_metrics_from(monkeypatch, step):
  """Every metrics.jsonl write from `step` on fails as on a full disk."""
  real = metric_writers.MetricWriter._append

  def failing(self, at, line):
    if at >= step:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real(self, at, line)

  monkeypatch.setattr(metric_writers.MetricWriter, "_append", failing)


def test_failed_metrics_write_after_a_failed_save_names_the_save(tmp_path, monkeypatch):
  # The save fills the disk, the next log line's write fails first: the save is the cause.
  _fail_save_of(monkeypatch, 8)
  _fail_metrics_from(monkeypatch, 9)
  with pytest.raises(experiment.CheckpointSaveError, match="checkpoint save of step 8 to"):
    experiment.train(_small(total_steps=12, log_every=1), tmp_path)


def test_failed_metrics_write_stops_the_run_naming_the_workdir_and_the_kept_step(
    tmp_path, monkeypatch):
  _fail_metrics_from(monkeypatch, 9)
  with pytest.raises(experiment.MetricWriteError) as error:
    experiment.train(_small(total_steps=12, log_every=1), tmp_path)
  message = str(error.value)
  assert message.startswith(f"writing metrics to {tmp_path} failed: OSError: [Errno 28] No "
                            "space left on device (") and "MiB free of" in message, message
  assert "the newest committed checkpoint, step 8, is kept. Free space" in message, message


@pytest.fixture
def small_disk(tmp_path):
  """A 3 MB tmpfs (root only): room for one of the smoke run's checkpoints, not two."""
  if os.geteuid() != 0:
    pytest.skip("mounting a tmpfs needs root")
  disk = tmp_path / "disk"
  disk.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)]).returncode:
    pytest.skip("cannot mount a tmpfs here")
  yield disk
  subprocess.run(["umount", "--lazy", str(disk)], check=True)


@pytest.mark.slow
def test_full_disk_stops_at_the_next_save_with_one_fatal_line(small_disk):
  # The smoke model at its own size (the later flags win over _main's tiny ones).
  proc = _main(small_disk / "run", "--config.total_steps=40", "--config.checkpoint_every=10",
               "--config.compilation_cache_dir=off", "--config.model.depth=4",
               "--config.model.width=64", "--config.model.mlp_dim=256")
  try:
    out = proc.communicate(timeout=900)[0]
  finally:
    proc.kill()
  fatal = [line for line in out.splitlines() if line.startswith("FATAL")]
  assert proc.returncode == 2 and len(fatal) == 1, out[-3000:]
  assert "checkpoint save of step 20" in fatal[0] and "No space left on device" in fatal[0]
  assert "MiB free of 3.0 MiB" in fatal[0] and "step 10, is kept" in fatal[0], fatal
  assert "step 31:" not in out  # stopped at the next save
  assert (small_disk / "run" / "checkpoints" / "10" / "state").is_dir()


def test_second_run_in_a_live_runs_workdir_is_refused_naming_the_holder(tmp_path):
  with lease.Lease(tmp_path) as held:
    start = time.perf_counter()
    with pytest.raises(experiment.WorkdirBusyError) as error:
      experiment.train(_small(), tmp_path)
    assert time.perf_counter() - start < 5
    assert (f"in use by the run of pid {os.getpid()} on host {socket.gethostname()} since "
            f"{held.since}") in str(error.value)
    assert not (tmp_path / "checkpoints").exists()
  assert not (tmp_path / lease.LEASE_FILE).exists()  # released at the end


@pytest.mark.parametrize("how", ["pid_gone", "expired"])
def test_lease_of_a_gone_holder_is_taken_over(tmp_path, how, caplog):
  proc = subprocess.Popen(["true"])  # a pid that has exited
  proc.wait()
  holder = {"host": socket.gethostname() if how == "pid_gone" else "other-host",
            "pid": proc.pid if how == "pid_gone" else 1, "since": "2026-12-06 00:00:00 UTC",
            "refreshed": time.time() - (0 if how == "pid_gone" else 2 * lease.EXPIRY_SECONDS),
            "token": "old"}
  (tmp_path / lease.LEASE_FILE).write_text(json.dumps(holder))
  with lease.Lease(tmp_path) as taken:
    stored = json.loads((tmp_path / lease.LEASE_FILE).read_text())
    assert stored["token"] == taken.token and stored["pid"] == os.getpid()
  assert "taking over the lease" in caplog.text
  # A live holder on another host, refreshed just now, is not taken over.
  holder.update(host="other-host", pid=1, refreshed=time.time())
  (tmp_path / lease.LEASE_FILE).write_text(json.dumps(holder))
  with pytest.raises(lease.WorkdirBusyError, match="pid 1 on host other-host"):
    lease.Lease(tmp_path).acquire()


def test_nonfinite_stop_acts_at_its_step_and_names_the_committed_checkpoint(
    tmp_path, monkeypatch, capsys):
  normalize = embedders.normalize_pixels

  def poisoned(x, dtype):  # fault injection: only the high-resolution variant's images
    return normalize(x, dtype) * (jnp.nan if x.shape[1] >= 16 else 1)

  monkeypatch.setattr(embedders, "normalize_pixels", poisoned)
  config = _small(total_steps=12, log_every=100, checkpoint_every=1,
                  **{"nonfinite.policy": "stop"})
  with pytest.raises(experiment.NonFiniteError) as error:
    experiment.train(config, tmp_path)
  step = int(re.search(r"at step (\d+)", str(error.value)).group(1))
  assert step > 0, "the config's first step trains a high-resolution task: pick another seed"
  assert f"the newest checkpoint is step {step} in" in str(error.value)
  records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train = [r["step"] for r in records if r["kind"] == "train"]
  assert train == [step + 1]  # written at the bad step, not at 100
  assert f"NaN/Inf guard (config.nonfinite) skipped 1 step(s): {step} (" in capsys.readouterr().out


def test_signal_during_an_evaluation_abandons_it_and_saves_at_once(tmp_path, monkeypatch):
  real_run, signalled = experiment.EvalSuite.run, []

  def long_evaluation(self, infer):  # a real evaluation, repeated as a long one would take
    signalled.append(time.perf_counter())
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    while True:
      real_run(self, infer)

  monkeypatch.setattr(experiment.EvalSuite, "run", long_evaluation)
  summary = experiment.train(_small(total_steps=8, eval_every=4, checkpoint_every=3), tmp_path)
  seconds = time.perf_counter() - signalled[0] - 0.5
  assert summary["steps"] == 4 and summary["stopped_early"] and seconds < 3, (summary, seconds)
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [3, 4]  # step 4 saved on the signal, though not a checkpoint_every step


def test_interrupted_prepare_and_spoken_digits_leave_nothing_that_looks_finished(
    tmp_path, monkeypatch):
  _write_image_folder(tmp_path / "images", per_class=2)
  seen = []  # what --output held when the process was stopped
  real_decoder = prepare._decoder

  def decoder(*args):
    decode = real_decoder(*args)

    def stopped_on_the_fifth(item):  # a kill -9 could come at any file
      seen.append(sorted(p.name for p in (tmp_path / "prepared").glob("*")))
      if len(seen) == 5:
        raise KeyboardInterrupt
      return decode(item)
    return stopped_on_the_fifth

  monkeypatch.setattr(prepare, "_decoder", decoder)
  with pytest.raises(KeyboardInterrupt):
    prepare.main(["image_folder", "--input", str(tmp_path / "images"), "--output",
                  str(tmp_path / "prepared"), "--test-fraction", "0.5"])
  monkeypatch.undo()

  def synthesise(text, path, **kwargs):  # the second WAV file never comes
    seen.append(sorted(p.name for p in (tmp_path / "av_digits").glob("*")))
    if len(seen) > 6:
      raise KeyboardInterrupt
    open(path, "wb").close()

  monkeypatch.setattr(spoken_digits, "synthesise", synthesise)
  with pytest.raises(KeyboardInterrupt):
    spoken_digits.main(["--output", str(tmp_path / "av_digits")])
  assert seen == [[]] * 7  # nothing under either --output while it was being written
  assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]  # nor after
