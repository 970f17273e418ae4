"""Runs that live in a bucket: gs:// against fake-gcs-server and s3:// against moto's server,
both on 127.0.0.1 (tests/storage_emulators.py), reached only through the client libraries'
own environment variables."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import tiny_digits_config
from test_prepare import _write_image_folder
from test_reliability import ROOT, _assert_bit_identical, _final_params, _main, _wait_for_step

from imp import experiment, paths
from imp.config.digits import TEMPLATES
from imp.plan.plan import ConfigError
from imp.run.metric_writers import read_metrics

TOTAL = 12  # steps of every run here; checkpoints every 4


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  """One local compilation cache for every run of this module: each compiles the same programs."""
  return str(tmp_path_factory.mktemp("compilation_cache"))


def _config(cache_dir, total_steps=TOTAL, **overrides):
  return tiny_digits_config(total_steps, compilation_cache_dir=cache_dir, **overrides)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache_dir):
  """(summary, final parameters) of the straight local run the bucket runs must end on."""
  workdir = tmp_path_factory.mktemp("straight")
  summary = experiment.train(_config(cache_dir), workdir)
  return summary, _final_params(_config(cache_dir), workdir)


FLAGS = [f"--config.total_steps={TOTAL}", "--config.checkpoint_every=4"]


def _kill_after_committed(workdir: str, step: int, *flags) -> list[int]:
  """Starts a run in `workdir`, kills it (-9) once checkpoint `step` has committed, and
  returns the committed steps it left."""
  checkpoints = paths.as_path(workdir) / "checkpoints"
  run = _main(workdir, *FLAGS, *flags)
  _wait_for_step(run, step + 2)
  deadline = time.monotonic() + 120
  while step not in _committed_steps(checkpoints) and time.monotonic() < deadline:
    time.sleep(0.2)
  run.kill()
  run.communicate(timeout=60)
  return _committed_steps(checkpoints)


def _committed_steps(checkpoints: paths.Path) -> list[int]:
  """Steps whose save finished: orbax marks a finished save in a bucket with a commit file."""
  import fsspec

  fs, root = fsspec.core.url_to_fs(str(checkpoints))  # listings uncached (imp.paths): fresh
  return sorted(int(name.split("/")[-2]) for name in fs.glob(f"{root}/*/commit_success.txt")
                if name.split("/")[-2].isdigit())


def _event_scalars(logdir: str) -> set[str]:
  """The scalar tags TensorBoard itself reads from `logdir` (a bucket prefix)."""
  from tensorboard.backend.event_processing import event_accumulator

  events = event_accumulator.EventAccumulator(logdir)
  events.Reload()
  return set(events.Tags()["scalars"])


def test_a_bad_workdir_is_one_fatal_line_before_any_compile(gcs_emulator, tmp_path):
  for workdir, said in (("ftp://host/run", "unknown scheme ftp://; valid: a local path"),
                        ("gs://no-such-bucket/run", "bucket gs://no-such-bucket does not exist")):
    proc = subprocess.run([sys.executable, "-m", "imp.main", f"--workdir={workdir}"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    fatal = [x for x in proc.stderr.splitlines() if x.startswith("FATAL")]
    assert fatal == [f"FATAL --workdir={workdir!r}: {fatal[0].split(': ', 1)[1]}"]
    assert said in fatal[0] and "compiled" not in proc.stdout + proc.stderr
  assert list(tmp_path.iterdir()) == []  # no local folder "ftp:" or "gs:"


def test_gs_run_survives_sigterm_kill9_and_a_corrupt_checkpoint(gcs_emulator, cache_dir,
                                                                   straight):
  """(b) SIGTERM saves to the bucket, the rerun resumes; (a) that rerun, killed with kill -9
  after a committed checkpoint, resumes; (c) with its newest checkpoint corrupted in the
  bucket, the older one is used; the run ends on the straight local run's parameters and
  evaluation."""
  workdir = gcs_emulator.make_bucket("cut") + "/run"
  cache = f"--config.compilation_cache_dir={cache_dir}"
  first = _main(workdir, *FLAGS, cache)
  _wait_for_step(first, 2)
  first.send_signal(signal.SIGTERM)
  out = first.communicate(timeout=300)[0]
  assert first.returncode == 0 and "received; saved a checkpoint at step" in out, out[-3000:]
  checkpoints = paths.as_path(workdir) / "checkpoints"
  sigterm_step = _committed_steps(checkpoints)[-1]
  assert 2 <= sigterm_step < 4
  committed = _kill_after_committed(workdir, 4, cache)
  # Each run's metric records start a segment at its first logged step: the rerun resumed.
  segments = sorted(p.name for p in (paths.as_path(workdir) / "metrics.jsonl.d").iterdir())
  assert segments == ["0000000001.jsonl", f"{sigterm_step + 1:010d}.jsonl"], segments
  assert len(committed) >= 2 and committed[-1] < TOTAL, committed
  newest, older = committed[-1], committed[-2]
  paths.write_text(checkpoints / str(newest) / "meta" / "metadata", '{"sampler": {"se')
  resumed = experiment.train(_config(cache_dir), workdir)
  assert resumed["steps_this_run"] == TOTAL - older
  assert (paths.as_path(workdir) / "checkpoints_corrupt" / str(newest) / "meta").is_dir()
  assert resumed["eval"] == straight[0]["eval"]
  _assert_bit_identical(straight[1], _final_params(_config(cache_dir), workdir))
  # Everything the run wrote is in the bucket, readable as from a local run.
  run = paths.as_path(workdir)
  assert json.loads((run / "summary.json").read_text())["steps"] == TOTAL
  assert json.loads((run / "programs.json").read_text())["programs"]
  logged = {r["step"] for r in read_metrics(run) if r["kind"] == "train"}
  assert logged >= set(range(older + 2 - older % 2, TOTAL + 1, 2)), sorted(logged)  # every 2
  assert "train/digits_cls/base/loss" in _event_scalars(str(run / "tensorboard"))


def test_s3_run_killed_after_a_checkpoint_resumes_to_the_straight_run(s3_emulator, cache_dir,
                                                                      straight):
  """(f) An s3:// run, killed with kill -9 after its first committed checkpoint, resumes from
  the bucket and ends on the straight local run's parameters and evaluation; its metrics and
  TensorBoard events are in the bucket, and evaluating it there gives the same results."""
  workdir = s3_emulator.make_bucket("runs") + "/run"
  committed = _kill_after_committed(workdir, 4, f"--config.compilation_cache_dir={cache_dir}")
  assert committed and committed[-1] < TOTAL, committed
  resumed = experiment.train(_config(cache_dir), workdir)
  assert resumed["steps_this_run"] == TOTAL - committed[-1]
  assert resumed["eval"] == straight[0]["eval"]
  _assert_bit_identical(straight[1], _final_params(_config(cache_dir), workdir))
  run = paths.as_path(workdir)
  assert _committed_steps(run / "checkpoints")[-1] == TOTAL
  assert {r["step"] for r in read_metrics(run) if r["kind"] == "train"} >= {TOTAL}
  assert "train/digits_cls/base/loss" in _event_scalars(str(run / "tensorboard"))
  # `python -m imp.evaluate` on the bucket workdir: the latest checkpoint, results in s3.
  assert experiment.evaluate(_config(cache_dir), workdir) == straight[0]["eval"]
  assert json.loads((run / "evaluation.json").read_text())["step"] == TOTAL
  assert f"checkpoint at step {TOTAL}." in (run / "evaluation.md").read_text()
  assert not (ROOT / "s3:").exists()


def _records(directory) -> dict[str, list[bytes]]:
  """Every split's records, as stored."""
  from array_record.python.array_record_data_source import ArrayRecordDataSource

  meta = json.loads((paths.as_path(directory) / "metadata.json").read_text())
  sources = {split: ArrayRecordDataSource(str(paths.as_path(directory) / info["file"]))
             for split, info in meta["splits"].items()}
  return {split: [source[i] for i in range(len(source))] for split, source in sources.items()}


def test_data_prepared_into_a_bucket_trains(gcs_emulator, tmp_path, cache_dir):
  """(e) `prepare --input gs://... --output gs://...` (the same records as from a local
  folder), then a run reading them with source="arrayrecord"."""
  from imp.data.prepare import main as prepare

  _write_image_folder(tmp_path / "digits")
  bucket = gcs_emulator.make_bucket("data")
  paths.upload_tree(tmp_path / "digits", f"{bucket}/raw")
  data = f"{bucket}/digits"
  flags = ["--test-fraction", "0.25", "--seed", "3"]
  meta = prepare(["image_folder", "--input", f"{bucket}/raw", "--output", data, *flags])
  listed = sorted(p.name for p in paths.as_path(data).iterdir())
  assert listed == ["metadata.json", "test.array_record", "train.array_record"]
  assert meta["source"] == "gs://data/raw"
  local = prepare(["image_folder", "--input", str(tmp_path / "digits"), "--output",
                   str(tmp_path / "local"), *flags])
  assert meta["splits"] == local["splits"] and meta["fields"] == local["fields"]
  assert _records(data) == _records(tmp_path / "local")
  config = _config(cache_dir)  # the other runs' programs: compiled once, in the cache
  config.datasets.digits = dict(source="arrayrecord", directory=data, label_templates=TEMPLATES)
  summary = experiment.train(config, tmp_path / "run")
  assert summary["steps"] == TOTAL and sum(summary["task_steps"].values()) == TOTAL
  assert meta["splits"]["test"]["count"] == 30
  with pytest.raises(ConfigError, match=r"datasets.digits.directory='gs://data/gone' does not "):
    config.datasets.digits.directory = "gs://data/gone"
    experiment.train(config, tmp_path / "run2")


def test_prepare_reads_a_manifest_in_s3(s3_emulator, tmp_path):
  """A manifest in s3:// whose rows name objects beside it: the records are those of the same
  manifest on a disk, and a missing object is skipped by its URL."""
  from imp.data.prepare import main as prepare

  images = _write_image_folder(tmp_path / "raw", per_class=2)
  rows = [{"image": f"{name}/{i:03d}.{'npy' if i % 2 else 'png'}", "label": name}
          for name, items in images.items() for i in range(len(items))]
  rows.append({"image": "zero/gone.png", "label": "zero"})
  (tmp_path / "raw" / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  bucket = s3_emulator.make_bucket("media")
  paths.upload_tree(tmp_path / "raw", f"{bucket}/raw")
  flags = ["--on-error", "skip", "--test-fraction", "0.25", "--seed", "1"]
  meta = prepare(["manifest", "--input", f"{bucket}/raw/m.jsonl", "--output",
                  str(tmp_path / "from_s3"), *flags])
  local = prepare(["manifest", "--input", str(tmp_path / "raw" / "m.jsonl"), "--output",
                   str(tmp_path / "from_disk"), *flags])
  assert meta["skipped"] == [{"path": "s3://media/raw/zero/gone.png",
                              "reason": local["skipped"][0]["reason"]}]
  assert "s3://media/raw/zero/gone.png" not in local["skipped"][0]["reason"]
  assert meta["source"] == "s3://media/raw/m.jsonl" and meta["splits"] == local["splits"]
  assert _records(tmp_path / "from_s3") == _records(tmp_path / "from_disk")
  with pytest.raises(ValueError, match=r"--input s3://media/nothing: no such folder"):
    prepare(["image_folder", "--input", f"{bucket}/nothing", "--output", str(tmp_path / "x")])


def test_arrayrecord_data_in_s3_is_read_through_a_refreshed_local_copy(s3_emulator, tmp_path,
                                                                       monkeypatch):
  """source="arrayrecord" with directory=s3://: read from a local copy (array_record cannot
  open s3://) whose objects are fetched again when the folder is prepared anew, and removed
  when deleted from the bucket."""
  from imp.data import load_source
  from imp.data.prepare import main as prepare

  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  _write_image_folder(tmp_path / "raw", per_class=3)
  data = s3_emulator.make_bucket("prepared") + "/digits"

  def examples(directory):
    split = load_source("d", dict(source="arrayrecord", directory=str(directory))).split("test")
    return [split[i]["image"].tobytes() for i in range(len(split))]

  copy = tmp_path / "cache/imp/buckets/s3/prepared/digits"
  paths.write_text(f"{data}/notes.txt", "deleted before the second read")
  for seed in ("1", "2"):  # the second prepare replaces the first in the bucket
    flags = ["--test-fraction", "0.5", "--seed", seed, "--overwrite"]
    prepare(["image_folder", "--input", str(tmp_path / "raw"), "--output", data, *flags])
    prepare(["image_folder", "--input", str(tmp_path / "raw"), "--output",
             str(tmp_path / seed), *flags])
    assert examples(data) == examples(tmp_path / seed)
    assert (copy / "test.array_record").is_file()
    assert (copy / "notes.txt").exists() == (seed == "1")
    paths.as_path(f"{data}/notes.txt").unlink(missing_ok=True)
  assert examples(tmp_path / "1") != examples(tmp_path / "2")  # the copy was refreshed


def test_s3_metrics_tensorboard_and_plots(s3_emulator):
  """Metric segments (a value JSON cannot hold among them), TensorBoard events and plots go
  to s3:// and read back (TensorBoard reads them itself)."""
  from imp.analysis.plots import save_figure
  from imp.run.metric_writers import MetricWriter

  run = paths.as_path(s3_emulator.make_bucket("plots") + "/smoke")
  writer = MetricWriter(run)
  for step in (2, 4):
    writer.write(step, {"digits_cls/base/loss": 2.0 / step, "odd": float("nan")})
  writer.close()
  assert [(r["step"], r["digits_cls/base/loss"], r["odd"]) for r in read_metrics(run)] == [
      (2, 1.0, "nan"), (4, 0.5, "nan")]
  assert _event_scalars(str(run / "tensorboard")) == {"train/digits_cls/base/loss"}
  import matplotlib.pyplot as plt

  figure = save_figure(plt.figure(), run / "analysis" / "plot.png")
  assert figure.read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_two_processes_sharing_only_a_bucket_match_one_process(gcs_emulator, tmp_path):
  """(d) 2 processes whose one shared storage is the bucket (the run's workdir, checkpoints
  and compilation cache) end on the parameters and evaluation of 1 local process."""
  from test_multiprocess import TINY, _assert_close, _run, _state

  one, two = tmp_path / "one", gcs_emulator.make_bucket("pod") + "/run"
  _run(1, 8, one, *TINY)
  _run(2, 4, two, *TINY, log_dir=tmp_path / "two_logs")  # local: the launcher writes them
  _assert_close(_state(one), _state(two))
  summaries = [json.loads((paths.as_path(w) / "summary.json").read_text()) for w in (one, two)]
  assert summaries[0]["task_steps"] == summaries[1]["task_steps"]
  for name, value in summaries[0]["eval"].items():  # within one of the 360 test examples
    assert abs(summaries[1]["eval"][name] - value) <= 1 / 360 + 1e-9, name
  assert [r["step"] for r in read_metrics(one)] == [r["step"] for r in read_metrics(two)]
  assert not (ROOT / "gs:").exists()
