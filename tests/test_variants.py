"""Multi-resolution variant expansion at a tokens-per-batch budget (imp/tasks/variants.py)."""

import itertools

import pytest

from imp.tasks import TaskRegistry
from imp.tasks.variants import KINDS, expand_entry, expand_variants, tokens_per_example

PATCHES = dict(vision=(1, 2, 2), audio=(8, 8))


def _tokens(spec, modalities):
  return spec["batch_size"] * tokens_per_example(spec, modalities, PATCHES, "k")


def test_tokens_per_example_hand_derived():
  # 16x16 image, 2x2 patches: 8 * 8 = 64 tokens; DropToken 0.75 keeps round(64 * 0.25) = 16.
  assert tokens_per_example(dict(resolution=16), ("image",), PATCHES, "k") == 64
  assert tokens_per_example(dict(resolution=16, drop_token=0.75), ("image",), PATCHES, "k") == 16
  # 8 frames of 8x8 video with 2x2x2 patches: 4 * 4 * 4 = 64; audio (96, 32) with 8x8: 12 * 4.
  video = dict(vision=(2, 2, 2), audio=(8, 8))
  assert tokens_per_example(dict(resolution=8, frames=8), ("video",), video, "k") == 64
  assert tokens_per_example(dict(resolution=8, spectrogram=(96, 32)), ("image", "audio", "text"),
                            PATCHES, "k") == 16 + 48


def test_image_kinds_follow_imp_and_keep_the_budget():
  auto = dict(base=dict(resolution=16, text_length=8), tokens_per_batch=4096,
              kinds=KINDS, patches=PATCHES, drop_token=0.75)
  variants = expand_variants(auto, ("image", "text"), "tasks.t.variants.auto")
  assert list(variants) == list(KINDS)
  # base 64 tokens -> batch 64; half res 16 tokens -> 4x batch; double res 256 -> a quarter;
  # DropToken 0.75 keeps 16 tokens -> 4x batch; double res + DropToken 0.75 -> the base batch.
  assert [v["batch_size"] for v in variants.values()] == [64, 256, 16, 256, 64]
  assert variants["half_res"]["resolution"] == (8, 8)
  assert variants["double_res"]["resolution"] == (32, 32)
  assert variants["droptoken"]["drop_token"] == 0.75
  assert all(v["text_length"] == 8 for v in variants.values())
  for spec in variants.values():
    assert abs(_tokens(spec, ("image",)) - 4096) <= 0.1 * 4096


def test_video_droptoken_is_one_minus_one_over_frame_tokens():
  patches = dict(vision=(2, 2, 2))
  auto = dict(base=dict(resolution=8, frames=8), tokens_per_batch=2048,
              kinds=("base", "droptoken"), patches=patches)
  variants = expand_variants(auto, ("video",), "k")
  assert variants["droptoken"]["drop_token"] == pytest.approx(0.75)  # T_F = 8 / 2 = 4
  assert variants["base"]["batch_size"] == 32 and variants["droptoken"]["batch_size"] == 128


@pytest.mark.parametrize("budget,resolution,multiple", list(itertools.product(
    (1000, 1536, 3000, 5000), (8, 12, 16), (1, 2, 8))))
def test_expansion_stays_within_ten_percent_of_the_budget(budget, resolution, multiple):
  auto = dict(base=dict(resolution=resolution, spectrogram=(64, 32)), tokens_per_batch=budget,
              kinds=("base", "half_res", "droptoken"), patches=PATCHES, batch_multiple=multiple)
  try:
    variants = expand_variants(auto, ("image", "audio"), "k")
  except ValueError as e:  # allowed only when the budget cannot be met: the error says so
    assert "off tokens_per_batch" in str(e)
    return
  for spec in variants.values():
    assert spec["batch_size"] % multiple == 0
    assert abs(_tokens(spec, ("image", "audio")) - budget) <= 0.1 * budget


def test_bad_auto_specs_name_the_key():
  key = "tasks.t.variants.auto"
  with pytest.raises(ValueError, match=r"tasks.t.variants.auto.size is not an auto-variant"):
    expand_variants(dict(size=1, tokens_per_batch=10), ("image",), key)
  with pytest.raises(ValueError, match=r"'quarter' is not a variant kind; valid: base, half_res"):
    expand_variants(dict(base=dict(resolution=8), tokens_per_batch=64, kinds=("quarter",)),
                    ("image",), key)
  with pytest.raises(ValueError, match=r"base.batch_size: the batch follows from"):
    expand_variants(dict(base=dict(resolution=8, batch_size=4), tokens_per_batch=64),
                    ("image",), key)
  with pytest.raises(ValueError, match=r"\(half_res\): resolution \(3, 3\) .* does not cut"):
    expand_variants(dict(base=dict(resolution=6), tokens_per_batch=90,
                         kinds=("half_res",), patches=PATCHES), ("image",), key)
  # 64 tokens per example cannot make 100 tokens per batch within 10%.
  with pytest.raises(ValueError, match=r"100 \(tolerance 10%\); choose a budget that is a "
                                       r"multiple of 64"):
    expand_variants(dict(base=dict(resolution=16), tokens_per_batch=100, patches=PATCHES),
                    ("image",), key)
  with pytest.raises(ValueError, match=r"auto variant 'base' clashes with an explicit variant"):
    expand_entry(dict(base=dict(batch_size=4, resolution=8),
                      auto=dict(base=dict(resolution=8), tokens_per_batch=64)), ("image",), key)


def test_registry_expands_auto_variants_that_share_the_entry_weight():
  tasks = {
      "cls": dict(dataset="d", objective="softmax", modalities=("image",),
                  variants=dict(auto=dict(base=dict(resolution=8), tokens_per_batch=1024,
                                          kinds=("base", "half_res", "double_res"),
                                          patches=PATCHES))),
      "other": dict(dataset="d", objective="softmax", modalities=("image",),
                    variants=dict(base=dict(batch_size=8, resolution=8))),
  }
  registry = TaskRegistry.from_config(tasks, dataset_sizes={"d": 100},
                                      dataset_modalities={"d": ("image",)},
                                      objectives=["softmax"])
  assert registry.names == ("cls/base", "cls/half_res", "cls/double_res", "other/base")
  assert [t.variant.batch_size for t in registry][:3] == [64, 256, 16]
  assert registry.by_name("cls/double_res").variant.resolution == (16, 16)
  # Equal datasets give each entry half the probability, split evenly over its variants.
  assert [round(w, 4) for w in registry.weights] == [0.1667, 0.1667, 0.1667, 0.5]
