"""The audio-visual experiment's input pipeline: alone, and in a short training run.

  PYTHONPATH=. python -m benchmarks.av_input_pipeline IMAGES_DIR SPOKEN_DIR [STEPS] [PIPE_STEPS]

IMAGES_DIR and SPOKEN_DIR are the prepared folders of `experiments/av_digits.py`. Prints (1)
the wall and process CPU milliseconds per step of pulling PIPE_STEPS (200) batches in the
loop's task order from the loop's grain iterators, with no training (after 20 warm-up
batches), and (2) steps/s and `data_wait_share` of a STEPS-step (300) run without
evaluation (STEPS=0: none). Not in `benchmarks.run`: it needs the prepared folders.
Figures: docs/data.md.
"""

from __future__ import annotations

import importlib.util
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from imp import experiment as imp_experiment


def config(images: str, spoken: str, steps: int):
  spec = importlib.util.spec_from_file_location("av_digits", "experiments/av_digits.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.datasets.images.directory, c.datasets.spoken.directory = images, spoken
  c.eval_every, c.total_steps, c.checkpoint_every = 0, steps, steps
  c.evals = {}
  return c


def _cpu() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
  return usage.ru_utime + usage.ru_stime


def main(argv: list[str]) -> None:
  images, spoken = argv[0], argv[1]
  steps = int(argv[2]) if len(argv) > 2 else 300
  pipe_steps = int(argv[3]) if len(argv) > 3 else 200
  root = Path(tempfile.mkdtemp())
  exp = imp_experiment.build(config(images, spoken, steps), root / "pipeline")
  iterators = imp_experiment.task_iterators(exp)
  names = [exp.registry[i].name for i in exp.sampler.schedule(0, pipe_steps + 20).tolist()]
  for name in names[:20]:  # warm-up: every iterator started
    iterators.next(name)
  wall, cpu = time.perf_counter(), _cpu()
  for name in names[20:]:
    iterators.next(name)
  wall, cpu = time.perf_counter() - wall, _cpu() - cpu
  print(json.dumps({"pipeline_alone_ms_per_step": 1e3 * wall / pipe_steps,
                    "pipeline_alone_cpu_ms_per_step": 1e3 * cpu / pipe_steps}), flush=True)
  del iterators, exp
  if steps == 0:  # the pipeline alone
    return
  summary = imp_experiment.train(config(images, spoken, steps), root / "train")
  print(json.dumps({k: summary[k] for k in ("steps_this_run", "steps_per_second",
                                            "data_wait_share")}), flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
