"""Bad configs fail before any compile, with a message naming the key and the valid values."""

import pytest

from imp.configs.digits import get_config
from imp.train import loop


def _build(tmp_path, mutate):
  config = get_config("smoke")
  mutate(config)
  return loop.build(config, tmp_path)


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
])
def test_bad_config_names_key_and_valid_values(tmp_path, mutate, message):
  def unlocked(config):
    with config.unlocked():
      mutate(config)

  with pytest.raises(ValueError, match=message):
    _build(tmp_path, unlocked)


def test_default_config_builds(tmp_path):
  exp = loop.build(get_config(), tmp_path)
  assert exp.registry.names == ("digits_cls/base", "digits_cls/hires", "digits_label_nce/base",
                                "digits_label_nce/hires")
  assert sum(exp.registry.weights) == pytest.approx(1.0)
