"""Every config key: imp.config.schema's `KEYS` plus model.* and model.moe.*, read off
ModelConfig's and MoeConfig's fields (their type and default are declared there once). Here,
above both imp.config and imp.model, because the schema sits below the model."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from imp.config.schema import KEYS, REQUIRED, Key, value_at
from imp.model import ModelConfig, MoeConfig

_MODEL_DOCS = {
    "width": "token width D", "depth": "encoder layers", "num_heads": "attention heads",
    "mlp_dim": "FFN hidden width", "embed_dim": "common embedding width (contrastive)",
    "scan_layers": "roll the layers with nn.scan (one compiled body)",
    "scan_unroll": "scanned units per loop iteration (nn.scan unroll): 1 compiles fastest, "
    "more trade compile time for step time",
    "remat_policy": "auto | none | dots_saveable | full | ...: rematerialisation of each layer; "
    "auto: per train program the least recomputation (none, dots_saveable, full) whose "
    "compiled program fits device_memory_limit or the device's memory with 10% to spare",
    "vision_patch": "(time, height, width) of a vision patch",
    "vision_base_grid": "patch grid the vision positions are learned at",
    "vision_channels": "image channels", "audio_patch": "(time, mel) of an audio patch",
    "audio_base_grid": "patch grid the audio positions are learned at",
    "text_vocab_size": "text embedding rows (>= every tokenizer's ids)",
    "text_max_length": "text positions", "logit_scale_init": "initial contrastive logit scale",
    "logit_scale_max": "contrastive logit scale cap", "moe": "Mixture-of-Experts (model.moe.*)",
    "front_end": "patch | perceiver", "perceiver_latents": "latents of the perceiver front end",
    "perceiver_bands": "Fourier bands of the perceiver front end",
    "dtype": "computation dtype: float32 | bfloat16 (softmax, norms, routers, logits and losses "
    "stay float32)",
    "param_dtype": "parameter dtype: float32 | bfloat16 (Adam moments stay float32)",
    "attention_impl": "auto | xla | cudnn (GPU): the implementation of jax.nn.dot_product_attention"
    "; auto: cudnn on a GPU with bfloat16/float16 activations, else xla",
    "heads": "classifier heads: batch_norm (Linear then BatchNorm, M3SAT), momentum, epsilon",
    "layer_scale": "LayerScale's initial gamma per residual branch (None: off)",
    "stochastic_depth": "drop rate of each residual branch in training (0: off)",
    "perceiver_max_freq": "modality -> the Fourier features' max frequency (default: axis length)",
    "perceiver_freq_base": "modality -> base of log-spaced Fourier bands (default: linear)",
}
_MOE_DOCS = {
    "num_experts": "experts per MoE layer (0: dense)",
    "every": "the last layer of every block of `every` layers is MoE",
    "router": "expert_choice | top_k", "router_args": "the router's arguments (open section)",
    "hidden_dim": "expert hidden width (default: model.mlp_dim)",
    "group_size": "example | batch | tokens per routing group",
    "dispatch": "gather | einsum (all-to-all on a mesh)",
    "condition": "router input: token | context | modality | task | attribute",
    "condition_dim": "width of data-independent condition embeddings (default: model width)",
    "ffn": "MoE layers have expert FFNs", "attention": "none | shared | qkv: MoE in attention",
    "renormalize_gates": "top-k gates renormalised over the k chosen experts (False: raw softmax)",
}


def _dataclass_keys(prefix: str, cls: type, docs: Mapping[str, str]) -> list[Key]:
  out = []
  for f in dataclasses.fields(cls):
    default = (f.default if f.default is not dataclasses.MISSING else
               f.default_factory() if f.default_factory is not dataclasses.MISSING else REQUIRED)
    if dataclasses.is_dataclass(default):
      default = {}
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    out.append(Key(prefix + f.name, kind, default, docs.get(f.name, "")))
  return out


def all_keys() -> list[Key]:
  """KEYS plus model.* and model.moe.*, read off ModelConfig and MoeConfig (their fields are
  the declaration: type and default in one place)."""
  return KEYS + _dataclass_keys("model.", ModelConfig, _MODEL_DOCS) + _dataclass_keys(
      "model.moe.", MoeConfig, _MOE_DOCS)



def describe(config: Any) -> list[str]:
  """One line per key: path = value (default ...): meaning; `*` keys once per entry."""
  lines = []
  keys = all_keys()
  parents = {k.path.rsplit(".", 1)[0] for k in keys if "." in k.path}
  parents |= {p.rsplit(".", 1)[0] for p in parents if p.endswith(".*")}
  for key in keys:
    if key.path in parents:
      continue  # a section: its keys follow, one line each
    matches = value_at(config, key.path)
    if not matches:
      if "*" in key.path:
        continue
      matches = [(key.path, "(unset)")]
    for path, value in matches:
      if hasattr(value, "to_dict"):
        value = value.to_dict()
      lines.append(f"{path} = {value!r}  [{key.type}, default {key.default!r}]  {key.doc}")
  return lines
