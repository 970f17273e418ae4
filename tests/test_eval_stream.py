"""Streamed evaluation equals the whole-split path it replaced (`eval_batches`), batch by
batch and metric by metric, on splits whose size is not a multiple of the batch."""

from __future__ import annotations

import numpy as np
import pytest
from test_video_eval import _videos

from imp.data import EvalStream, eval_batches, load_source, prompt_tokens
from imp.data.sources import ArraySplit, DataSource
from imp.evaluate import retrieval
from imp.evaluate.linear_probe import linear_probe
from imp.evaluate.suite import EvalSuite, clip_mean
from imp.evaluate.zero_shot import class_embeddings, top1_accuracy, zero_shot_predictions
from imp.model import Request


def _projection(x: np.ndarray, out: int, salt: int) -> np.ndarray:
  """A fixed non-linear map [batch, ...] -> [batch, out], the same for any batch split."""
  flat = np.asarray(x, np.float64).reshape(len(x), -1)
  w = np.random.default_rng(flat.shape[1] * 7 + salt).standard_normal((flat.shape[1], out))
  return np.tanh(flat @ w / np.sqrt(flat.shape[1])).astype(np.float32)


def fake_infer(request: Request, batch: dict) -> dict:
  """Deterministic per-row outputs of every requested kind (a stand-in for the model)."""
  out = {}
  for m in set(request.embed) | set(request.features):
    out[f"embedding/{m}"] = _projection(batch[m], 6, 1)
    out[f"features/{m}"] = _projection(batch[m], 5, 2)
  for _, head in request.classify:
    inputs = [_projection(batch[m], 4, 3) for m in sorted(batch)]
    out[f"logits/{head}"] = _projection(np.concatenate(inputs, axis=1), 3, 4)
  return {k: v for k, v in out.items()
          if k.split("/")[0] != "features" or k.split("/")[1] in request.features}


def _outputs(batches, request, key, extra=None):
  extra = extra or [None] * len(batches.batches)
  parts = [fake_infer(request, {**{k: v for k, v in b.items() if k != "mask"}, **(x or {})})[key]
           [b["mask"]] for b, x in zip(batches, extra, strict=True)]
  out = np.concatenate(parts)
  return clip_mean(out, batches.clips, key.startswith("embedding/")) if batches.clips > 1 else out


def _whole_split(suite: EvalSuite) -> dict[str, float]:
  """The metrics as the whole-split path computed them: every split stacked by eval_batches."""
  results = {}
  for e in suite.entries:
    m, request = e.modality, Request(embed=(e.modality,) if e.zero_shot else (),
                                     features=(e.modality,))

    def split(name, modality=m, e=e):
      return eval_batches(e.source, name, modality=modality, resolution=e.resolution,
                          batch_size=e.batch_size, spectrogram=e.spectrogram, frames=e.frames,
                          clips=e.clips if modality == "video" else 1)

    test = split(e.test_split)
    if e.zero_shot:
      prompts = prompt_tokens(e.source, e.text_length, e.templates)
      text = fake_infer(Request(embed=("text",)), {"text": prompts.reshape(-1, e.text_length)})
      class_emb = class_embeddings(text["embedding/text"].reshape(*prompts.shape[:2], -1))
      results[f"{e.name}/zero_shot_top1"] = top1_accuracy(
          zero_shot_predictions(_outputs(test, request, f"embedding/{m}"), class_emb),
          test.labels)
    if e.classifier:
      others = [split(e.test_split, f) for f in e.fuse[1:]]
      extra = [{k: v for o in parts for k, v in o.items() if k != "mask"}
               for parts in zip(*others, strict=True)] if others else None
      head = Request(classify=(((e.fuse or (m,))[0], e.head),), fuse=e.fuse)
      first = split(e.test_split, (e.fuse or (m,))[0])
      logits = _outputs(first, head, f"logits/{e.head}", extra)
      results[f"{e.name}/classifier_top1"] = top1_accuracy(logits.argmax(-1), test.labels)
    if e.linear_probe:
      train = split(e.train_split)
      results[f"{e.name}/linear_probe_top1"] = linear_probe(
          _outputs(train, request, f"features/{m}"), train.labels,
          _outputs(test, request, f"features/{m}"), test.labels).accuracy
      name = "raw_pixel_probe_top1" if m == "image" else "raw_input_probe_top1"
      results[f"{e.name}/{name}"] = linear_probe(train.raw, train.labels, test.raw,
                                                 test.labels).accuracy
    for a, b in e.retrieval:
      emb = {}
      for x in (a, b):
        if x == "text":
          data = e.source.split(e.test_split)
          tokens = np.stack([e.source.tokenizer.encode(
              e.source.label_templates[0].format(e.source.class_names[int(y)]), e.text_length)
              for y in data.fields["label"]])
          emb[x] = fake_infer(Request(embed=("text",)), {"text": tokens})["embedding/text"]
        else:
          emb[x] = _outputs(split(e.test_split, x), Request(embed=(x,)), f"embedding/{x}")
      positives = (retrieval.pair_positives(len(emb[a])) if e.retrieval_positives == "pair"
                   else retrieval.label_positives(test.labels, test.labels))
      for k, v in retrieval.bidirectional_recall(emb[a], emb[b], positives, (a, b)).items():
        results[f"{e.name}/retrieval/{k}"] = v
  return results


def _tones(n: int, seed: int) -> ArraySplit:
  rate, rng = 8000, np.random.default_rng(seed)
  labels = np.arange(n, dtype=np.int32) % 3
  waves = np.stack([np.sin(2 * np.pi * (300 + 200 * y) * np.arange(rate // 4) / rate)
                    + 0.3 * rng.standard_normal(rate // 4) for y in labels]).astype(np.float32)
  images = (rng.integers(0, 60, (n, 6, 6, 1)) + 60 * labels[:, None, None, None]).astype(np.uint8)
  return ArraySplit({"audio": waves, "sample_rate": np.full(n, rate), "image": images,
                     "label": labels})


@pytest.fixture(scope="module")
def digits():
  return load_source("digits", dict(source="sklearn_digits",
                                    label_templates=("a photo of the digit {}.", "{}")))


@pytest.fixture(scope="module")
def av_source():
  """Image + audio examples of 3 classes (an audio-visual dataset): 13 train, 11 test."""
  return DataSource("av", ("image", "audio", "text"), ("low", "mid", "high"),
                    {"train": _tones(13, 0), "test": _tones(11, 1)})


def test_stream_batches_equal_the_whole_split_batches(digits, av_source, tmp_path):
  video = load_source("clips", dict(source="arrayrecord", directory=_videos(tmp_path),
                                    clip_fps=8))
  cases = [(digits, dict(modality="image", resolution=(8, 8), batch_size=100)),
           (av_source, dict(modality="audio", resolution=None, batch_size=4,
                            spectrogram=(16, 8))),
           (video, dict(modality="video", resolution=(4, 4), batch_size=4, frames=4, clips=3))]
  for source, kwargs in cases:
    whole = eval_batches(source, "test", **kwargs)
    stream = EvalStream(source, "test", raw=True, **kwargs)
    batches = list(stream)
    assert len(batches) == len(whole.batches) == stream.num_batches
    for b, w in zip(batches, whole.batches, strict=True):
      np.testing.assert_array_equal(b["mask"], w["mask"])
      np.testing.assert_array_equal(b[kwargs["modality"]], w[kwargs["modality"]])
    rows = np.concatenate([b["raw"][b["mask"]] for b in batches])
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])[::whole.clips]
    raw = clip_mean(rows, whole.clips, normalize=False) if whole.clips > 1 else rows
    np.testing.assert_allclose(raw, whole.raw, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(labels, whole.labels)
    assert stream.spec()[kwargs["modality"]].shape == w[kwargs["modality"]].shape


def test_a_process_reads_only_its_rows_of_each_batch(digits):
  kwargs = dict(modality="image", resolution=(8, 8), batch_size=100)
  whole = list(EvalStream(digits, "test", **kwargs))
  part = list(EvalStream(digits, "test", rows=(50, 100), **kwargs))
  for w, p in zip(whole, part, strict=True):
    assert p["image"].shape == (50, 8, 8, 1)
    np.testing.assert_array_equal(p["image"], w["image"][50:])
    np.testing.assert_array_equal(p["mask"], w["mask"])  # the global mask


def test_streamed_suite_equals_the_whole_split_path(digits, av_source, tmp_path):
  video = load_source("clips", dict(source="arrayrecord", directory=_videos(tmp_path),
                                    clip_fps=8, label_templates=("a {} clip",)))
  evals = {
      # The default experiment's entry, at a batch that does not divide the 360 test images.
      "digits": dict(dataset="digits", modality="image", resolution=8, text_length=24,
                     batch_size=100, zero_shot=True, linear_probe=True, classifier=True,
                     retrieval=(("image", "text"),), retrieval_positives="label"),
      # Audio-visual: an audio probe and head, image <-> audio retrieval, a fused head.
      "spoken": dict(dataset="av", modality="audio", spectrogram=(16, 8), batch_size=4,
                     zero_shot=False, linear_probe=True, classifier=True),
      "av": dict(dataset="av", modality="image", resolution=6, spectrogram=(16, 8),
                 batch_size=4, zero_shot=False, linear_probe=False, classifier=True,
                 fuse=("image", "audio"), retrieval=(("image", "audio"),),
                 retrieval_positives="pair"),
      # Video: three clips per video (6 rows in batches of 4), zero-shot, head, retrieval.
      "videos": dict(dataset="clips", modality="video", resolution=4, frames=4, clips=3,
                     batch_size=4, zero_shot=True, linear_probe=False, classifier=True,
                     retrieval=(("video", "text"),), retrieval_positives="label"),
  }
  suite = EvalSuite(evals, {"digits": digits, "av": av_source, "clips": video})
  calls = set()

  def recording_infer(request, batch):
    calls.add((request, tuple(sorted((k, v.shape, str(v.dtype)) for k, v in batch.items()))))
    return fake_infer(request, batch)

  streamed = suite.run(recording_infer)
  whole = _whole_split(suite)
  assert set(streamed) == set(whole) == set(suite.metric_names)
  for name, value in whole.items():
    assert streamed[name] == pytest.approx(value, abs=1e-6), name
  assert set(suite.seconds) == set(evals) and all(s >= 0 for s in suite.seconds.values())
  # The programs compiled before step 1 are exactly the ones run calls, at the batch shape.
  listed = {(r, tuple(sorted((k, v.shape, str(v.dtype)) for k, v in b.items())))
            for r, b in suite.programs()}
  assert listed == calls


def test_raw_probe_off_drops_the_baseline(digits):
  evals = {"digits": dict(dataset="digits", modality="image", resolution=8, batch_size=100,
                          zero_shot=False, linear_probe=True, raw_probe=False)}
  suite = EvalSuite(evals, {"digits": digits})
  assert suite.metric_names == ("digits/linear_probe_top1",)
  assert set(suite.run(fake_infer)) == {"digits/linear_probe_top1"}


def test_raw_probe_fits_on_its_bounded_sample_named_in_the_result(digits):
  evals = {"digits": dict(dataset="digits", modality="image", resolution=8, batch_size=100,
                          zero_shot=False, linear_probe=True, raw_probe_examples=150)}
  suite = EvalSuite(evals, {"digits": digits})
  name = "digits/raw_pixel_probe_top1_first150"  # 1,437 train and 360 test images: sampled
  assert suite.metric_names == ("digits/linear_probe_top1", name)

  def first(split):  # the first 150 raw inputs and labels of the split, in stream order
    batches = list(EvalStream(digits, split, modality="image", resolution=(8, 8),
                              batch_size=100, raw=True))
    return [np.concatenate([b[k][b["mask"]] for b in batches])[:150] for k in ("raw", "label")]

  expected = linear_probe(*first("train"), *first("test")).accuracy
  assert suite.run(fake_infer)[name] == pytest.approx(expected, abs=1e-6)
  with pytest.raises(ValueError, match=r"evals.digits.raw_probe_examples=-1 must be a whole"):
    EvalSuite({"digits": dict(evals["digits"], raw_probe_examples=-1)}, {"digits": digits})
