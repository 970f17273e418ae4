"""Digits source, transforms, tokenizer and the grain pipelines (shapes, seeds, state)."""

import jax
import numpy as np
import pytest

from imp.data import ByteTokenizer, TaskIterators, eval_batches, load_source, task_dataset
from imp.data.pipeline import prompt_tokens
from imp.data.sources import ArraySplit, DataSource
from imp.data.transforms import resize_image
from imp.tasks import Task, Variant

TEMPLATES = ("the digit {}", "a {}")


@pytest.fixture(scope="module")
def digits():
  return load_source("digits", dict(source="sklearn_digits", label_templates=TEMPLATES))


def _task(modalities=("image", "text"), resolution=(16, 16), batch=8):
  return Task(name="t/base", entry="t", dataset="digits", objective="nce",
              modalities=modalities, weight=1.0,
              variant=Variant("base", batch_size=batch, resolution=resolution, text_length=20))


def test_digits_split_is_stratified_and_held_out(digits):
  train, test = digits.split("train"), digits.split("test")
  assert (len(train), len(test)) == (1437, 360)
  assert train[0]["image"].shape == (8, 8, 1) and train[0]["image"].dtype == np.uint8
  counts = np.bincount(test.fields["label"], minlength=10)
  assert counts.min() >= 35 and counts.max() <= 37  # 20% of ~180 per class
  # No image appears in both splits.
  train_rows = {x.tobytes() for x in train.fields["image"]}
  overlap = sum(x.tobytes() in train_rows for x in test.fields["image"])
  assert overlap <= 2  # the raw dataset itself holds a couple of exact duplicates
  with pytest.raises(ValueError, match="has no split 'validation'; splits: train, test"):
    digits.split("validation")


def test_unknown_source_and_bad_settings():
  with pytest.raises(ValueError, match=r"datasets.x.source='mnist' is not a known source; "
                                       r"valid sources: arrayrecord, idx, paired, "
                                       r"sklearn_digits, tfds"):
    load_source("x", dict(source="mnist"))
  with pytest.raises(ValueError,
                     match=r"datasets.x.colour is not a setting of source 'sklearn_digits'"):
    load_source("x", dict(source="sklearn_digits", colour=True))
  with pytest.raises(ValueError, match=r"datasets.x.test_fraction=1.5 must be in \(0, 1\)"):
    load_source("x", dict(source="sklearn_digits", test_fraction=1.5))


def test_resize_matches_jax_linear_upsampling():
  image = np.random.default_rng(0).normal(size=(8, 8, 1)).astype(np.float32)
  ours = resize_image(image, (16, 16))
  ref = jax.image.resize(image, (16, 16, 1), method="linear")
  np.testing.assert_allclose(ours, ref, atol=1e-5)
  np.testing.assert_array_equal(resize_image(image, (8, 8)), image)


def test_byte_tokenizer():
  tok = ByteTokenizer()
  ids = tok.encode("a 7", 6)
  np.testing.assert_array_equal(ids, [ord("a") + 2, ord(" ") + 2, ord("7") + 2, 1, 0, 0])
  assert tok.decode(ids) == "a 7"
  long = tok.encode("abcdefgh", 4)
  assert long.tolist()[-1] == 1 and tok.decode(long) == "abc"  # truncation keeps end-of-text


def test_pipeline_batches_have_fixed_shapes_and_label_text(digits):
  batch = next(iter(task_dataset(digits, _task(), seed=0)))
  assert batch["image"].shape == (8, 16, 16, 1) and batch["image"].dtype == np.uint8
  assert batch["text"].shape == (8, 20) and batch["label"].shape == (8,)
  assert batch["image"].max() > 0  # pixels, not zeros
  tok = ByteTokenizer()
  for ids, label in zip(batch["text"], batch["label"], strict=True):
    assert tok.decode(ids) in {t.format(digits.class_names[label]) for t in TEMPLATES}


def test_pipeline_is_seeded_and_restores_mid_epoch(digits):
  first = [next(it) for it in [iter(task_dataset(digits, _task(), seed=5))] for _ in range(3)]
  again = iter(task_dataset(digits, _task(), seed=5))
  for expected in first:
    np.testing.assert_array_equal(next(again)["label"], expected["label"])
  other = next(iter(task_dataset(digits, _task(), seed=6)))
  assert not np.array_equal(other["image"], first[0]["image"])

  iterators = TaskIterators({"t/base": task_dataset(digits, _task(), seed=5)})
  for _ in range(200):  # past the end of the first epoch (1437 / 8 batches)
    iterators.next("t/base")
  state = iterators.get_state()
  expected = iterators.next("t/base")
  restored = TaskIterators({"t/base": task_dataset(digits, _task(), seed=5)})
  restored.set_state(state)
  got = restored.next("t/base")
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key])
  with pytest.raises(ValueError, match="data state for task 'gone/base'"):
    restored.set_state({"gone/base": state["t/base"]})


def test_eval_batches_pad_and_mask(digits):
  batches = eval_batches(digits, "test", modality="image", resolution=(8, 8), batch_size=100)
  assert len(batches.batches) == 4  # 360 = 3 * 100 + 60
  last = batches.batches[-1]
  assert last["image"].shape == (100, 8, 8, 1) and last["mask"].sum() == 60
  assert batches.labels.shape == (360,) and batches.raw.shape == (360, 64)
  prompts = prompt_tokens(digits, 20)
  assert prompts.shape == (10, 2, 20)
  assert ByteTokenizer().decode(prompts[3, 1]) == "a three"


def test_audio_features_from_waveforms_and_spectrograms():
  from imp.data.pipeline import audio_features

  rate = 8000
  t = np.arange(rate // 2) / rate  # 0.5 s of a 1 kHz tone
  example = {"audio": np.sin(2 * np.pi * 1000 * t).astype(np.float32), "sample_rate": rate}
  spec = audio_features(example, (32, 16), None)  # 10 ms hops: 48 frames, cut to 32
  assert spec.shape == (32, 16, 1) and spec.dtype == np.float32
  short = audio_features({"audio": spec[:5]}, (32, 16), None)  # stored spectrogram, padded
  np.testing.assert_array_equal(short[:5], spec[:5])
  np.testing.assert_array_equal(short[5:], 0.0)
  crop = audio_features({"audio": spec}, (8, 16), np.random.default_rng(0))
  assert crop.shape == (8, 16, 1)
  with pytest.raises(ValueError, match="does not give 20 mel bins"):
    audio_features({"audio": spec}, (8, 20), None)


def test_pipeline_batches_audio(digits):
  from imp.data.sources import ArraySplit, DataSource

  rate = 8000
  waves = np.stack([np.sin(2 * np.pi * (300 + 100 * k) * np.arange(rate // 4) / rate)
                    for k in range(10)]).astype(np.float32)
  split = ArraySplit({"audio": waves, "sample_rate": np.full(10, rate),
                      "label": np.arange(10, dtype=np.int32)})
  source = DataSource("tones", ("audio", "text"), digits.class_names, {"train": split})
  task = Task(name="a/base", entry="a", dataset="tones", objective="softmax",
              modalities=("audio",), weight=1.0,
              variant=Variant("base", batch_size=4, spectrogram=(16, 8)))
  batch = next(iter(task_dataset(source, task, seed=0)))
  assert batch["audio"].shape == (4, 16, 8, 1) and np.isfinite(batch["audio"]).all()
  assert batch["audio"].dtype == np.float32
  # In a bfloat16 model the batch is the same spectrogram rounded to bfloat16 on the host.
  bf16 = next(iter(task_dataset(source, task, seed=0, audio_dtype="bfloat16")))
  assert str(bf16["audio"].dtype) == "bfloat16"
  np.testing.assert_array_equal(bf16["audio"], batch["audio"].astype(bf16["audio"].dtype))
  evals = eval_batches(source, "train", modality="audio", resolution=None, batch_size=4,
                       spectrogram=(16, 8))
  # The raw baseline's input: mean and std over time of each of the 8 mel bins.
  assert evals.batches[0]["audio"].shape == (4, 16, 8, 1) and evals.raw.shape == (10, 16)


def test_a_record_of_another_channel_count_is_named_by_dataset_split_and_index():
  images = np.empty(16, object)
  for i in range(16):
    images[i] = np.zeros((8, 8, 3 if i == 11 else 1), np.uint8)  # record 11 is RGB
  source = DataSource("mixed", ("image",), ("a", "b"),
                      {"train": ArraySplit({"image": images, "label": np.arange(16) % 2})})
  task = _task(modalities=("image",), resolution=(8, 8), batch=16)
  with pytest.raises(ValueError, match=r"dataset 'mixed', split 'train', example 11: an image "
                                       r"of 3 channel\(s\) in a batch of 1-channel images"):
    next(iter(task_dataset(source, task, seed=0)))
