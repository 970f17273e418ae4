"""Every accuracy and retrieval bar of the end-to-end tests is one the untrained model misses:
each test's config, evaluated at step 0 (its freshly initialised parameters) by the same eval
suite, fails each bar that test asserts after training. Bar families: zero-shot top-1
(digits, Fashion-MNIST), classifier top-1 (video clips, Uni-Perceiver-MoE, M3SAT, spoken
digits), linear probe and retrieval R@1 (audio-visual digits)."""

from pathlib import Path

import pytest
import test_av_digits
import test_data_inputs
import test_default_experiment
import test_main
import test_moe_presets
import test_paper_configs
from conftest import missed_bars, set_dotted, tiny_digits_config, untrained_evals

from experiments.av_digits import get_config as av_digits
from experiments.m3sat import get_config as m3sat
from experiments.uniperceiver_moe_ti import get_config as uniperceiver
from imp.config.digits import get_config as digits
from imp.data.idx_source import FASHION_MNIST_DIR

needs_fashion = pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(),
                                   reason="Debian's dataset-fashion-mnist is not installed")


def _misses_all(evals, bars):
  return missed_bars(evals, bars).keys() == bars.keys()


def test_untrained_digits_models_miss_the_zero_shot_and_probe_bars(tmp_path):
  small = untrained_evals(tiny_digits_config(), tmp_path / "small")  # test_main's model
  assert _misses_all(small, test_main.BARS), small
  default = untrained_evals(digits(), tmp_path / "default")
  assert _misses_all(default, test_default_experiment.BARS), default
  # Raw pixels beat random features: the default experiment's relative bar fails too.
  assert default["digits/linear_probe_top1"] < default["digits/raw_pixel_probe_top1"], default


def test_untrained_video_model_misses_the_classifier_bar(tmp_path):
  evals = untrained_evals(test_data_inputs.video_clips_config(tmp_path, 40), tmp_path / "run")
  assert _misses_all(evals, test_data_inputs.VIDEO_BARS), evals


@pytest.mark.slow  # 10,000 test images
@needs_fashion
def test_untrained_fashion_and_uniperceiver_models_miss_their_bars(tmp_path):
  fashion = untrained_evals(test_paper_configs.fashion_smoke(), tmp_path / "fashion")
  assert _misses_all(fashion, test_paper_configs.FASHION_BARS), fashion
  config = set_dotted(uniperceiver("smoke"), test_moe_presets.UNIPERCEIVER_TRAIN)
  evals = untrained_evals(config, tmp_path / "uniperceiver")
  assert _misses_all(evals, test_moe_presets.UNIPERCEIVER_BARS), evals


@pytest.mark.slow
def test_untrained_av_models_miss_the_probe_classifier_and_retrieval_bars(
    tmp_path, av_digits_folders):
  evals = untrained_evals(test_av_digits._point_at(av_digits(), av_digits_folders),
                          tmp_path / "av")
  assert _misses_all(evals, test_av_digits.BARS), evals
  evals = untrained_evals(test_av_digits._point_at(m3sat("smoke"), av_digits_folders),
                          tmp_path / "m3sat")
  assert _misses_all(evals, test_moe_presets.M3SAT_BARS), evals
