r"""Peak host memory of the eval suite on a prepared image folder (issue 19's bounded memory).

  python -m benchmarks.eval_memory make-data --output /tmp/eval_mem   # 20,000 images 64x64x3
  python -m benchmarks.eval_memory measure --data /tmp/eval_mem/prep [--no-raw-probe]

`measure` runs one evaluation (a classifier entry and a linear-probe entry on the same
dataset, batch 128) in this process with a fixed JAX stand-in for the model (8x8 patches
mean-pooled and projected to 16 features; logits from those), and prints the process's peak
resident memory (ru_maxrss) before and after the evaluation. The probes' scikit-learn fits are
replaced by a stand-in that only converts its inputs to float64 as `linear_probe` does (the
fits grow with the matrices they are given, and fitting 12,288 raw pixels per image takes many
minutes on 2 cores). Run from the root of the checkout to measure (it imports that `imp`), so
the same command measures an older commit from an exported copy of it. No timing asserted.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def _peak_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_data(output: Path, images: int, size: int) -> None:
  """`images` PNGs of size x size x 3 in two classes (dark / bright noise), then prepared."""
  import numpy as np
  from PIL import Image

  rng = np.random.default_rng(0)
  for i in range(images):
    label = ("dark", "bright")[i % 2]
    folder = output / "images" / label
    folder.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 128, (size, size, 3)) + 127 * (i % 2)
    Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
  subprocess.run([sys.executable, "-m", "imp.data.prepare", "image_folder", "--input",
                  str(output / "images"), "--output", str(output / "prep"), "--test-fraction",
                  "0.5"], check=True)


def measure(data: Path, raw_probe: bool) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from imp.data import load_source
  from imp.evaluate import suite as suite_module
  from imp.evaluate.linear_probe import ProbeResult

  shapes = []

  def probe_stand_in(train_x, train_y, test_x, test_y):
    shapes.append((np.asarray(train_x, np.float64).shape, np.asarray(test_x, np.float64).shape))
    return ProbeResult(accuracy=0.0, l2=1.0, cv_accuracy=0.0)

  suite_module.linear_probe = probe_stand_in
  source = load_source("images", dict(source="arrayrecord", directory=str(data)))
  rng = np.random.default_rng(0)
  w_features = jnp.asarray(rng.standard_normal((8 * 8 * 3, 16)), jnp.float32)
  w_logits = jnp.asarray(rng.standard_normal((16, source.num_classes)), jnp.float32)

  @jax.jit
  def model(image):  # [B, 64, 64, 3] -> features [B, 16], logits [B, classes]
    b, h, w, c = image.shape
    patches = image.reshape(b, h // 8, 8, w // 8, 8, c).transpose(0, 1, 3, 2, 4, 5)
    features = jnp.tanh(patches.reshape(b, -1, 8 * 8 * c) @ w_features).mean(axis=1)
    return features, features @ w_logits

  def infer(request, batch):
    features, logits = model(np.asarray(batch["image"]))
    return {"features/image": np.asarray(features), "embedding/image": np.asarray(features),
            f"logits/{source.name}": np.asarray(logits)}

  evals = {"head": dict(dataset="images", modality="image", resolution=64, batch_size=128,
                        zero_shot=False, linear_probe=False, classifier=True),
           "probe": dict(dataset="images", modality="image", resolution=64, batch_size=128,
                         zero_shot=False, linear_probe=True)}
  if not raw_probe:
    evals["probe"]["raw_probe"] = False
  suite = suite_module.EvalSuite(evals, {"images": source})
  before = _peak_mib()
  start = time.perf_counter()
  results = suite.run(infer)
  seconds = time.perf_counter() - start
  print(f"examples: train {len(source.split('train'))}, test {len(source.split('test'))}; "
        f"probe inputs (train, test): {shapes}")
  print(f"results: {results}")
  print(f"peak host memory: {before:.0f} MiB before the evaluation, {_peak_mib():.0f} MiB "
        f"after; evaluation {seconds:.1f} s (pid {os.getpid()})")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  make = sub.add_parser("make-data")
  make.add_argument("--output", type=Path, required=True)
  make.add_argument("--images", type=int, default=20000)
  make.add_argument("--size", type=int, default=64)
  run = sub.add_parser("measure")
  run.add_argument("--data", type=Path, required=True)
  run.add_argument("--no-raw-probe", action="store_true",
                   help="evals.probe.raw_probe=False (commits before issue 19 have no such key)")
  args = parser.parse_args(argv)
  if args.command == "make-data":
    make_data(args.output, args.images, args.size)
  else:
    measure(args.data, raw_probe=not args.no_raw_probe)


if __name__ == "__main__":
  main()
