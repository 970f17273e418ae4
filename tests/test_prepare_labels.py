"""`prepare`'s labels and held-out groups on a spoken-digit-like corpus of tones.

File names are `{digit}_{speaker}_{index}.wav`, as in the public spoken-digit corpus.
"""

import json
import os

import numpy as np
import pytest

import imp.data.arrayrecord_source  # noqa: F401  (registers "arrayrecord")
from imp.data import audio, load_source
from imp.data.prepare import main

RATE = 8000
SPEAKERS = ("jackson", "nicolas", "theo", "yweweler")
DIGITS = 3
PER_SPEAKER = 2
FULL = r"(?P<label>\d)_(?P<group>[a-z]+)_\d+\.wav"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("digits")
  t = np.arange(int(0.2 * RATE)) / RATE
  for d in range(DIGITS):
    for s, speaker in enumerate(SPEAKERS):
      for i in range(PER_SPEAKER):
        wave = 0.3 * np.sin(2 * np.pi * (300 + 400 * d + 20 * s) * t)
        audio.write_wav(root / f"{d}_{speaker}_{i}.wav", wave, RATE)
  return root


def _prepare(src, out, *extra):
  return main(["audio_folder", "--input", str(src), "--output", str(out), "--clip-seconds",
               "0.2", *map(str, extra)])


def _file_names(out, split):
  """The file names of a split's examples, recovered through their stored waveforms."""
  data = load_source("d", dict(source="arrayrecord", directory=str(out)))
  return data, [data.split(split)[i] for i in range(len(data.split(split)))]


def test_label_pattern_must_match_the_whole_name(corpus, tmp_path):
  # The README's old pattern: searched, it labelled every file by its speaker; matched whole,
  # it matches no file, and the message says so.
  with pytest.raises(ValueError, match=r"0_jackson_0.wav: --label-pattern '\(\?P<label>\[a-z\]"
                                       r"\+\)_\\d\+\\.wav' does not match the whole file name"):
    _prepare(corpus, tmp_path / "o", "--label-pattern", r"(?P<label>[a-z]+)_\d+\.wav")


def test_held_out_speakers_and_printed_classes(corpus, tmp_path, capsys):
  meta = _prepare(corpus, tmp_path / "o", "--label-pattern", FULL, "--group-pattern", FULL,
                  "--test-groups", "theo")
  printed = capsys.readouterr().out
  assert "found 3 classes: 0 (8), 1 (8), 2 (8)" in printed
  assert "test groups: theo" in printed
  assert meta["splits"]["test"]["groups"] == ["theo"]
  assert meta["splits"]["train"]["groups"] == ["jackson", "nicolas", "yweweler"]
  assert meta["splits"]["test"]["class_counts"] == [2, 2, 2]
  assert meta["splits"]["train"]["class_counts"] == [6, 6, 6]
  # The groups decided the split: no test_fraction is recorded.
  assert "test_fraction" not in meta["options"] and meta["options"]["test_groups"] == ["theo"]
  with open(tmp_path / "o" / "metadata.json") as f:
    assert json.load(f)["splits"] == meta["splits"]
  # Every test example is one of theo's recordings: its tone is 300 + 400 d + 40 Hz.
  data, test = _file_names(tmp_path / "o", "test")
  for example in test:
    d = int(data.class_names[example["label"]])
    spectrum = np.abs(np.fft.rfft(example["audio"]))
    assert spectrum.argmax() * RATE / len(example["audio"]) == pytest.approx(
        300 + 400 * d + 40, abs=6)


def test_random_whole_groups(corpus, tmp_path):
  meta = _prepare(corpus, tmp_path / "o", "--label-pattern", FULL, "--group-pattern", FULL,
                  "--test-fraction", "0.25", "--seed", "1")
  test_groups = meta["splits"]["test"]["groups"]
  assert len(test_groups) == 1 and meta["options"]["test_groups"] == test_groups
  assert not set(test_groups) & set(meta["splits"]["train"]["groups"])
  assert meta["splits"]["test"]["count"] == DIGITS * PER_SPEAKER
  assert meta["options"]["test_fraction"] == 0.25  # here the fraction did decide the split


def test_manifest_group_column(corpus, tmp_path):
  rows = ["audio,label,speaker"] + [f"{name},{name[0]},{name.split('_')[1]}"
                                    for name in sorted(os.listdir(corpus))]
  manifest = tmp_path / "m.csv"
  manifest.write_text("\n".join([rows[0]] + [f"{corpus}/{r}" for r in rows[1:]]) + "\n")
  meta = main(["manifest", "--input", str(manifest), "--output", str(tmp_path / "o"),
               "--group-column", "speaker", "--test-groups", "nicolas,theo"])
  assert meta["splits"]["test"]["groups"] == ["nicolas", "theo"]
  assert meta["splits"]["test"]["count"] == 2 * DIGITS * PER_SPEAKER
  assert meta["class_names"] == ["0", "1", "2"]


def test_group_errors(corpus, tmp_path):
  with pytest.raises(ValueError, match=r"--test-groups bob: no file is in such a group; the "
                                       r"groups found: jackson, nicolas, theo, yweweler"):
    _prepare(corpus, tmp_path / "o", "--label-pattern", FULL, "--group-pattern", FULL,
             "--test-groups", "theo,bob")
  with pytest.raises(ValueError, match=r"--test-groups needs --group-pattern"):
    _prepare(corpus, tmp_path / "o", "--label-pattern", FULL, "--test-groups", "theo")
  with pytest.raises(ValueError, match=r"all 4 groups .* would be held out"):
    _prepare(corpus, tmp_path / "o", "--label-pattern", FULL, "--group-pattern", FULL,
             "--test-groups", ",".join(SPEAKERS))


def test_class_names_rename_labels(corpus, tmp_path):
  meta = _prepare(corpus, tmp_path / "o", "--label-pattern", FULL,
                  "--class-names", "0=zero,1=one,2=two")
  assert meta["class_names"] == ["one", "two", "zero"]
  (tmp_path / "names.txt").write_text("0=zero\n1=one\n")  # a file; "2" keeps its name
  meta = _prepare(corpus, tmp_path / "p", "--label-pattern", FULL, "--class-names",
                  tmp_path / "names.txt")
  assert meta["class_names"] == ["2", "one", "zero"]
  (tmp_path / "names.json").write_text(json.dumps({"0": "zero", "1": "one", "2": "two"}))
  meta = _prepare(corpus, tmp_path / "q", "--label-pattern", FULL, "--class-names",
                  tmp_path / "names.json")
  assert meta["class_names"] == ["one", "two", "zero"]
  with pytest.raises(ValueError, match=r"--class-names renames '7', which no example has; the "
                                       r"labels found: 0, 1, 2"):
    _prepare(corpus, tmp_path / "r", "--label-pattern", FULL, "--class-names", "7=seven")
  with pytest.raises(ValueError, match=r"--class-names: 'zero' is not `label=name`"):
    _prepare(corpus, tmp_path / "r", "--label-pattern", FULL, "--class-names", "zero")


def test_a_class_with_no_examples(corpus, tmp_path, capsys):
  src = tmp_path / "in"
  src.mkdir()
  for name in os.listdir(corpus):
    if name.startswith("2_"):  # every "2" is a 20-byte, unreadable WAV
      (src / name).write_bytes((corpus / name).read_bytes()[:20])
    else:
      (src / name).write_bytes((corpus / name).read_bytes())
  with pytest.raises(ValueError, match=r"2_jackson_0.wav: not a readable audio file \(\S.*\)"):
    _prepare(src, tmp_path / "o", "--label-pattern", FULL)
  capsys.readouterr()
  meta = _prepare(src, tmp_path / "o", "--label-pattern", FULL, "--on-error", "skip")
  printed = capsys.readouterr().out
  assert len(meta["skipped"]) == 8 and all(s["reason"] for s in meta["skipped"])
  assert printed.count("2_jackson_0.wav") == 1  # named once, with its reason
  assert meta["warnings"] == ["class(es) '2' have no examples: every file of them was skipped "
                              "(the class ids stay, with no examples)."]
  assert "warning: class(es) '2' have no examples" in printed
