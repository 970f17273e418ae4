"""Routing conditions of Conditional MoEs (Uni-Perceiver-MoE §3.2, eq. 3-9).

A conditional MoE layer routes with G = topk(softmax(W_g R(x) + eps)); the condition R(x) is
chosen by name (config key `model.moe.condition`):

  token      R(x) = x                                    (eq. 5)  data-dependent
  context    R(x) = concat(x, attnpool(X))               (eq. 6)  data-dependent
  modality   R(x) = embed(id_modality(x))                (eq. 7)  data-independent
  task       R(x) = embed(id_task(x))                    (eq. 8)  data-independent
  attribute  R(x) = layernorm(W_attr attr(x))            (eq. 9)  data-independent

Data-dependent conditions are computed inside each MoE layer from its input; data-independent
ones are computed once per token by `StaticCondition` and broadcast to every layer, so all
tokens with the same modality / task / attributes get the same experts (and the experts can be
merged into one dense weight per condition, §3.3; see `imp.model.expert_merge`).

Token attributes (Table 2 of the paper, extended to audio; video is visual). Each bit answers
one question about the token and the task it is processed for:

  index  question                                               Table 2
  0      a visual modality (image, video) is among the task's inputs    0
  1      text is among the task's inputs                                1
  2      a visual modality is among the task's targets                  2
  3      text is among the task's targets                               3
  4      the token is visual                                            4
  5      the token is text                                              5
  6      the token's attention mask is causal                           6
  7      the token comes from the inputs, not the targets               7
  8      audio is among the task's inputs                               (audio extension)
  9      audio is among the task's targets                              (audio extension)
  10     the token is audio                                             (audio extension)

For vision/text tasks bits 0-7 are exactly Table 2 and bits 8-10 are 0. The inputs and targets
of a task are DERIVED from the outputs its objective requests (`roles_of`), never listed per
dataset:
  - a classified modality is an input; its targets are class labels, which count as text
    (Uni-Perceiver encodes every class name as text, so image classification is
    [1, 0, 0, 1, 1, 0, 0, 1] as in the paper's example);
  - of an embedded pair (contrastive retrieval), the first modality is the input and the
    second the target (Uni-Perceiver's retrieval: image -> text);
  - modalities whose pooled features are requested, or fused for classification, are inputs.
No objective here is auto-regressive, so bit 6 is 0; the encoder's attention is bidirectional.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imp.model import logical
from imp.model.attention import attend

Array = jax.Array

# Modality ids of the modality condition and of the one-hot modality code (M3SAT).
MODALITY_IDS = ("image", "video", "audio", "text")
VISUAL = ("image", "video")
NUM_ATTRIBUTES = 11


@dataclasses.dataclass(frozen=True)
class Condition:
  """A routing condition: its name and whether it depends on the token values."""

  name: str
  data_dependent: bool
  equation: str


CONDITIONS: dict[str, Condition] = {c.name: c for c in (
    Condition("token", True, "R(x) = x"),
    Condition("context", True, "R(x) = concat(x, attnpool(X))"),
    Condition("modality", False, "R(x) = embed(id_modality(x))"),
    Condition("task", False, "R(x) = embed(id_task(x))"),
    Condition("attribute", False, "R(x) = layernorm(W_attr attr(x))"),
)}


def get_condition(name: str) -> Condition:
  if name not in CONDITIONS:
    raise ValueError(f"model.moe.condition={name!r} is not known; valid: "
                     f"{', '.join(CONDITIONS)}.")
  return CONDITIONS[name]


def modality_id(modality: str) -> int:
  if modality not in MODALITY_IDS:
    raise ValueError(f"unknown modality {modality!r}; valid: {', '.join(MODALITY_IDS)}.")
  return MODALITY_IDS.index(modality)


def roles_of(classify: Sequence[tuple[str, str]], embed: Sequence[str],
             features: Sequence[str] = (),
             fuse: Sequence[str] = ()) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(input modalities, target modalities) of a task from the outputs it requests.

  `fuse` lists modalities encoded together for classification (all inputs). Class labels
  count as a text target (see the module docstring).
  """
  inputs = [m for m, _ in classify] + list(fuse) + list(embed[:1]) + list(features)
  targets = (["text"] if classify else []) + list(embed[1:])
  return tuple(dict.fromkeys(inputs)), tuple(dict.fromkeys(targets))


def token_attributes(inputs: Sequence[str], targets: Sequence[str], token_modality: str,
                     causal: bool = False) -> tuple[int, ...]:
  """The 11-bit attribute vector of a token of `token_modality` in a task (module docstring).

  A token is "from the inputs" when its modality is one of the task's inputs.
  """
  modality_id(token_modality)
  has = lambda group, mods: int(any(m in group for m in mods))  # noqa: E731
  return (has(VISUAL, inputs), has(("text",), inputs), has(VISUAL, targets),
          has(("text",), targets), has(VISUAL, (token_modality,)),
          has(("text",), (token_modality,)), int(causal), int(token_modality in inputs),
          has(("audio",), inputs), has(("audio",), targets), has(("audio",), (token_modality,)))


@dataclasses.dataclass(frozen=True)
class TokenCondition:
  """What the data-independent conditions know of a run of tokens (static).

  Attributes:
    modality: the tokens' modality.
    task: index of the task in the model's task table.
    attributes: the tokens' attribute vector (NUM_ATTRIBUTES bits).
  """

  modality: str
  task: int
  attributes: tuple[int, ...]

  def arrays(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-token (modality id int [N], task id int [N], attributes float [N, A])."""
    return (np.full((n,), modality_id(self.modality), np.int32),
            np.full((n,), self.task, np.int32),
            np.tile(np.asarray(self.attributes, np.float32), (n, 1)))


class StaticCondition(nn.Module):
  """Data-independent condition embeddings R(x) for every token (eq. 7-9).

  (modality ids int [N], task ids int [N], attributes float [N, A]) -> [N, dim].
  """

  condition: str
  dim: int
  num_tasks: int = 1

  @nn.compact
  def __call__(self, modality_ids: Array, task_ids: Array, attributes: Array) -> Array:
    init = logical.normal(1.0, "vocab", "embed")
    if self.condition == "modality":
      return nn.Embed(len(MODALITY_IDS), self.dim, embedding_init=init,
                      name="modality_embed")(modality_ids)
    if self.condition == "task":
      return nn.Embed(max(self.num_tasks, 1), self.dim, embedding_init=init,
                      name="task_embed")(task_ids)
    if self.condition == "attribute":
      # Bias-free: the all-zero attribute vector must not collapse onto a learned constant.
      h = nn.Dense(self.dim, use_bias=False, kernel_init=logical.kernel("attribute", "embed"),
                   name="attr_proj")(attributes.astype(jnp.float32))
      return logical.layer_norm("attr_norm")(h)
    raise ValueError(f"StaticCondition: {self.condition!r} is data-dependent or unknown; "
                     f"static conditions: "
                     f"{', '.join(c for c, v in CONDITIONS.items() if not v.data_dependent)}.")


class AttentionPool(nn.Module):
  """Attention pooling with one learned query: x [B, N, D], mask [B, N] -> [B, D]."""

  attention_impl: str = "xla"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Array, mask: Array) -> Array:
    d = x.shape[-1]
    query = self.param("query", logical.normal(0.02, "embed"), (d,), self.param_dtype)
    keys = nn.Dense(d, use_bias=False, kernel_init=logical.kernel("embed", "kv"),
                    dtype=x.dtype, param_dtype=self.param_dtype, name="key")(x)
    # One head of width D; the values are the tokens themselves.
    q = jnp.broadcast_to(query.astype(x.dtype), (x.shape[0], 1, 1, d))
    return attend(q, keys[:, :, None], x[:, :, None], mask, impl=self.attention_impl)[:, 0, 0]


class GateInput(nn.Module):
  """The router input R(x) of one MoE layer: [B, N, Dg].

  x [B, N, D] is the layer's (normalised) input; `static` [B, N, Dc] the data-independent
  condition from `StaticCondition`, required for those conditions.
  """

  condition: str = "token"
  attention_impl: str = "xla"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: Array, mask: Array, static: Array | None = None) -> Array:
    if get_condition(self.condition).data_dependent:
      if self.condition == "token":
        return x
      pooled = AttentionPool(self.attention_impl, self.param_dtype, name="pool")(x, mask)
      return jnp.concatenate([x, jnp.broadcast_to(pooled[:, None], x.shape)], axis=-1)
    if static is None or static.shape[:2] != x.shape[:2]:
      raise ValueError(f"model.moe.condition={self.condition!r} needs a condition of shape "
                       f"[B, N, Dc] = [{x.shape[0]}, {x.shape[1]}, Dc]; got "
                       f"{None if static is None else static.shape}.")
    return static
