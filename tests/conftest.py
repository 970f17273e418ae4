"""Test set-up: CPU only. `slow` marks the full default experiment (run with `-m slow`)."""

import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="session")
def av_digits_folders(tmp_path_factory) -> dict[str, str]:
  """The audio-visual digits folders (imp/data/spoken_digits.py), built once per session:
  {"images": dir, "spoken": dir}. Skips without espeak-ng, which synthesises the speech."""
  from imp.data import spoken_digits

  if spoken_digits.espeak_binary() is None:
    pytest.skip("espeak-ng is not installed (Debian: apt-get install espeak-ng); it "
                "synthesises the spoken digits")
  return spoken_digits.main(["--output", str(tmp_path_factory.mktemp("av_digits"))])
