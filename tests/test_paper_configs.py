"""Paper-size configs: their models build abstractly with the paper's parameter counts."""

import functools
from pathlib import Path

import flax.linen as nn
import jax
import pytest

from experiments.fashion_mnist import get_config as fashion_mnist
from experiments.imp_moe_b import get_config as imp_moe_b
from imp.analysis.param_count import count_params
from imp.data.idx_source import FASHION_MNIST_DIR
from imp.model import IMPModel, ModelConfig
from imp.train import loop


def _abstract_params(config, modalities=("image", "text")):
  model_config = ModelConfig.from_config(config.model)
  model = IMPModel(model_config, heads=(("imagenet", 1000),), modalities=modalities)
  inputs = {m: model_config.dummy_input(m) for m in modalities}
  init = functools.partial(model.init, request=model.init_request())
  return nn.unbox(jax.eval_shape(init, jax.random.PRNGKey(0), inputs)["params"])


def test_imp_moe_b_has_the_papers_parameters_per_token():
  counts = count_params(_abstract_params(imp_moe_b()), num_experts=16, experts_per_token=1.0)
  # IMP Table 1: IMP-MoE-B has 90M parameters per token.
  assert counts["per_token"] == pytest.approx(90e6, rel=0.05), counts
  # 6 MoE layers x 16 experts x (768*3072*2 + 3072 + 768) expert parameters.
  assert counts["experts"] == 6 * 16 * (2 * 768 * 3072 + 3072 + 768)


def test_count_params_per_token_arithmetic():
  params = {"dense": jax.ShapeDtypeStruct((10, 10), "float32"),
            "moe": {"experts": {"wi": jax.ShapeDtypeStruct((4, 10, 5), "float32")}}}
  # 100 dense + 200 expert parameters; one of 4 experts per token -> 100 + 50.
  assert count_params(params, num_experts=4) == {"total": 300, "per_token": 150,
                                                 "experts": 200}
  assert count_params(params, num_experts=4, experts_per_token=2)["per_token"] == 200


def test_imp_moe_b_without_prepared_data_fails_clearly(tmp_path):
  config = imp_moe_b()
  config.datasets.imagenet.data_dir = str(tmp_path / "tfds")
  with pytest.raises(ValueError, match=r"datasets.imagenet.tfds_name='imagenet2012'"):
    loop.build(config, tmp_path / "work")


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_experiment_trains(tmp_path):
  summary = loop.train(fashion_mnist("smoke"), tmp_path)
  assert summary["steps"] == 8 and len(summary["task_steps"]) >= 2
  assert 0.0 <= summary["eval"]["fashion/zero_shot_top1"] <= 1.0
