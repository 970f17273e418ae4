"""Multi-clip video evaluation: clip placement, averaging over clips, and its config errors."""

from __future__ import annotations

import os

import ml_collections
import numpy as np
import pytest

from imp.data import eval_batches, images, load_source, prepare, transforms
from imp.data.pipeline import video_features
from imp.evaluate.suite import EvalSuite, clip_mean
from imp.model import Request


def test_spaced_clip_indices_hand_derived():
  # 16 frames, clips of 4 frames 2 apart span 7: slack 9. Three clips start at 9*0//2 = 0,
  # 9*1//2 = 4 and 9*2//2 = 9 (the last frame, 15, ends the last clip).
  np.testing.assert_array_equal(transforms.spaced_clip_indices(16, 4, 2, 3),
                                [[0, 2, 4, 6], [4, 6, 8, 10], [9, 11, 13, 15]])
  for num_frames, frames, stride in ((16, 4, 2), (10, 3, 2), (3, 4, 1), (7, 7, 1)):
    np.testing.assert_array_equal(transforms.spaced_clip_indices(num_frames, frames, stride, 1),
                                  transforms.clip_indices(num_frames, frames, stride, None)[None])
  # Every start is distinct up to slack + 1 = 10 clips; 11 would repeat one.
  np.testing.assert_array_equal(transforms.spaced_clip_indices(16, 4, 2, 10)[:, 0], range(10))
  with pytest.raises(ValueError, match=r"10 distinct start\(s\).*11 clips.*valid: 1..10"):
    transforms.spaced_clip_indices(16, 4, 2, 11)


def test_clip_mean_hand_computed():
  x = np.array([[2.0, 0.0], [0.0, 5.0], [1.0, 1.0], [3.0, 3.0]])  # 2 videos x 2 clips
  np.testing.assert_allclose(clip_mean(x, 2, normalize=False), [[1.0, 2.5], [2.0, 2.0]])
  # Normalised first: (1, 0) and (0, 1) average to (0.5, 0.5), re-normalised to 45 degrees;
  # a video whose clips point the same way keeps that direction whatever their lengths.
  s = np.sqrt(0.5)
  np.testing.assert_allclose(clip_mean(x, 2, normalize=True), [[s, s], [s, s]], rtol=1e-6)
  with pytest.raises(ValueError, match="not a whole number of videos of 3 clips"):
    clip_mean(x, 3, normalize=False)


def _videos(tmp_path) -> str:
  """2 classes x 2 videos of 17 frames at 16 fps; frame t has the value 10 t everywhere."""
  root = tmp_path / "videos"
  for label in ("low", "high"):
    for clip in range(2):
      folder = root / label / f"clip{clip}"
      os.makedirs(folder)
      for t in range(17):
        images.write_image(str(folder / f"{t}.png"), np.full((4, 4), 10 * t, np.uint8))
  out = tmp_path / "prep"
  prepare.main(["video_folder", "--input", str(root), "--output", str(out), "--fps", "16",
                "--test-fraction", "0.5"])
  return str(out)


def _clip_value(video: np.ndarray) -> np.ndarray:
  """uint8 [batch, frames, H, W, C] -> [batch] mean pixel value in 0..255."""
  assert video.dtype == np.uint8  # the model normalises pixels itself
  return video.astype(np.float64).reshape(len(video), -1).mean(axis=1)


def fake_infer(request: Request, batch: dict) -> dict:
  """Outputs that depend on the clip, non-linearly, so the mean over clips is hand-known."""
  m = _clip_value(batch["video"])
  theta = m / 100.0
  return {
      "embedding/video": np.stack([np.cos(theta), np.sin(theta)], axis=1) * (1 + m[:, None]),
      "features/video": np.stack([m, m ** 2], axis=1),
      "logits/clips": np.stack([np.zeros_like(m), (m - 80.0) ** 2 / 500.0 - 2.0], axis=1),
  }


def _suite(directory: str, clips) -> EvalSuite:
  source = load_source("clips", dict(source="arrayrecord", directory=directory, clip_fps=8,
                                     label_templates=("{}",)))
  evals = {"clips": dict(dataset="clips", modality="video", resolution=4, frames=4,
                         batch_size=3, zero_shot=False, linear_probe=False, classifier=True,
                         clips=clips)}
  return EvalSuite(evals, {"clips": source})


def _collect(suite: EvalSuite, entry, request: Request, key: str) -> np.ndarray:
  """Output `key` per test video of the suite's streamed test split (with its raw inputs)."""
  outputs = [k for k in ("embedding/video", "features/video", "logits/clips") if k == key]
  stream = suite._stream(entry, "test", raw=True)
  return suite._collect(fake_infer, request, [stream], outputs, "test")[key]


def test_multi_clip_average_hand_computed(tmp_path):
  directory = _videos(tmp_path)
  # Clips of 4 frames 2 apart (16 fps at clip_fps 8) span 7 of 17 frames: slack 10. One clip
  # starts at frame 5: frames 5, 7, 9, 11, mean value 80. Three start at 0, 5, 10: mean values
  # 30, 80, 130.
  single, multi = _suite(directory, 1), _suite(directory, 3)
  entry_1, entry_3 = single.entries[0], multi.entries[0]
  emb_1 = _collect(single, entry_1, Request(embed=("video",)), "embedding/video")
  emb_3 = _collect(multi, entry_3, Request(embed=("video",)), "embedding/video")
  # Unit vectors at 0.3, 0.8 and 1.3 rad average to the direction 0.8 (their lengths differ:
  # the clips count equally because each is normalised first). One clip passes through as is.
  np.testing.assert_allclose(emb_3, [[np.cos(0.8), np.sin(0.8)]] * 2, rtol=1e-5)
  np.testing.assert_allclose(emb_1, [[81 * np.cos(0.8), 81 * np.sin(0.8)]] * 2, rtol=1e-5)
  test_3 = multi._stream(entry_3, "test")
  assert test_3.clips == 3 and sum(int(b["mask"].sum()) for b in test_3) == 6
  features = _collect(multi, entry_3, Request(features=("video",)), "features/video")
  np.testing.assert_allclose(features, [[80.0, (30**2 + 80**2 + 130**2) / 3]] * 2, rtol=1e-5)
  # The mean over clips is the middle clip here (the frame values are linear in time).
  np.testing.assert_allclose(_collect(multi, entry_3, Request(features=("video",)), "raw"),
                             _collect(single, entry_1, Request(features=("video",)), "raw"),
                             atol=1e-6)
  # Logit of class "low" (id 1; classes sort as high, low) per clip: (m - 80)^2 / 500 - 2, so
  # -2 for the middle clip alone but (3 - 2 + 3) / 3 = 4/3 > 0 averaged over three clips.
  logits = _collect(multi, entry_3, Request(classify=(("video", "clips"),)), "logits/clips")
  np.testing.assert_allclose(logits[:, 1], [4 / 3, 4 / 3], rtol=1e-5)
  labels = list(_collect(single, entry_1, Request(features=("video",)), "label"))
  assert sorted(labels) == [0, 1]
  assert single.run(fake_infer)["clips/classifier_top1"] == 0.5  # everything predicted "high"
  assert multi.run(fake_infer)["clips/classifier_top1"] == 0.5  # everything predicted "low"
  assert (np.argmax(logits, -1) == 1).all()


def test_one_clip_is_the_old_middle_clip(tmp_path):
  source = load_source("clips", dict(source="arrayrecord", directory=_videos(tmp_path),
                                     clip_fps=8))
  batches = eval_batches(source, "test", modality="video", resolution=(2, 2), batch_size=2,
                         frames=4, clips=1)
  data = source.split("test")
  middle = np.stack([video_features(data[i], 4, (2, 2), 8.0, None) for i in range(len(data))])
  np.testing.assert_array_equal(batches.batches[0]["video"], middle)
  # The raw-pixel baseline reads the clip normalised to [-1, 1].
  np.testing.assert_array_equal(batches.raw, (middle.astype(np.float32) / 127.5 - 1.0)
                                .reshape(len(data), -1))


@pytest.mark.parametrize("clips, message", [
    (0, r"evals\.clips\.clips=0: must be an integer >= 1"),
    (1.5, r"evals\.clips\.clips=1\.5: must be an integer >= 1"),
    (True, r"evals\.clips\.clips=True: must be an integer >= 1"),
])
def test_bad_clips_setting(tmp_path, clips, message):
  with pytest.raises(ValueError, match=message):
    _suite(_videos(tmp_path), clips)


def test_too_many_clips_and_clips_without_video(tmp_path):
  directory = _videos(tmp_path)
  suite = _suite(directory, 12)  # slack 10: at most 11 distinct clips
  with pytest.raises(ValueError, match=r"evals\.clips\.clips=12: dataset 'clips', split 'test', "
                                       r"example 0: .*valid: 1\.\.11"):
    suite.run(fake_infer)
  source = load_source("clips", dict(source="arrayrecord", directory=directory))
  evals = ml_collections.ConfigDict({"x": dict(dataset="clips", modality="text", clips=2,
                                               zero_shot=False, linear_probe=False)})
  with pytest.raises(ValueError, match=r"evals\.x\.clips=2: .*evaluates no video"):
    EvalSuite(evals, {"clips": source})


def test_classifier_and_probe_in_one_entry_each_get_their_outputs(tmp_path, monkeypatch):
  """The classifier's request must not replace the probe's (the probe needs features)."""
  from imp.evaluate import suite as suite_module
  from imp.evaluate.linear_probe import ProbeResult

  probed = []  # the probe itself is tested elsewhere; 2 videos per class are too few to fit it

  def record_probe(train_x, train_y, test_x, test_y):
    probed.append(np.asarray(train_x).shape)
    return ProbeResult(accuracy=0.25, l2=1.0, cv_accuracy=0.25)

  monkeypatch.setattr(suite_module, "linear_probe", record_probe)

  def strict_infer(request: Request, batch: dict) -> dict:  # only what was requested
    out = fake_infer(request, batch)
    wanted = {f"features/{m}" for m in request.features}
    wanted |= {f"embedding/{m}" for m in request.embed}
    wanted |= {f"logits/{head}" for _, head in request.classify}
    return {k: v for k, v in out.items() if k in wanted}

  source = load_source("clips", dict(source="arrayrecord", directory=_videos(tmp_path),
                                     clip_fps=8, label_templates=("{}",)))
  evals = {"clips": dict(dataset="clips", modality="video", resolution=4, frames=4,
                         batch_size=3, zero_shot=False, linear_probe=True, classifier=True,
                         train_split="test")}
  results = EvalSuite(evals, {"clips": source}).run(strict_infer)
  assert results["clips/classifier_top1"] == 0.5
  assert results["clips/linear_probe_top1"] == 0.25
  assert probed[0] == (2, 2)  # the features of the 2 videos, then the raw-pixel baseline
