"""`python -m imp.data.prepare` on small real folders, read back through the arrayrecord source."""

import collections
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import imp.data.arrayrecord_source  # noqa: F401  (registers "arrayrecord")
from imp.data import audio, eval_batches, load_source, task_dataset
from imp.data.images import write_image
from imp.data.prepare import main
from imp.data.sources import DIGIT_NAMES
from imp.tasks import Task, Variant

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_CLASS = 12
TONES = {"low": 440.0, "mid": 1200.0, "high": 3000.0}  # class -> tone frequency (Hz)
RATE = 8000


def _digits(per_class: int = PER_CLASS) -> dict[str, list[np.ndarray]]:
  """class name -> the first `per_class` scikit-learn digits, uint8 [8, 8, 1]."""
  from sklearn.datasets import load_digits

  digits = load_digits()
  images = np.clip(digits.images * 16.0, 0, 255).astype(np.uint8)[..., None]
  return {name: list(images[digits.target == label][:per_class])
          for label, name in enumerate(DIGIT_NAMES)}


def _write_image_folder(root, per_class: int = PER_CLASS) -> dict[str, list[np.ndarray]]:
  """Class sub-folders of real digits, alternating .png and .npy files."""
  images = _digits(per_class)
  for name, items in images.items():
    (root / name).mkdir(parents=True)
    for i, image in enumerate(items):
      if i % 2:
        np.save(root / name / f"{i:03d}.npy", image)
      else:
        write_image(str(root / name / f"{i:03d}.png"), image)
  return images


def _prepare(kind, src, out, *extra):
  return main([kind, "--input", str(src), "--output", str(out), *map(str, extra)])


def _examples(split):
  return [split[i] for i in range(len(split))]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("digits")
  return root, _write_image_folder(root)


@pytest.fixture(scope="module")
def prepared_digits(image_folder, tmp_path_factory):
  src, images = image_folder
  out = tmp_path_factory.mktemp("prepared") / "digits"
  meta = _prepare("image_folder", src, out, "--test-fraction", 0.25, "--seed", 3)
  assert meta["source"] == str(src)
  return out, meta, images


def test_image_folder_round_trips_exactly(prepared_digits):
  out, meta, images = prepared_digits
  data = load_source("d", dict(source="arrayrecord", directory=str(out)))
  assert data.class_names == tuple(sorted(DIGIT_NAMES))
  assert data.modalities == ("image", "text")
  assert sorted(os.listdir(out)) == ["metadata.json", "test.array_record", "train.array_record"]
  assert meta["fields"] == {"image": {"dtype": "uint8", "shape": [8, 8, 1]},
                            "label": {"dtype": "int32", "shape": []}}
  stored = collections.Counter()
  for split in ("train", "test"):
    for example in _examples(data.split(split)):
      assert example["image"].dtype == np.uint8 and example["label"].dtype == np.int32
      stored[(data.class_names[example["label"]], example["image"].tobytes())] += 1
  original = collections.Counter(
      (name, image.tobytes()) for name, items in images.items() for image in items)
  assert stored == original  # every image once, under its own class


def test_split_is_seeded_and_stratified(prepared_digits, tmp_path):
  out, meta, images = prepared_digits
  # 12 per class, 25% held out: exactly 3 per class in test, 9 in train.
  assert meta["splits"]["test"] == {"file": "test.array_record", "count": 30,
                                    "class_counts": [3] * 10}
  assert meta["splits"]["train"]["class_counts"] == [9] * 10
  data = load_source("d", dict(source="arrayrecord", directory=str(out)))
  np.testing.assert_array_equal(np.bincount(data.split("test").fields["label"]), [3] * 10)
  assert data.split("test").fields["image"].shape == (30, 8, 8, 1)
  # The same seed gives the same split; another seed another one.
  again = _prepare("image_folder", meta["source"], tmp_path / "a", "--test-fraction", 0.25,
                   "--seed", 3)
  _prepare("image_folder", meta["source"], tmp_path / "b", "--test-fraction", 0.25, "--seed", 4)
  assert again["splits"] == meta["splits"]
  first = load_source("a", dict(source="arrayrecord", directory=str(tmp_path / "a")))
  second = load_source("b", dict(source="arrayrecord", directory=str(tmp_path / "b")))
  np.testing.assert_array_equal(first.split("test").fields["image"],
                                data.split("test").fields["image"])
  assert not np.array_equal(second.split("test").fields["image"],
                            data.split("test").fields["image"])


def test_task_dataset_and_eval_batches_read_a_prepared_folder(prepared_digits):
  out, _, _ = prepared_digits
  data = load_source("d", dict(source="arrayrecord", directory=str(out),
                               label_templates=("the digit {}",)))
  task = Task(name="t/base", entry="t", dataset="d", objective="nce",
              modalities=("image", "text"), weight=1.0,
              variant=Variant("base", batch_size=8, resolution=(16, 16), text_length=20))
  batch = next(iter(task_dataset(data, task, seed=0, num_threads=1)))
  assert batch["image"].shape == (8, 16, 16, 1) and batch["image"].dtype == np.uint8
  assert batch["text"].shape == (8, 20) and batch["label"].shape == (8,)
  evals = eval_batches(data, "test", modality="image", resolution=(16, 16), batch_size=16)
  assert len(evals.batches) == 2 and evals.labels.shape == (30,)


def test_resize(image_folder, tmp_path):
  src, _ = image_folder
  meta = _prepare("image_folder", src, tmp_path / "o", "--resize", 16, 12)
  assert meta["fields"]["image"]["shape"] == [16, 12, 1]
  data = load_source("d", dict(source="arrayrecord", directory=str(tmp_path / "o")))
  assert data.split("train")[0]["image"].shape == (16, 12, 1)


def test_corrupt_file_fails_or_is_skipped(tmp_path, capsys):
  src = tmp_path / "in"
  _write_image_folder(src, per_class=4)
  (src / "seven" / "broken.png").write_bytes(b"GIF89a not a png")
  with pytest.raises(ValueError, match=r"broken.png: not an image file Pillow can read.*"
                                       r"--on-error skip"):
    _prepare("image_folder", src, tmp_path / "fail", "--test-fraction", 0.25)
  assert not os.path.exists(tmp_path / "fail")  # written beside it: nothing is left
  assert os.listdir(tmp_path) == ["in"]
  capsys.readouterr()
  meta = _prepare("image_folder", src, tmp_path / "skip", "--test-fraction", 0.25,
                  "--on-error", "skip")
  printed = capsys.readouterr().out
  assert "skipped 1 file(s):" in printed and "broken.png: not an image file Pillow" in printed
  assert printed.count("broken.png") == 1  # the path once, with a non-empty reason
  assert len(meta["skipped"]) == 1
  assert meta["skipped"][0]["path"].endswith("broken.png")
  assert meta["skipped"][0]["reason"].startswith("not an image file Pillow can read")
  assert sum(s["count"] for s in meta["splits"].values()) == 40
  with open(tmp_path / "skip" / "metadata.json") as f:
    assert json.load(f)["skipped"] == meta["skipped"]


def test_empty_inputs_and_empty_splits(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match=r"empty: nothing to read; image_folder expects image "
                                       r"files in class sub-folders"):
    _prepare("image_folder", tmp_path / "empty", tmp_path / "o")
  small = tmp_path / "small"
  _write_image_folder(small, per_class=2)
  with pytest.raises(ValueError, match=r"split 'test' is empty: too few examples"):
    _prepare("image_folder", small, tmp_path / "o", "--test-fraction", 0.1)
  with pytest.raises(ValueError, match=r"--input .*missing: no such directory"):
    _prepare("image_folder", tmp_path / "missing", tmp_path / "o")


def test_existing_output_needs_overwrite(prepared_digits, tmp_path):
  out, meta, _ = prepared_digits
  target = tmp_path / "copy"
  shutil.copytree(out, target)
  with pytest.raises(ValueError, match=r"already holds a prepared dataset .*--overwrite"):
    _prepare("image_folder", meta["source"], target)
  again = _prepare("image_folder", meta["source"], target, "--overwrite", "--test-fraction", 0.5)
  assert again["splits"]["test"]["count"] == 60


def test_source_errors(prepared_digits, tmp_path):
  out, _, _ = prepared_digits
  # A config that leaves the directory unset (a placeholder) names the key to set.
  with pytest.raises(ValueError, match=r"datasets.d.directory is not set; set it to a "
                                       r"directory prepared by .*--config.datasets.d.directory"):
    load_source("d", dict(source="arrayrecord", directory=None))
  with pytest.raises(ValueError, match=r"datasets.d.directory='.*gone' does not exist"):
    load_source("d", dict(source="arrayrecord", directory=str(tmp_path / "gone")))
  with pytest.raises(ValueError, match=r"metadata.json: missing; a directory prepared by"):
    load_source("d", dict(source="arrayrecord", directory=str(tmp_path)))
  broken = tmp_path / "broken"
  shutil.copytree(out, broken)
  os.remove(broken / "test.array_record")
  with pytest.raises(ValueError, match=r"test.array_record: missing; .*lists split 'test'"):
    load_source("d", dict(source="arrayrecord", directory=str(broken)))
  wrong = tmp_path / "wrong"
  shutil.copytree(out, wrong)
  with open(wrong / "metadata.json") as f:
    meta = json.load(f)
  meta["fields"]["text"] = {"dtype": "str", "shape": []}
  with open(wrong / "metadata.json", "w") as f:
    json.dump(meta, f)
  data = load_source("d", dict(source="arrayrecord", directory=str(wrong)))
  with pytest.raises(ValueError, match=r"train.array_record, record 0: record fields "
                                       r"\['image', 'label'\] do not match"):
    data.split("train")[0]
  meta["fields"].pop("text")
  meta["fields"]["image"]["shape"] = [28, 28, 1]
  with open(wrong / "metadata.json", "w") as f:
    json.dump(meta, f)
  data = load_source("d", dict(source="arrayrecord", directory=str(wrong)))
  with pytest.raises(ValueError, match=r"record 2: field 'image' is uint8 \[8, 8, 1\], but "
                                       r"metadata.json says uint8 \[28, 28, 1\]"):
    data.split("test")[2]


def test_command_line_subprocess(image_folder, tmp_path):
  src, _ = image_folder
  run = subprocess.run(
      [sys.executable, "-m", "imp.data.prepare", "image_folder", "--input", str(src),
       "--output", str(tmp_path / "o"), "--test-fraction", "0.25"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr
  assert "train 90, test 30 examples, 10 classes" in run.stdout
  data = load_source("d", dict(source="arrayrecord", directory=str(tmp_path / "o")))
  assert len(data.split("train")) == 90
  bad = subprocess.run(
      [sys.executable, "-m", "imp.data.prepare", "image_folder", "--input",
       str(tmp_path / "nothing"), "--output", str(tmp_path / "p")],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert bad.returncode == 1 and "error: --input" in bad.stderr
  assert "no such directory" in bad.stderr


def _tone(freq, seconds, amplitude):
  t = np.arange(int(seconds * RATE)) / RATE
  return amplitude * np.sin(2 * np.pi * freq * t)


@pytest.fixture(scope="module")
def tone_folder(tmp_path_factory):
  """class -> 6 WAV files of that class's tone, of different lengths and loudness."""
  root = tmp_path_factory.mktemp("tones")
  for name, freq in TONES.items():
    (root / name).mkdir()
    for i in range(6):
      audio.write_wav(root / name / f"{i}.wav", _tone(freq, 0.3 + 0.05 * i, 0.2 + 0.1 * i), RATE)
  return root


def test_audio_folder_waveforms_round_trip(tone_folder, tmp_path):
  meta = _prepare("audio_folder", tone_folder, tmp_path / "o", "--test-fraction", 0.5)
  assert meta["fields"] == {"audio": {"dtype": "float32", "shape": [None]},
                            "sample_rate": {"dtype": "int32", "shape": []},
                            "label": {"dtype": "int32", "shape": []}}
  assert meta["splits"]["test"]["class_counts"] == [3, 3, 3]
  data = load_source("a", dict(source="arrayrecord", directory=str(tmp_path / "o")))
  assert data.class_names == ("high", "low", "mid") and data.modalities == ("audio", "text")
  originals = {audio.read_wav(str(tone_folder / n / f"{i}.wav"))[0].tobytes(): n
               for n in TONES for i in range(6)}
  seen = set()
  for split in ("train", "test"):
    for example in _examples(data.split(split)):
      assert int(example["sample_rate"]) == RATE
      key = example["audio"].tobytes()
      assert originals[key] == data.class_names[example["label"]]
      seen.add(key)
  assert seen == set(originals)
  # Without --clip-seconds the waveforms differ in length: evaluation pads each example's
  # spectrogram to the task's length, and only the ragged field itself refuses to stack.
  evals = eval_batches(data, "test", modality="audio", resolution=None, batch_size=4,
                       spectrogram=(40, 64))
  assert evals.batches[0]["audio"].shape == (4, 40, 64, 1) and evals.labels.shape == (9,)
  with pytest.raises(ValueError, match=r"field 'audio' has examples of different shapes .* "
                                       r"--clip-seconds \(audio\)"):
    data.split("test").fields["audio"]


def test_audio_folder_log_mel_and_label_pattern(tone_folder, tmp_path):
  flat = tmp_path / "flat"
  flat.mkdir()
  for name in TONES:
    for i in range(6):
      shutil.copy(tone_folder / name / f"{i}.wav", flat / f"tone_{name}_{i}.wav")
  (flat / "README.wav").write_bytes(b"RIFF....")  # matches no label: reported, then skipped
  args = ("--log-mel", "--clip-seconds", 0.4, "--num-mel-bins", 32, "--test-fraction", 0.5,
          "--label-pattern", r"tone_(?P<label>[a-z]+)_\d+\.wav")
  with pytest.raises(ValueError, match=r"README.wav: --label-pattern .* does not match"):
    _prepare("audio_folder", flat, tmp_path / "o", *args)
  meta = _prepare("audio_folder", flat, tmp_path / "o", *args, "--on-error", "skip")
  assert [os.path.basename(s["path"]) for s in meta["skipped"]] == ["README.wav"]
  # 0.4 s at 8 kHz, 25 ms windows every 10 ms: 1 + (3200 - 200) // 80 = 38 frames.
  assert meta["fields"]["audio"] == {"dtype": "float32", "shape": [38, 32, 1]}
  data = load_source("a", dict(source="arrayrecord", directory=str(tmp_path / "o")))
  spectrograms = data.split("train").fields["audio"]
  labels = data.split("train").fields["label"]
  # Each class's tone peaks in its own mel bin, the same for all its files (the padded,
  # silent tail of the shorter files is flat, so take the peak over time).
  peak = {}
  for spec, label in zip(spectrograms, labels, strict=True):
    peak.setdefault(data.class_names[label], set()).add(int(spec[..., 0].max(axis=0).argmax()))
  assert all(len(b) == 1 for b in peak.values()) and len({min(b) for b in peak.values()}) == 3
  assert min(peak["low"]) < min(peak["mid"]) < min(peak["high"])


def test_speech_from_espeak(tmp_path):
  espeak = shutil.which("espeak-ng")
  if espeak is None:
    pytest.skip("espeak-ng is not installed")
  words = {"yes": ["yes", "yeah"], "no": ["no", "nope"]}
  for label, variants in words.items():
    (tmp_path / "in" / label).mkdir(parents=True)
    for i, word in enumerate(variants * 2):
      subprocess.run([espeak, "-s", str(140 + 20 * i), "-w", str(tmp_path / "in" / label /
                                                               f"{i}.wav"), word], check=True)
  meta = _prepare("audio_folder", tmp_path / "in", tmp_path / "o", "--log-mel",
                  "--clip-seconds", 1.0, "--test-fraction", 0.5)
  assert meta["splits"]["test"]["class_counts"] == [2, 2]
  data = load_source("s", dict(source="arrayrecord", directory=str(tmp_path / "o")))
  assert data.split("train").fields["audio"].shape[0] == 4


def test_jsonl_manifest_image_text_pairs(tmp_path):
  images = _digits(per_class=3)
  (tmp_path / "imgs").mkdir()
  rows = []
  for name, items in images.items():
    for i, image in enumerate(items):
      np.save(tmp_path / "imgs" / f"{name}{i}.npy", image)
      rows.append({"image": f"imgs/{name}{i}.npy", "text": f"a handwritten {name}",
                   "label": name, "part": "test" if i == 0 else "train"})
  with open(tmp_path / "m.jsonl", "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in rows)
  meta = _prepare("manifest", tmp_path / "m.jsonl", tmp_path / "o", "--split-by", "part")
  assert {s: v["count"] for s, v in meta["splits"].items()} == {"test": 10, "train": 20}
  assert "test_fraction" not in meta["options"]  # the column decided the split
  assert meta["fields"]["text"] == {"dtype": "str", "shape": []}
  data = load_source("m", dict(source="arrayrecord", directory=str(tmp_path / "o")))
  assert data.modalities == ("image", "text")
  by_text = {}
  for split in ("train", "test"):
    for example in _examples(data.split(split)):
      name = data.class_names[example["label"]]
      assert str(example["text"]) == f"a handwritten {name}"
      by_text.setdefault(name, []).append(example["image"].tobytes())
  for name, items in images.items():
    assert sorted(by_text[name]) == sorted(x.tobytes() for x in items)
  # A task with text reads the caption rather than label text.
  task = Task(name="t/base", entry="t", dataset="m", objective="nce",
              modalities=("image", "text"), weight=1.0,
              variant=Variant("base", batch_size=4, resolution=(8, 8), text_length=24))
  batch = next(iter(task_dataset(data, task, seed=0, num_threads=1)))
  assert batch["text"].shape == (4, 24)


def test_csv_manifest_audio_text_pairs(tone_folder, tmp_path):
  with open(tmp_path / "m.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["audio", "text"])
    for name in TONES:
      for i in range(6):
        writer.writerow([str(tone_folder / name / f"{i}.wav"), f"a {name} tone"])
    writer.writerow([str(tone_folder / "missing.wav"), "gone"])
  with pytest.raises(ValueError, match=r"missing.wav: cannot read \(no such file\)"):
    _prepare("manifest", tmp_path / "m.csv", tmp_path / "o")
  meta = _prepare("manifest", tmp_path / "m.csv", tmp_path / "o", "--on-error", "skip",
                  "--test-fraction", 0.25)
  assert meta["class_names"] == [] and len(meta["skipped"]) == 1
  assert {s: v["count"] for s, v in meta["splits"].items()} == {"train": 13, "test": 5}
  data = load_source("m", dict(source="arrayrecord", directory=str(tmp_path / "o")))
  assert data.modalities == ("audio", "text")
  texts = {str(e["text"]) for e in _examples(data.split("train"))}
  assert texts <= {"a low tone", "a mid tone", "a high tone"}


def test_mixed_grayscale_and_rgb_folder_is_converted_to_one_channel_count(tmp_path, capsys):
  rng = np.random.default_rng(0)
  for label, channels in (("a", 3), ("a", 3), ("a", 1), ("b", 3), ("b", 3), ("b", 1)) * 2:
    folder = tmp_path / "in" / label
    folder.mkdir(parents=True, exist_ok=True)
    write_image(str(folder / f"{len(os.listdir(folder))}_{channels}.png"),
                rng.integers(0, 255, (6, 6, channels), dtype=np.uint8))
  meta = _prepare("image_folder", tmp_path / "in", tmp_path / "rgb", "--test-fraction", 0.5)
  assert "converted 4 of 12 images to 3 channel(s) (--channels majority)" in (
      capsys.readouterr().out)
  source = load_source("mixed", dict(source="arrayrecord", directory=str(tmp_path / "rgb")))
  shapes = {e["image"].shape for s in ("train", "test") for e in _examples(source.split(s))}
  assert shapes == {(6, 6, 3)} and meta["options"]["channels"] == 3
  _prepare("image_folder", tmp_path / "in", tmp_path / "gray", "--channels", 1)
  assert "converted 8 of 12 images to 1 channel(s)" in capsys.readouterr().out
  with pytest.raises(ValueError, match=r"mixes 8 image\(s\) of 3 channel\(s\) with 4 of 1: "
                                       r".*_1.png.*--channels majority, 1 or 3"):
    _prepare("image_folder", tmp_path / "in", tmp_path / "fail", "--channels", "fail")
