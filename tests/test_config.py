"""Bad configs fail before any compile, with a message naming the key and the valid values."""

import contextlib
from pathlib import Path

import numpy as np
import pytest

from imp import experiment
from imp.config.digits import get_config


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


def test_schema_declares_every_key_the_readers_accept():
  """The schema is the one declaration: each section's readers accept exactly its keys."""
  from imp.config import schema
  from imp.evaluate import suite
  from imp.model import ModelConfig, MoeConfig
  from imp.plan import config_keys, plan
  from imp.step import state
  from imp.tasks import registry

  # The readers take their key lists from the schema (never a copy): each section's list is
  # what the schema declares under it.
  assert "warmup_steps" in state._OPTIMIZER_KEYS and "zero_shot" in suite._EVAL_KEYS
  assert "drop_token" in registry._VARIANT_KEYS and "loss_weight" in registry._TASK_KEYS
  assert schema.keys_of("") == plan.CONFIG_KEYS and "total_steps" in plan.CONFIG_KEYS
  keys = {k.path for k in config_keys.all_keys()}
  assert {f"model.{f}" for f in ModelConfig.__dataclass_fields__} <= keys
  assert {f"model.moe.{f}" for f in MoeConfig.__dataclass_fields__} <= keys
  undocumented = [k.path for k in config_keys.all_keys() if not k.doc]
  assert not undocumented, undocumented
  lines = config_keys.describe(get_config())
  assert "total_steps = 4000  [int, default '(required)']  train steps (one task each under AGD)" \
      in lines
  assert any(line.startswith("tasks.digits_cls.variants.hires.batch_size = 16") for line in lines)
  assert any(line.startswith("model.moe.num_experts = '(unset)'  [int, default 0]")
             for line in lines)


def test_experiment_arguments_share_one_parser():
  from imp.config.variants import parse_arg

  assert parse_arg("smoke, chips=8", "x.py", words=("smoke",), settings={"chips": int}) == {
      "smoke": True, "chips": 8}
  assert parse_arg(None, "x.py", words=("smoke",)) == {}
  with pytest.raises(ValueError, match=r"x.py: unknown option 'big'; valid: smoke, "
                                       r"chips=<int> \(comma-separated\)"):
    parse_arg("big", "x.py", words=("smoke",), settings={"chips": int})
  with pytest.raises(ValueError, match=r"x.py: mode='c'; valid: a, b"):
    parse_arg("mode=c", "x.py", settings={"mode": ("a", "b")})
  with pytest.raises(ValueError, match=r"options 'short', 'long' exclude each other"):
    parse_arg("short,long", "x.py", words=("short", "long"), exclusive=(("short", "long"),))
  with pytest.raises(ValueError, match=r"experiments/digits.py: unknown option 'smok'"):
    get_config("smok")


@pytest.mark.parametrize("value, kind, problem", [
    (3, "int", None), (True, "int", "must be int, not bool"),
    (2.5, "int", "must be int, not float"), (2, "float", None), (None, "float | None", None),
    ("a", "int|None", "must be int | None, not str"), ((1, 2), "(int, int)|None", None),
    ([1, 2, 3], "tuple[int, int, int]", None), (4, "int|(int, int)|None", None),
    ("x", "tuple[str]", "must be tuple[str], not str"),
    ({"image": 1.0}, "tuple[tuple[str, float], ...]", None),  # a dict for (name, value) pairs
    ({"k": 1}, "dict|None", None), ([1], "dict", "must be dict, not list"),
    ("anything", "Any", None), ("example", "str | int", None),
    (1.5, "str | int", "must be str | int, not float"), (np.int64(3), "int", None),
    (np.float32(0.5), "float", None), (np.bool_(True), "bool", None),
    (np.bool_(True), "int", "must be int, not bool"),
])
def test_type_problem_on_hand_written_cases(value, kind, problem):
  from imp.config import schema

  assert schema.type_problem(value, kind) == problem


def test_every_shipped_experiment_has_the_declared_types():
  """The check runs on every config a run loads (imp.plan.plan.check_config): no shipped
  experiment, nor its smoke variant, may trip it."""
  from imp.config import files, schema
  from imp.plan import config_keys

  checked = 0
  for path in sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.py")):
    module = files.load(path)
    configs = [module.get_config()]
    with contextlib.suppress(ValueError):  # an experiment without a variant named "smoke"
      configs.append(module.get_config("smoke"))
    for config in configs:
      schema.check_types(config, config_keys.all_keys())
      checked += 1
  assert checked >= 20
