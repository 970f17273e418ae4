"""Test set-up: CPU unless JAX_PLATFORMS says otherwise (`JAX_PLATFORMS=cuda` runs the GPU-only
tests on a GPU). `slow` marks the full default experiment (run with `-m slow`)."""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# imp's default compilation cache is the user's (~/.cache/imp/jax): tests share one of their own
# per session (per xdist worker; subprocesses inherit it), never the user's, and remove it.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="imp-tests-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)


def tiny_digits_config(total_steps=12, **overrides):
  """The digits smoke config at 1 layer of width 32; overrides by dotted key, e.g.
  **{"sampling.schedule": "weighted_sum"}."""
  from imp.config.digits import get_config  # after JAX_PLATFORMS is set above

  config = get_config("smoke")
  config.total_steps = total_steps
  config.log_every = 2
  config.eval_every = 0
  config.checkpoint_every = 4
  config.model.depth = 1
  config.model.width = 32
  config.model.mlp_dim = 64
  return set_dotted(config, overrides)


def set_dotted(config, overrides):
  """`config` with each {"a.b": value} of `overrides` set, as `--config.a.b=value` would."""
  for key, value in overrides.items():
    node = config
    *path, last = key.split(".")
    for part in path:
      node = node[part]
    node[last] = value
  return config


def missed_bars(evals, bars):
  """{metric: value} of each bar in `bars` ({metric: threshold}) that `evals` does not beat."""
  return {name: evals[name] for name, bar in bars.items() if not evals[name] > bar}


def untrained_evals(config, workdir):
  """The eval suite of `config` on its 0-step model (the freshly initialised parameters): the
  baseline each end-to-end bar must be above (tests/test_bars.py)."""
  from imp import experiment

  run = experiment.build(config, workdir)
  try:
    return experiment.evaluate_params(run, run.state.params)
  finally:
    run.checkpointer.close()


@pytest.fixture(scope="session")
def av_digits_folders(tmp_path_factory) -> dict[str, str]:
  """The audio-visual digits folders (imp/data/spoken_digits.py), built once per session:
  {"images": dir, "spoken": dir}. Skips without espeak-ng, which synthesises the speech."""
  from imp.data import spoken_digits

  if spoken_digits.espeak_binary() is None:
    pytest.skip("espeak-ng is not installed (Debian: apt-get install espeak-ng); it "
                "synthesises the spoken digits")
  return spoken_digits.main(["--output", str(tmp_path_factory.mktemp("av_digits"))])


def _emulator_fixture(make):
  """A session's emulator: started once, its client variables set for this process and its
  subprocesses, stopped (and the variables restored) at the end of the session."""

  @pytest.fixture(scope="session")
  def emulator():
    from storage_emulators import running

    with running(make) as server:
      yield server

  return emulator


def _fake_gcs():
  from storage_emulators import FakeGcs

  return FakeGcs()


def _moto_s3():
  from storage_emulators import MotoS3

  return MotoS3()


gcs_emulator = _emulator_fixture(_fake_gcs)  # fake-gcs-server on 127.0.0.1 (gs://)
s3_emulator = _emulator_fixture(_moto_s3)  # moto's S3 server on 127.0.0.1 (s3://)
