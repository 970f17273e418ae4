"""Multi-resolution variant expansion (IMP §3.4, §4.1) at a fixed tokens-per-batch budget.

IMP fixes the tokens per batch T = B x T_F x T_H x T_W and trades its factors against each
other: half the resolution in each spatial dimension at 4x the batch, twice the resolution at
a quarter of the batch, DropToken 1 - 1/T_F for video (0.75 for images) at a larger batch.
Every variant is its own task with its own compiled step; they share the entry's weight.

A task entry asks for this with an `auto` variant:

  variants=dict(auto=dict(
      base=dict(resolution=8, text_length=16),      # any variant setting except batch_size
      tokens_per_batch=1024,                        # the budget T (perceptual tokens)
      kinds=("base", "half_res", "double_res", "droptoken"),
      patches=dict(vision=(1, 2, 2), audio=(8, 8)),  # the model's patch sizes
      drop_token=0.75,                              # DropToken of image variants (default)
      batch_multiple=1))                            # batches round to a multiple of this

Kinds (each changes the base, then takes the batch that fits the budget):
  base                  the base spec.
  half_res              resolution / 2 in each dimension; audio: half the spectrogram time.
  double_res            resolution x 2 in each dimension; audio: twice the spectrogram time.
  droptoken             DropToken 1 - 1/T_F (T_F: frame tokens, when > 1), else `drop_token`.
  double_res_droptoken  double_res with DropToken `drop_token` (IMP's "DropToken + higher res").

Tokens per example count the perceptual (vision and audio) patch tokens left after DropToken;
text tokens are short and IMP's budget leaves them out. Variant names are the kind names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from imp.config import schema

KINDS = ("base", "half_res", "double_res", "droptoken", "double_res_droptoken")
AUTO_KEYS = schema.keys_of("tasks.*.variants.auto")
DEFAULT_PATCHES = {"vision": (1, 2, 2), "audio": (4, 4)}


def _pair(value: Any) -> tuple[int, int]:
  return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


def _scaled(spec: dict[str, Any], factor: float, key: str) -> dict[str, Any]:
  """spec with resolution (both dims) and spectrogram time multiplied by `factor`."""
  out = dict(spec)
  if spec.get("resolution") is not None:
    out["resolution"] = tuple(int(round(s * factor)) for s in _pair(spec["resolution"]))
  if spec.get("spectrogram") is not None:
    time, freq = _pair(spec["spectrogram"])
    out["spectrogram"] = (int(round(time * factor)), freq)
  if out.get("resolution") == spec.get("resolution") and out.get(
      "spectrogram") == spec.get("spectrogram"):
    raise ValueError(f"{key}: scaling needs a `resolution` or `spectrogram` in the base spec.")
  return out


def _kept(tokens: int, rate: float) -> int:
  """Tokens DropToken keeps of `tokens` (as imp.model.encoder.drop_tokens rounds)."""
  return max(1, int(round(tokens * (1.0 - rate))))


def tokens_per_example(spec: Mapping[str, Any], modalities: Sequence[str],
                       patches: Mapping[str, Sequence[int]], key: str) -> int:
  """Perceptual tokens of one example of `spec` after DropToken (vision + audio)."""
  spec = schema.filled(spec, "tasks.*.variants.*")
  rate = float(spec["drop_token"])
  total = 0
  if any(m in ("image", "video") for m in modalities):
    pt, ph, pw = (int(p) for p in patches["vision"])
    h, w = _pair(spec["resolution"])
    frames = int(spec["frames"]) if "video" in modalities else 1
    if h % ph or w % pw or (frames > 1 and frames % pt):
      raise ValueError(f"{key}: resolution {(h, w)} x {frames} frames does not cut into "
                       f"patches of {tuple(patches['vision'])}.")
    total += _kept(max(1, frames // pt) * (h // ph) * (w // pw), rate)
  if "audio" in modalities:
    pt, pq = (int(p) for p in patches["audio"])
    time, freq = _pair(spec["spectrogram"])
    if time % pt or freq % pq:
      raise ValueError(f"{key}: spectrogram {(time, freq)} does not cut into patches of "
                       f"{(pt, pq)}.")
    total += _kept((time // pt) * (freq // pq), rate)
  if total == 0:
    raise ValueError(f"{key}: the task has no vision or audio modality to count tokens of.")
  return total


def _frame_tokens(spec: Mapping[str, Any], modalities: Sequence[str],
                  patches: Mapping[str, Sequence[int]]) -> int:
  if "video" not in modalities:
    return 1
  return max(1, int(schema.filled(spec, "tasks.*.variants.*")["frames"]) //
             int(patches["vision"][0]))


def _kind_spec(kind: str, base: dict[str, Any], modalities: Sequence[str],
               patches: Mapping[str, Sequence[int]], drop_token: float,
               key: str) -> dict[str, Any]:
  if kind == "base":
    return dict(base)
  if kind == "half_res":
    return _scaled(base, 0.5, key)
  if kind == "double_res":
    return _scaled(base, 2.0, key)
  if kind == "droptoken":
    frame_tokens = _frame_tokens(base, modalities, patches)
    rate = 1.0 - 1.0 / frame_tokens if frame_tokens > 1 else drop_token
    return dict(base, drop_token=rate)
  if kind == "double_res_droptoken":
    return dict(_scaled(base, 2.0, key), drop_token=drop_token)
  raise ValueError(f"{key}.kinds: {kind!r} is not a variant kind; valid: {', '.join(KINDS)}.")


def expand_variants(auto: Mapping[str, Any], modalities: Sequence[str],
                    key: str) -> dict[str, dict[str, Any]]:
  """Variant name -> variant settings (with batch_size) for one `auto` spec.

  Args:
    auto: the `variants.auto` settings (see the module docstring).
    modalities: the task's modalities.
    key: config key of `auto`, for errors.

  Raises:
    ValueError: an unknown setting or kind, sizes that do not cut into patches, or a batch
      whose tokens miss the budget by more than `tolerance` (default 0.1).
  """
  unknown = sorted(set(auto) - set(AUTO_KEYS))
  if unknown:
    raise ValueError(f"{key}.{unknown[0]} is not an auto-variant setting; valid: "
                     f"{', '.join(AUTO_KEYS)}.")
  auto = schema.filled(auto, "tasks.*.variants.auto")
  base = dict(auto["base"] or {})
  if "batch_size" in base:
    raise ValueError(f"{key}.base.batch_size: the batch follows from tokens_per_batch; "
                     "remove it.")
  budget = int(auto.get("tokens_per_batch") or 0)
  if budget <= 0:
    raise ValueError(f"{key}.tokens_per_batch must be a positive int, got "
                     f"{auto.get('tokens_per_batch')!r}.")
  kinds = tuple(auto["kinds"])
  if len(set(kinds)) != len(kinds):
    raise ValueError(f"{key}.kinds={kinds} lists a kind twice.")
  patches = dict(DEFAULT_PATCHES, **dict(auto["patches"] or {}))
  drop_token, multiple, tolerance = (float(auto["drop_token"]), int(auto["batch_multiple"]),
                                     float(auto["tolerance"]))
  if multiple <= 0:
    raise ValueError(f"{key}.batch_multiple={multiple} must be positive.")
  variants = {}
  for kind in kinds:
    spec = _kind_spec(kind, base, modalities, patches, drop_token, key)
    tokens = tokens_per_example(spec, modalities, patches, f"{key} ({kind})")
    batch = max(multiple, int(round(budget / tokens / multiple)) * multiple)
    miss = abs(batch * tokens - budget) / budget
    if miss > tolerance:
      raise ValueError(
          f"{key} ({kind}): {tokens} tokens per example give {batch * tokens} tokens per batch "
          f"at batch {batch}, {100 * miss:.0f}% off tokens_per_batch={budget} (tolerance "
          f"{100 * tolerance:.0f}%); choose a budget that is a multiple of {tokens * multiple}.")
    variants[kind] = dict(spec, batch_size=batch)
  return variants


def expand_entry(variants: Mapping[str, Any], modalities: Sequence[str],
                 key: str) -> dict[str, Any]:
  """A task entry's `variants` with its `auto` spec (if any) replaced by the expansion.

  Explicit variants stay as they are; an expanded name that clashes with one is an error.
  """
  variants = dict(variants)
  auto = variants.pop("auto", None)
  if auto is None:
    return variants
  expanded = expand_variants(dict(auto), modalities, f"{key}.auto")
  clash = sorted(set(expanded) & set(variants))
  if clash:
    raise ValueError(f"{key}: auto variant {clash[0]!r} clashes with an explicit variant of "
                     "that name; rename the explicit one.")
  return dict(variants, **expanded)
