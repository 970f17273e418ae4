"""docs/own_data.md's first-try commands, run as written from a folder outside the clone:
folder of PNGs -> prepare -> train (experiments/image_folder.py:smoke) -> imp.evaluate ->
plots, and the notebook lines of the same page."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "own_data.md"


def doc_commands() -> list[list[str]]:
  """The commands of the ```bash block after the doc's "tests/test_own_data.py runs" note."""
  text = DOC.read_text()
  block = re.search(r"tests/test_own_data\.py runs.*?```bash\n(.*?)```", text, flags=re.S)
  return [shlex.split(line) for line in block.group(1).splitlines() if line.strip()]


def write_photos(root: Path) -> None:
  """photos/{circles,squares}/: six 40x40 PNGs each, told apart by their hue."""
  rng = np.random.default_rng(0)
  for name, hue in (("circles", 40), ("squares", 200)):
    (root / "photos" / name).mkdir(parents=True)
    for i in range(6):
      y, x = np.mgrid[0:40, 0:40]
      image = np.stack([np.full_like(x, hue), 6 * x, 6 * y], -1) + rng.normal(0, 8, (40, 40, 3))
      Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
          root / "photos" / name / f"{i}.png")


def notebook_lines(path: Path) -> str:
  """The ```python block that calls experiment.train in `path`."""
  blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
  return next(b for b in blocks if "experiment.train(" in b)


def test_the_documented_commands_run_as_written(tmp_path):
  write_photos(tmp_path)
  commands = doc_commands()
  assert [c[:3] for c in commands] == [["python", "-m", "imp.data.prepare"],
                                       ["python", "-m", "imp.main"],
                                       ["python", "-m", "imp.evaluate"]]
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  outputs = []
  for command in commands:
    run = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, " ".join(command) + "\n" + run.stderr[-3000:]
    outputs.append(run.stdout + run.stderr)
  doc = " ".join(DOC.read_text().split())  # the doc's printed lines, however wrapped
  assert "found 2 classes: circles (6), squares (6)" in outputs[0]
  assert ("prepared image_folder photos -> data/photos: train 10, test 2 examples, 2 classes, "
          "fields image uint8 [32, 32, 3], label int32 []") in outputs[0]
  for line in outputs[0].splitlines():
    assert line in doc, line
  workdir = tmp_path / "workdirs" / "photos"
  assert "plots in the workdir: analysis/loss_curves.png" in outputs[1]
  for plot in ("loss_curves", "eval_metrics", "task_counts"):
    assert (workdir / "analysis" / f"{plot}.png").stat().st_size > 1000
  results = json.loads((workdir / "evaluation.json").read_text())
  assert results["step"] == 8 and set(results["results"]) == {
      "photos/zero_shot_top1", "photos/linear_probe_top1", "photos/raw_pixel_probe_top1"}
  assert "| photos | zero_shot_top1 |" in outputs[2]

  # The notebook lines (the same in README.md), from the same folder: the run is finished,
  # so train() evaluates its final checkpoint and returns the summary.
  lines = notebook_lines(DOC)
  assert lines == notebook_lines(ROOT / "README.md")
  run = subprocess.run([sys.executable, "-c", lines], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "'photos/zero_shot_top1':" in run.stdout, run.stdout[-2000:]
