"""Evaluation with merged experts (Uni-Perceiver-MoE §3.3, `evals.<entry>.merge_experts`).

Under a data-independent routing condition every token of an encoder pass gets the same
experts and gates, so each MoE layer equals one dense layer whose weights are the chosen
experts merged (imp.model.expert_merge). The merged model must give the routed model's outputs
and metrics, hold the parameters of a dense model of hidden width k * H, and be refused where
the routing depends on the tokens.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_digits_config

from imp.model import IMPModel, ModelConfig, MoeConfig, Request
from imp.plan.param_count import count_params, merged_param_count
from imp.plan.plan import ConfigError, DatasetFacts, build_plan
from imp.step.state import logical_axes

FACTS = {"digits": DatasetFacts(1437, 10, ("image", "text"), 258)}
IMAGE = jnp.asarray(np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1)), jnp.uint8)
TEXT = jnp.asarray(np.random.default_rng(1).integers(1, 200, (3, 6)), jnp.int32)


def _model(scan_layers=True, **moe):
  moe = MoeConfig.from_config(dict(num_experts=4, router="top_k", router_args=dict(k=2),
                                   **moe))
  config = ModelConfig(width=16, depth=2, num_heads=2, mlp_dim=32, embed_dim=8,
                       text_max_length=6, scan_layers=scan_layers, moe=moe)
  return IMPModel(config, heads=(("digits", 10),), modalities=("image", "text"), num_tasks=3)


CASES = {
    "modality, shared attention, scanned": dict(condition="modality", attention="shared"),
    "task, qkv attention, unrolled": dict(condition="task", attention="qkv", scan_layers=False),
    "attribute, FFN only, raw gates": dict(condition="attribute", renormalize_gates=False),
    "modality, attention only, every 2": dict(condition="modality", attention="shared",
                                              ffn=False, every=2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_merged_experts_give_the_routed_outputs(case):
  model = _model(**CASES[case])
  inputs = {"image": IMAGE, "text": TEXT}
  params = nn.unbox(model.init(jax.random.PRNGKey(0), inputs, model.init_request()))
  routes = (("image", 2, (1, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0)),)  # task 2: image classification
  for request in (Request(classify=(("image", "digits"),), embed=("image",),
                          features=("image",), routes=routes),
                  Request(embed=("text",))):
    routed = model.apply(params, inputs, request)
    merged = model.apply(params, inputs, dataclasses.replace(request, merge_experts=True))
    assert set(merged) == set(routed)
    for key in routed:
      np.testing.assert_allclose(merged[key], routed[key], atol=2e-5, err_msg=key)


def test_merged_model_holds_a_dense_model_of_hidden_width_k_h():
  """MoE in every layer (FFN and shared attention experts), k = 2 of E = 4: merged, each layer
  is a dense attention layer and an MLP of hidden 2 * 32, so the count equals that of the dense
  model with mlp_dim 64, whose routers and condition embedding are gone."""
  model = _model(condition="modality", attention="shared")
  params = jax.eval_shape(functools.partial(model.init, request=model.init_request()),
                          jax.random.PRNGKey(0), {"image": IMAGE, "text": TEXT})["params"]
  dense = IMPModel(ModelConfig(width=16, depth=2, num_heads=2, mlp_dim=64, embed_dim=8,
                               text_max_length=6), heads=(("digits", 10),),
                   modalities=("image", "text"))
  dense_params = jax.eval_shape(functools.partial(dense.init, request=dense.init_request()),
                                jax.random.PRNGKey(0), {"image": IMAGE, "text": TEXT})["params"]
  merged = merged_param_count(nn.unbox(params), logical_axes(model), 4, 2)
  assert merged == count_params(nn.unbox(dense_params))["total"]
  assert merged < count_params(nn.unbox(params))["total"]


def _merge_config(moe, **entry):
  config = tiny_digits_config(total_steps=6, **{"model.moe": moe})
  for task in config.tasks.values():  # one variant per task: fewer programs to compile
    task.variants = dict(base=task.variants.base.to_dict())
  config.evals.digits.linear_probe = False
  config.evals.merged = dict(config.evals.digits.to_dict(), merge_experts=True, **entry)
  return config


TOP2 = dict(num_experts=4, router="top_k", router_args=dict(k=2), condition="modality",
            attention="shared")


@pytest.mark.parametrize("moe, entry, message", [
    (dict(num_experts=4, router="top_k", router_args=dict(k=2)), {},
     r"evals.merged.merge_experts=True needs a data-independent model.moe.condition .*'token'"),
    ({}, {}, r"evals.merged.merge_experts=True: the model has no experts"),
])
def test_merge_experts_is_refused_where_experts_cannot_merge(moe, entry, message):
  with pytest.raises(ConfigError, match=message):
    build_plan(_merge_config(moe, **entry), FACTS)


def test_merge_experts_settings_are_checked_by_the_suite():
  from imp.data import load_source
  from imp.evaluate.suite import EvalSuite

  sources = {"digits": load_source("digits", dict(source="sklearn_digits"))}
  entry = dict(dataset="digits", resolution=8)
  with pytest.raises(ValueError, match=r"evals.e.merge_experts='yes' must be True or False"):
    EvalSuite({"e": dict(entry, merge_experts="yes")}, sources)
  with pytest.raises(ValueError, match=r"evals.e: fuse=.* and merge_experts=True cannot be"):
    EvalSuite({"e": dict(entry, fuse=("image",), classifier=True, merge_experts=True)},
              sources)


def test_merged_evaluation_gives_the_routed_metrics(tmp_path):
  """A short run of the digits experiment with top-2 modality-routed experts in attention and
  FFN, evaluated twice on the held-out split: routed, and with the experts merged."""
  from imp import experiment

  config = _merge_config(TOP2)
  config.evals.digits.classifier = True
  config.evals.merged.classifier = True
  summary = experiment.train(config, tmp_path)
  results = summary["eval"]
  for metric in ("zero_shot_top1", "classifier_top1"):
    assert results[f"merged/{metric}"] == results[f"digits/{metric}"], metric
  assert summary["step_cache"]["xla_compiles_after_warmup"] == 0  # merged programs precompiled


def test_dry_run_reports_the_merged_parameter_count():
  from imp.plan import dry_run

  config = _merge_config(TOP2)
  del config.tasks["digits_label_nce"]
  config.dry_run = dict(datasets=dict(digits=dict(train_examples=1437, num_classes=10,
                                                  modalities=("image", "text"))))
  reports, facts = dry_run.plan(config, workers=1)
  params = facts["params"]
  assert 0 < params["merged"] < params["total"]
  assert f"experts merged for one condition (evals.*.merge_experts): " \
         f"{params['merged'] / 1e6:,.1f}M" in "\n".join(dry_run.report_lines(reports, facts))
  # scan_unroll="auto" is planned as an accelerator compiles it (one layer a loop iteration),
  # not as this CPU would train it, and the table's last line says so.
  assert facts["choices"]["scan_unroll"] == 1 and config.model.get("scan_unroll") is None
  assert "on cpu: layers scanned, 1 per loop iteration (model.scan_unroll); attention xla" \
      in "\n".join(dry_run.report_lines(reports, facts))
