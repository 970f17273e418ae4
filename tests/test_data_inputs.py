"""Augmentation, bad input inside pipelines, paired sources, video clips and tokenizers."""

import os

import numpy as np
import pytest
from conftest import missed_bars

from imp.data import (
  EvalStream,
  TaskIterators,
  eval_batches,
  images,
  load_source,
  load_sources,
  prepare,
  task_dataset,
  transforms,
)
from imp.data.pipeline import prompt_tokens
from imp.data.sources import ArraySplit, DataSource
from imp.data.tokenizer import make_tokenizer
from imp.tasks import Task, Variant

NAMES = ("zero", "one", "two")


def _task(modalities=("image",), batch=4, **variant):
  variant = dict(dict(resolution=(8, 8)), **variant)
  return Task(name="t/base", entry="t", dataset="d", objective="softmax",
              modalities=modalities, weight=1.0, variant=Variant("base", batch_size=batch,
                                                                 **variant))


def _images(n=12, labels=None):
  rng = np.random.default_rng(0)
  labels = np.arange(n, dtype=np.int32) % 3 if labels is None else np.asarray(labels, np.int32)
  return ArraySplit({"image": rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8),
                     "label": labels})


def _batches(ds, n):
  it = iter(ds)
  return [next(it) for _ in range(n)]


# --- Augmentation -------------------------------------------------------------------------


def test_crop_box_bounds_and_fallback():
  rng = np.random.default_rng(0)
  for _ in range(200):
    top, left, h, w = transforms.crop_box(20, 30, (0.2, 1.0), (0.5, 2.0), rng)
    assert top >= 0 and top + h <= 20 and left >= 0 and left + w <= 30
    # Area within the scale range, up to rounding of each side (+-0.5 px).
    assert 0.2 * 600 * 0.8 <= h * w <= 600 * 1.0
  # A ratio no box can meet (100:1 in a 4x4 image) falls back to the whole image.
  assert transforms.crop_box(4, 4, (0.9, 1.0), (100.0, 200.0), rng) == (0, 0, 4, 4)


def test_flip_and_crop_are_seeded_and_bounded():
  image = _images()[0]["image"]  # uint8, as the pipeline passes it
  flip = dict(flip=True)
  outs = [transforms.augment_image(image, flip, np.random.default_rng(s), (8, 8))
          for s in range(20)]
  assert any(np.array_equal(o, image[:, ::-1]) for o in outs)
  assert any(np.array_equal(o, image) for o in outs)
  crop = transforms.check_augment(dict(random_resized_crop=True, flip=True), "k")
  a = transforms.augment_image(image, crop, np.random.default_rng(3), (6, 6))
  b = transforms.augment_image(image, crop, np.random.default_rng(3), (6, 6))
  np.testing.assert_array_equal(a, b)
  assert a.shape == (6, 6, 1) and a.dtype == np.uint8
  assert a.min() >= image.min() and a.max() <= image.max()


def test_augmented_pipeline_is_deterministic_per_seed_and_restores_mid_epoch():
  source = DataSource("d", ("image",), NAMES, {"train": _images(12)},
                      augment=transforms.check_augment(
                          dict(random_resized_crop=dict(scale=(0.5, 1.0)), flip=True), "k"))
  first = _batches(task_dataset(source, _task(), seed=3, num_threads=2), 5)
  again = _batches(task_dataset(source, _task(), seed=3, num_threads=2), 5)
  for x, y in zip(first, again, strict=True):
    np.testing.assert_array_equal(x["image"], y["image"])
  other = _batches(task_dataset(source, _task(), seed=4), 1)[0]
  assert not np.array_equal(other["image"], first[0]["image"])
  # Restoring the iterator state after 4 batches (mid second epoch) gives batch 5 again.
  iterators = TaskIterators({"t/base": task_dataset(source, _task(), seed=3)})
  for _ in range(4):
    iterators.next("t/base")
  state = iterators.get_state()
  restored = TaskIterators({"t/base": task_dataset(source, _task(), seed=3)})
  restored.set_state(state)
  np.testing.assert_array_equal(restored.next("t/base")["image"], first[4]["image"])


def test_bad_augment_settings_name_the_key():
  with pytest.raises(ValueError, match=r"datasets.d.augment.rotate is not an augmentation; "
                                       r"valid: translate, random_resized_crop, flip"):
    load_source("d", dict(source="sklearn_digits", augment=dict(rotate=10)))
  with pytest.raises(ValueError, match=r"need 0 < scale\[0\] <= scale\[1\] <= 1"):
    transforms.check_augment(dict(random_resized_crop=dict(scale=(0.5, 2.0))), "k")


# --- Bad input ----------------------------------------------------------------------------


def test_label_outside_the_class_list_fails_or_is_skipped_and_counted():
  bad = _images(12, labels=[0, 1, 2, 7] * 3)  # label 7: only 3 classes
  source = DataSource("d", ("image",), NAMES, {"train": bad})
  with pytest.raises(ValueError, match=r"dataset 'd', split 'train', example (3|7|11): ValueError: "
                                       r"label 7 is outside the 3 classes of dataset 'd' "
                                       r"\(valid: 0..2\).*on_error='skip'"):
    _batches(task_dataset(source, _task(), seed=0, num_threads=1), 3)
  skipping = DataSource("d", ("image",), NAMES, {"train": bad}, on_error="skip")
  batches = _batches(task_dataset(skipping, _task(), seed=0, num_threads=1), 6)  # 2 epochs
  labels = np.concatenate([b["label"] for b in batches])
  # 3 bad examples, met twice each in 2 epochs (more when prefetching reads ahead).
  assert labels.max() <= 2 and skipping.skips.count >= 6
  assert {r.split(":")[0] for r in skipping.skips.reasons} == {
      f"dataset 'd', split 'train', example {i}" for i in (3, 7, 11)}


def test_wrong_shape_and_empty_audio_name_the_example():
  flat = ArraySplit({"image": np.zeros((4, 8, 8), np.uint8), "label": np.zeros(4, np.int32)})
  source = DataSource("d", ("image",), NAMES, {"train": flat})
  with pytest.raises(ValueError, match=r"example \d: ValueError: image of shape \[8, 8\]; "
                                       r"valid: \[height, width, channels\]"):
    _batches(task_dataset(source, _task(), seed=0, num_threads=1), 1)
  floats = ArraySplit({"image": np.zeros((4, 8, 8, 1), np.float32),
                       "label": np.zeros(4, np.int32)})
  source = DataSource("f", ("image",), NAMES, {"train": floats, "test": floats})
  with pytest.raises(ValueError, match=r"image of dtype float32 in dataset 'f'; valid: uint8 "
                                       r"pixels in \[0, 255\]"):
    _batches(task_dataset(source, _task(), seed=0, num_threads=1), 1)
  with pytest.raises(ValueError, match=r"image of dtype float32 in dataset 'f'"):  # evaluation
    list(EvalStream(source, "test", modality="image", resolution=(8, 8), batch_size=4))
  waves = np.zeros((4, 0), np.float32)  # a truncated recording: no samples
  silent = DataSource("s", ("audio",), NAMES, {"train": ArraySplit(
      {"audio": waves, "sample_rate": np.full(4, 8000), "label": np.zeros(4, np.int32)})})
  task = _task(("audio",), resolution=None, spectrogram=(8, 8))
  with pytest.raises(ValueError, match=r"dataset 's', split 'train', example \d: .*waveform is "
                                       r"empty"):
    _batches(task_dataset(silent, task, seed=0, num_threads=1), 1)


def test_truncated_record_names_the_file_and_record(tmp_path):
  root = tmp_path / "imgs"
  for c in NAMES:
    os.makedirs(root / c)
    for i in range(3):
      images.write_image(str(root / c / f"{i}.png"), np.full((8, 8), 40 * i, np.uint8))
  out = tmp_path / "prep"
  prepare.main(["image_folder", "--input", str(root), "--output", str(out),
                "--test-fraction", "0"])
  # Rewrite record 4 cut short, as a crashed writer or a bad copy would leave it.
  from array_record.python.array_record_data_source import ArrayRecordDataSource
  from array_record.python.array_record_module import ArrayRecordWriter

  path = str(out / "train.array_record")
  records = [ArrayRecordDataSource([path])[i] for i in range(9)]
  writer = ArrayRecordWriter(path, "group_size:1")
  for i, record in enumerate(records):
    writer.write(record[: len(record) // 2] if i == 4 else record)
  writer.close()
  data = load_source("p", dict(source="arrayrecord", directory=str(out)))
  with pytest.raises(ValueError, match=r"example 4: ValueError: .*train.array_record, record 4: "
                                       r"not a record written by imp.data.prepare"):
    _batches(task_dataset(data, _task(batch=9), seed=0, num_threads=1), 1)
  skipping = load_source("p", dict(source="arrayrecord", directory=str(out), on_error="skip"))
  batch = _batches(task_dataset(skipping, _task(batch=9), seed=0, num_threads=1), 1)[0]
  assert batch["image"].shape == (9, 8, 8, 1) and skipping.skips.count == 1


def test_empty_split_and_bad_on_error_fail_at_start_up(tmp_path):
  with pytest.raises(ValueError, match=r"datasets.d.on_error='drop'; valid: fail, skip"):
    load_source("d", dict(source="sklearn_digits", on_error="drop"))
  source = DataSource("d", ("image",), NAMES, {"train": _images(0)})
  with pytest.raises(ValueError, match=r"task t/base: dataset 'd' split 'train' has no examples"):
    task_dataset(source, _task(), seed=0)
  from imp.data import sources

  @sources.register_source("empty_for_test")
  def _empty(name):
    return DataSource(name, ("image",), NAMES, {"train": _images(3), "test": _images(0)})

  try:
    with pytest.raises(ValueError, match=r"datasets.e: split 'test' is empty"):
      load_source("e", dict(source="empty_for_test"))
  finally:
    del sources.SOURCES["empty_for_test"], sources.REFERENCES["empty_for_test"]


# --- Paired sources -----------------------------------------------------------------------


def _sounds(labels):
  labels = np.asarray(labels, np.int32)
  spec = np.stack([np.full((8, 8, 1), float(i), np.float32) for i in range(len(labels))])
  return ArraySplit({"audio": spec, "label": labels})


def test_paired_source_joins_on_class_names():
  @_registered("two_kinds")
  def _two(name, kind):
    if kind == "images":  # class names in one order ...
      return DataSource(name, ("image", "text"), NAMES, {"train": _images(6, [0, 1, 2, 0, 1, 2]),
                                                         "test": _images(3)})
    # ... and the sounds' in another: "two" is label 0 here, "zero" label 2.
    return DataSource(name, ("audio", "text"), ("two", "one", "zero"),
                      {"train": _sounds([2, 2, 1, 0]), "test": _sounds([2, 1, 0])})

  try:
    configs = {"img": dict(source="two_kinds", kind="images"),
               "snd": dict(source="two_kinds", kind="sounds"),
               "av": dict(source="paired", first="img", second="snd", key="label")}
    av = load_sources(configs)["av"]
  finally:
    _unregister("two_kinds")
  assert av.modalities == ("image", "audio", "text") and av.class_names == NAMES
  train = av.split("train")
  # Per class: max(2 images, n sounds) pairs: zero 2 (2 sounds), one 2 (1 sound), two 2 (1).
  assert len(train) == 6
  sound_label = {0: 2, 1: 2, 2: 1, 3: 0}  # sound index -> its label id in "snd"
  snd_names = ("two", "one", "zero")
  for i in range(len(train)):
    example = train[i]
    sound = int(example["audio"][0, 0, 0])
    assert NAMES[int(example["label"])] == snd_names[sound_label[sound]]
  assert sorted(int(train[i]["audio"][0, 0, 0]) for i in range(6) if train[i]["label"] == 0) \
      == [0, 1]  # both "zero" sounds are used
  # The batched read (one read of each dataset) gives the examples read one by one.
  indices = [5, 0, 3, 3]
  for got, want in zip(train.__getitems__(indices), [train[i] for i in indices], strict=True):
    assert set(got) == set(want)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  batch = _batches(task_dataset(av, _task(("image", "audio"), spectrogram=(8, 8)), seed=0), 1)[0]
  assert batch["image"].shape == (4, 8, 8, 1) and batch["audio"].shape == (4, 8, 8, 1)


def test_paired_source_errors_name_the_problem():
  a = DataSource("a", ("image", "text"), NAMES, {"train": _images(3)})
  b = DataSource("b", ("audio", "text"), ("zero", "one", "nine"), {"train": _sounds([0, 1, 2])})
  with pytest.raises(ValueError, match=r"key values \['nine', 'two'\] occur in only one"):
    load_source("av", dict(source="paired", first=a, second=b))
  with pytest.raises(ValueError, match=r"both datasets have field\(s\) \['image'\]"):
    load_source("av", dict(source="paired", first=a, second=a))
  with pytest.raises(ValueError, match=r"datasets.av.first='nope' is not in config.datasets; "
                                       r"valid: img"):
    load_sources({"img": dict(source="sklearn_digits"),
                  "av": dict(source="paired", first="nope", second="img")})
  with pytest.raises(ValueError, match=r"av -> av is a cycle"):
    load_sources({"av": dict(source="paired", first="av", second="av")})


def _registered(name):
  from imp.data import sources

  return sources.register_source(name)


def _unregister(name):
  from imp.data import sources

  del sources.SOURCES[name], sources.REFERENCES[name]


# --- Video --------------------------------------------------------------------------------


def test_clip_indices_hand_derived():
  # 10 frames, 3 frames 2 apart span 5: eval centres them (slack 5 -> start 2): 2, 4, 6.
  np.testing.assert_array_equal(transforms.clip_indices(10, 3, 2, None), [2, 4, 6])
  # A 3-frame video read as 4 frames repeats the last one.
  np.testing.assert_array_equal(transforms.clip_indices(3, 4, 1, None), [0, 1, 2, 2])
  rng = np.random.default_rng(0)
  starts = {int(transforms.clip_indices(10, 3, 2, rng)[0]) for _ in range(100)}
  assert starts == {0, 1, 2, 3, 4, 5}


def test_prepare_video_folder_and_read_clips(tmp_path):
  root = tmp_path / "videos"
  for label in ("wave", "jump"):
    for clip in range(2):
      folder = root / label / f"clip{clip}"
      os.makedirs(folder)
      for t in range(12):  # frame_2 must sort before frame_10: value = frame number
        images.write_image(str(folder / f"frame_{t}.png"), np.full((6, 6), 10 * t, np.uint8))
  out = tmp_path / "prep"
  meta = prepare.main(["video_folder", "--input", str(root), "--output", str(out), "--fps", "24",
                       "--test-fraction", "0.5", "--resize", "4", "4"])
  assert meta["fields"]["video"] == {"dtype": "uint8", "shape": [12, 4, 4, 1]}
  assert meta["class_names"] == ["jump", "wave"] and meta["splits"]["test"]["count"] == 2
  data = load_source("v", dict(source="arrayrecord", directory=str(out), clip_fps=8))
  assert data.modalities == ("video", "text")
  np.testing.assert_array_equal(data.split("train")[0]["video"][:, 0, 0, 0], 10 * np.arange(12))
  task = Task(name="v/base", entry="v", dataset="v", objective="softmax", modalities=("video",),
              weight=1.0, variant=Variant("base", batch_size=2, resolution=(4, 4), frames=3))
  batch = _batches(task_dataset(data, task, seed=0, num_threads=1), 1)[0]
  assert batch["video"].shape == (2, 3, 4, 4, 1)
  # 24 fps sampled at 8 fps: frames 3 apart, so uint8 values step by 30.
  assert batch["video"].dtype == np.uint8
  values = batch["video"][:, :, 0, 0, 0].astype(np.int64)
  np.testing.assert_array_equal(np.diff(values, axis=1), 30)
  evals = eval_batches(data, "test", modality="video", resolution=(4, 4), batch_size=2, frames=3)
  # Evaluation centres the clip: span 7 of 12 frames, slack 5 -> start 2: frames 2, 5, 8.
  np.testing.assert_array_equal(evals.batches[0]["video"][0, :, 0, 0, 0], [20, 50, 80])


def test_video_folder_errors(tmp_path):
  clip = tmp_path / "v" / "wave" / "c0"
  os.makedirs(clip)
  images.write_image(str(clip / "0.png"), np.zeros((4, 4), np.uint8))
  images.write_image(str(clip / "1.png"), np.zeros((5, 4), np.uint8))
  with pytest.raises(ValueError, match=r"1.png: frame of shape \[5, 4, 1\], but the clip's first"):
    prepare.main(["video_folder", "--input", str(tmp_path / "v"), "--output",
                  str(tmp_path / "o"), "--test-fraction", "0"])
  with pytest.raises(ValueError, match=r"0.png: neither a video file .* nor a frame of a clip"):
    prepare.main(["video_folder", "--input", str(clip), "--output", str(tmp_path / "o")])


# --- Tokenizers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
  spm = pytest.importorskip("sentencepiece")
  folder = tmp_path_factory.mktemp("spm")
  lines = [f"a photo of the digit {n}" for n in NAMES * 20] + [
      "the quick brown fox jumps over the lazy dog", "spoken digits and handwritten digits"] * 10
  (folder / "corpus.txt").write_text("\n".join(lines) + "\n")
  prefix = str(folder / "tiny")
  spm.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=prefix,
                                 vocab_size=40, model_type="unigram", num_threads=1,
                                 minloglevel=2)
  return prefix + ".model"


def test_sentencepiece_round_trip_and_reaches_pipelines_and_prompts(sentencepiece_model):
  tok = make_tokenizer(dict(name="sentencepiece", model_file=sentencepiece_model), "k")
  ids = tok.encode("a photo of the digit two", 40)
  assert ids.dtype == np.int32 and ids.shape == (40,) and 0 < ids[0] < tok.vocab_size
  assert tok.decode(ids) == "a photo of the digit two"
  assert ids[(ids != 0).sum() - 1] == tok.eos_id and ids[-1] == 0
  source = DataSource("d", ("image", "text"), NAMES, {"train": _images(6)},
                      label_templates=("a photo of the digit {}",), tokenizer=tok)
  short = tok.encode("a photo of the digit two", 4)  # truncation keeps end-of-text
  assert short[-1] == tok.eos_id and "a photo of the digit two".startswith(tok.decode(short))
  batch = _batches(task_dataset(source, _task(("image", "text"), text_length=40), seed=0), 1)[0]
  assert {tok.decode(t) for t in batch["text"]} <= {f"a photo of the digit {n}" for n in NAMES}
  prompts = prompt_tokens(source, 40)
  assert tok.decode(prompts[2, 0]) == "a photo of the digit two"
  data = load_source("d", dict(source="sklearn_digits", tokenizer=dict(
      name="sentencepiece", model_file=sentencepiece_model)))
  assert data.tokenizer.vocab_size == tok.vocab_size


def test_sentencepiece_model_file_in_a_bucket(sentencepiece_model, gcs_emulator):
  """model_file=gs://...: the model's bytes are read from the bucket (sentencepiece opens local
  files only); it encodes as the local file does, and survives pickling into a grain worker."""
  import pickle

  from imp import paths

  url = gcs_emulator.make_bucket("tokenizers") + "/tiny.model"
  paths.write_bytes(url, paths.as_path(sentencepiece_model).read_bytes())
  local = make_tokenizer(dict(name="sentencepiece", model_file=sentencepiece_model), "k")
  remote = pickle.loads(pickle.dumps(
      make_tokenizer(dict(name="sentencepiece", model_file=url), "k")))
  assert remote.model_file == url
  text = "a photo of the digit seven"
  np.testing.assert_array_equal(remote.encode(text, 24), local.encode(text, 24))
  with pytest.raises(ValueError, match=r"gs://tokenizers/gone.model: SentencePiece model file "
                                       r"not found"):
    make_tokenizer(dict(name="sentencepiece", model_file="gs://tokenizers/gone.model"), "k")


def test_tokenizer_errors_name_the_key(tmp_path):
  with pytest.raises(ValueError, match=r"datasets.d.tokenizer: tokenizer 'bpe' is not known; "
                                       r"valid: byte, sentencepiece"):
    load_source("d", dict(source="sklearn_digits", tokenizer="bpe"))
  with pytest.raises(ValueError, match=r"missing.model: SentencePiece model file not found"):
    make_tokenizer(dict(name="sentencepiece", model_file=str(tmp_path / "missing.model")), "k")
  assert make_tokenizer(None, "k").vocab_size == 258


def test_skip_count_reaches_the_training_log(tmp_path):
  import json

  from imp.train.train_log import TrainLog

  log = TrainLog(tmp_path)
  log.add(0, "t/base", {"loss": np.float32(1.0), "nonfinite": np.float32(0.0)})
  line = log.write(1, {"size": 1, "hits": 0, "compile_share": 0.5}, data_skipped=3)
  log.writer.close()
  assert "(3 bad examples skipped)" in line
  record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
  assert record["data/skipped_examples"] == 3 and record["t/base/loss"] == 1.0


# Every held-out clip right: the 0-step model's head gets 50% (tests/test_bars.py); 100% after
# 8, 40 and 100 steps (measured 2026-12-07, seed 0).
VIDEO_BARS = {"clips/classifier_top1": 0.75}


def video_clips_config(tmp_path, total_steps):
  """A prepared folder of 8 clips (4 held out) whose brightness ramps up or down, and the digits
  smoke config retargeted to video classification and video/label-text NCE on it."""
  import ml_collections

  from imp.config.digits import get_config

  root = tmp_path / "videos"
  for label, direction in (("brighten", 1), ("darken", -1)):
    for clip in range(4):
      folder = root / label / f"clip{clip}"
      os.makedirs(folder)
      for t in range(8):  # brightness ramps up or down over time: only motion tells them apart
        value = 120 + direction * (10 * t + clip)
        images.write_image(str(folder / f"frame_{t}.png"), np.full((4, 4), value, np.uint8))
  prepare.main(["video_folder", "--input", str(root), "--output", str(tmp_path / "prep"),
                "--test-fraction", "0.5"])

  config = get_config("smoke")
  config.total_steps = total_steps
  config.checkpoint_every = total_steps
  config.checkpoint_best_metric = None
  config.datasets = ml_collections.ConfigDict({"clips": dict(
      source="arrayrecord", directory=str(tmp_path / "prep"), label_templates=("{}",))})
  variant = dict(batch_size=4, resolution=4, frames=4, text_length=16)
  config.tasks = ml_collections.ConfigDict({
      "clips_cls": dict(dataset="clips", objective="softmax", modalities=("video",),
                        variants=dict(base=variant)),
      "clips_nce": dict(dataset="clips", objective="nce", modalities=("video", "text"),
                        args=dict(positives="same_label"), variants=dict(base=variant)),
  })
  config.model.update(depth=1, vision_patch=(2, 2, 2), vision_base_grid=(2, 2, 2),
                      text_max_length=16)
  config.evals = ml_collections.ConfigDict({"clips": dict(
      dataset="clips", modality="video", resolution=4, frames=4, text_length=16, batch_size=4,
      zero_shot=True, linear_probe=False, classifier=True)})
  return config


def test_video_tasks_train_and_evaluate_through_the_loop(tmp_path):
  """A prepared video folder feeds video classification and video/label-text NCE through the
  AGD loop, and the eval suite reads middle clips of `frames` frames."""
  from imp import experiment

  config = video_clips_config(tmp_path, 40)
  config.optimizer.warmup_steps = 5
  summary = experiment.train(config, tmp_path / "run")
  assert set(summary["task_steps"]) == {"clips_cls/base", "clips_nce/base"}
  assert summary["nonfinite_skipped_steps"] == 0
  assert not missed_bars(summary["eval"], VIDEO_BARS), summary["eval"]
  # Zero-shot over 2 labels and 4 clips has no bar the 0-step model misses: it scored 100%.
  assert "clips/zero_shot_top1" in summary["eval"]
