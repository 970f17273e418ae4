"""A corrupt checkpoint does not cost the run: verify, set aside, resume from the newest intact
one; config.restore_step picks one by hand; checksums catch silently changed arrays."""

import logging
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_digits_config

from imp import experiment
from imp.step import checksums
from imp.step.checkpoint import CheckpointError


def _config(**overrides):
  return tiny_digits_config(total_steps=8, **overrides)  # checkpoints at steps 4 and 8


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished 8-step run (checkpoints 4 and 8) and its final parameters."""
  workdir = tmp_path_factory.mktemp("straight")
  experiment.train(_config(), workdir)
  return workdir, _params(_config(), workdir)


def _params(config, workdir):
  exp = experiment.build(config, workdir)
  state, _ = exp.checkpointer.restore(exp.state)
  exp.checkpointer.close()
  return jax.device_get(state.params)


def _copy(finished_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished_run[0], workdir, ignore=shutil.ignore_patterns("compilation_cache"))
  return workdir


def _array_files(step_dir):
  files = (p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d")
  return sorted(files, key=lambda p: p.stat().st_size)


def _flip_bytes(path, start, count=64):
  data = bytearray(path.read_bytes())
  for i in range(start, min(start + count, len(data))):
    data[i] ^= 0xFF
  path.write_bytes(bytes(data))


CORRUPTIONS = {
    # Bit rot in the middle of the largest array file: a decode error or a checksum mismatch.
    "array_bytes": (lambda d: _flip_bytes(_array_files(d)[-1],
                                          _array_files(d)[-1].stat().st_size // 2),
                    "state arrays"),
    # A torn copy of the array file's start: zstd cannot decode it.
    "array_header": (lambda d: _flip_bytes(_array_files(d)[-1], 0), "state arrays"),
    "meta_json": (lambda d: (d / "meta" / "metadata").write_text('{"sampler": {"se'),
                  "meta/metadata: JSONDecodeError"),
    "state_metadata": (lambda d: (d / "state" / "_METADATA").write_text("{"),
                       "state/_METADATA: JSONDecodeError"),
    "missing_meta": (lambda d: (d / "meta" / "metadata").unlink(),
                     "meta/metadata: FileNotFoundError"),
    "missing_array_file": (lambda d: _array_files(d)[-1].unlink(), "state arrays"),
}


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_corrupt_newest_checkpoint_is_set_aside_and_the_older_one_restored(
    finished_run, tmp_path, caplog, how):
  workdir = _copy(finished_run, tmp_path)
  corrupt, reason = CORRUPTIONS[how]
  corrupt(workdir / "checkpoints" / "8")
  exp = experiment.build(_config(), workdir)
  with caplog.at_level(logging.WARNING, logger="imp.checkpoint"):
    state, meta = exp.checkpointer.restore(exp.state, shardings=exp.shardings)
  exp.checkpointer.close()
  assert int(state.step) == 4 and "sampler" in meta and "checksums" not in meta
  lines = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
  assert len(lines) == 1 and "\n" not in lines[0], lines
  assert lines[0].startswith("checkpoint step 8 is unreadable") and "trying step 4" in lines[0]
  if how == "array_bytes":
    assert "state arrays" in lines[0] or "checksum differs" in lines[0], lines[0]
  else:
    assert reason in lines[0], lines[0]
  # Set aside, never deleted: the files are all there, outside orbax's directory.
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["4"]
  moved = workdir / "checkpoints_corrupt" / "8"
  assert (moved / "state").is_dir() and str(moved) in lines[0]


def test_training_resumes_past_a_corrupt_checkpoint_to_the_straight_runs_parameters(
    finished_run, tmp_path):
  workdir = _copy(finished_run, tmp_path)
  _flip_bytes(_array_files(workdir / "checkpoints" / "8")[-1], 0)
  summary = experiment.train(_config(), workdir)
  assert summary["steps_this_run"] == 4 and summary["steps"] == 8  # resumed from step 4
  jax.tree.map(np.testing.assert_array_equal, finished_run[1], _params(_config(), workdir))


def test_restore_step_picks_a_checkpoint_by_hand(finished_run, tmp_path):
  workdir = _copy(finished_run, tmp_path)
  exp = experiment.build(_config(restore_step=4), workdir)
  state, _ = exp.checkpointer.restore(exp.state)
  exp.checkpointer.close()
  assert int(state.step) == 4


def test_restore_step_that_does_not_exist_names_the_valid_steps(finished_run, tmp_path):
  workdir = _copy(finished_run, tmp_path)
  with pytest.raises(experiment.ConfigError,
                     match=r"config.restore_step=5: no checkpoint of step 5 in .*; valid: 4, 8\."):
    experiment.train(_config(restore_step=5), workdir)


def test_restore_step_of_a_corrupt_checkpoint_stops_and_moves_nothing(finished_run, tmp_path):
  workdir = _copy(finished_run, tmp_path)
  (workdir / "checkpoints" / "8" / "meta" / "metadata").write_text("[")
  exp = experiment.build(_config(restore_step=8), workdir)
  with pytest.raises(CheckpointError, match=r"config.restore_step=8: .* is unreadable: "
                     r"meta/metadata: JSONDecodeError.*Other steps: 4\."):
    exp.checkpointer.restore(exp.state)
  exp.checkpointer.close()
  assert (workdir / "checkpoints" / "8").is_dir()
  assert not (workdir / "checkpoints_corrupt").exists()


def test_checksums_change_with_one_bit_and_with_swapped_elements():
  tree = {"w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4), "b": jnp.ones(3, jnp.bfloat16),
          "n": jnp.int32(7), "rng": jnp.array([1, 2], jnp.uint32), "mask": jnp.array([True])}
  saved = checksums.checksums(tree)
  assert checksums.mismatches(tree, saved) == []
  # Hand-derived: the plain sum of the words of [1, 2] is 3.
  assert saved["rng"][0] == 3
  one_bit = np.asarray(tree["w"]).copy()
  one_bit.view(np.uint32)[2, 1] ^= 1  # the lowest mantissa bit of one element
  assert checksums.mismatches(dict(tree, w=jnp.asarray(one_bit)), saved) == ["w"]
  swapped = np.asarray(tree["w"])[[1, 0, 2]]  # same values, two rows exchanged
  assert checksums.mismatches(dict(tree, w=jnp.asarray(swapped)), saved) == ["w"]
  assert checksums.mismatches(dict(tree, b=tree["b"] * 2), saved) == ["b"]


def test_best_checkpoint_is_restored_when_every_numbered_one_is_unreadable(
    finished_run, tmp_path, caplog):
  workdir = _copy(finished_run, tmp_path)
  best = [p.name for p in (workdir / "checkpoints_best").iterdir() if p.name.isdigit()]
  assert best == ["8"]  # the smoke config keeps the best checkpoint of its final evaluation
  for step in ("4", "8"):
    CORRUPTIONS["meta_json"][0](workdir / "checkpoints" / step)
  exp = experiment.build(_config(), workdir)
  with caplog.at_level(logging.WARNING, logger="imp.checkpoint"):
    state, meta = exp.checkpointer.restore(exp.state, shardings=exp.shardings)
  exp.checkpointer.close()
  assert int(state.step) == 8 and "sampler" in meta
  assert "resuming from the best checkpoint, step 8" in caplog.text
