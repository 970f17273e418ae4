"""Bad configs fail before any compile, with a message naming the key and the valid values."""

import pytest

from imp import experiment
from imp.configs.digits import get_config


def _build(tmp_path, mutate):
  config = get_config("smoke")
  mutate(config)
  return experiment.build(config, tmp_path)


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.__setattr__("total_step", 5), r"config.total_step is not a config key"),
    (lambda c: c.model.__setitem__("depht", 2), r"model.depht is not a model setting"),
    (lambda c: c.optimizer.__setitem__("name", "lion"),
     r"optimizer.name='lion'; valid: adam, adamw"),
    (lambda c: c.optimizer.__setitem__("lr", 1.0), r"optimizer.lr is not an optimizer setting"),
    (lambda c: c.tasks.digits_cls.__setattr__("dataset", "mnist"),
     r"tasks.digits_cls.dataset='mnist' is not a known dataset; valid datasets: digits"),
    (lambda c: c.tasks.digits_cls.args.__setattr__("smoothing", 0.1),
     r"tasks.digits_cls.args.smoothing is not an argument of objective 'softmax'"),
    (lambda c: c.evals.digits.__setattr__("dataset", "cifar"),
     r"evals.digits.dataset='cifar' is not in config.datasets"),
    (lambda c: c.datasets.digits.__setattr__("source", "cifar10"),
     r"datasets.digits.source='cifar10' is not a known source"),
    (lambda c: c.tasks.digits_cls.variants.hires.__setattr__("resolution", 15),
     r"tasks.digits_cls.variants.hires.resolution=\(15, 15\) is not divisible by the patch "
     r"model.vision_patch\[1:\]=\(2, 2\)"),
    (lambda c: c.tasks.digits_label_nce.variants.base.__setattr__("text_length", 64),
     r"tasks.digits_label_nce.variants.base.text_length=64 exceeds model.text_max_length=24"),
    (lambda c: c.__setattr__("nonfinite", dict(policy="ignore")),
     r"config.nonfinite.policy='ignore'; valid: skip, stop"),
    (lambda c: c.__setattr__("checkpoint_best_metric", "digits/top5"),
     r"config.checkpoint_best_metric='digits/top5' is not an eval result; valid: "
     r"digits/zero_shot_top1, digits/linear_probe_top1, digits/raw_pixel_probe_top1"),
])
def test_bad_config_names_key_and_valid_values(tmp_path, mutate, message):
  def unlocked(config):
    with config.unlocked():
      mutate(config)

  with pytest.raises(ValueError, match=message):
    _build(tmp_path, unlocked)


def test_default_config_builds(tmp_path):
  exp = experiment.build(get_config(), tmp_path)
  assert exp.registry.names == ("digits_cls/base", "digits_cls/hires", "digits_label_nce/base",
                                "digits_label_nce/hires")
  assert sum(exp.registry.weights) == pytest.approx(1.0)


def test_mesh_must_match_the_devices(tmp_path):
  config = get_config("smoke")
  config.mesh = dict(data=2)
  with pytest.raises(ValueError, match=r"config.mesh=\{'data': 2\} has 2 devices, but this run "
                                       r"has 1"):
    experiment.build(config, tmp_path)
