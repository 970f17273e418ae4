"""The audio-visual digits experiment: its folders (espeak-ng) and an end-to-end run."""

import csv
import json
import os

import pytest
from conftest import missed_bars

from experiments.av_digits import get_config
from imp import experiment
from imp.data import load_sources, spoken_digits

needs_espeak = pytest.mark.skipif(
    spoken_digits.espeak_binary() is None,
    reason="espeak-ng is not installed (Debian: apt-get install espeak-ng); it synthesises the "
           "spoken digits")


# Chance is 10% for each; the 0-step model misses every bar (tests/test_bars.py). Measured
# (2026-12-07), 0-step model over seeds 0-2 / 1,000 steps, seed 0: probe 68.9-76.7% / 84.4%
# (a probe on random features of the spectrogram is strong), classifier 10% / 81.1%, R@1
# audio -> image 6.7-8.9% / 78.0%, image -> audio 8.6-10.6% / 90.0%. A full run: docs/data.md.
BARS = {"spoken/linear_probe_top1": 0.8, "spoken/classifier_top1": 0.5,
        "av/retrieval/audio_to_image/R@1": 0.3, "av/retrieval/image_to_audio/R@1": 0.3}


def _point_at(config, prepared):
  config.datasets.images.directory = prepared["images"]
  config.datasets.spoken.directory = prepared["spoken"]
  return config


@needs_espeak
def test_spoken_digits_folders_hold_out_voices_and_pair_by_label(tmp_path):
  prepared = spoken_digits.main([
      "--output", str(tmp_path / "av"), "--train-voices", "en", "en-us",
      "--test-voices", "en-029", "--speeds", "160", "--pitches", "50"])
  with open(tmp_path / "av" / "wav" / "manifest.csv", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 30  # 3 voices x 10 digits
  assert {r["voice"] for r in rows if r["split"] == "test"} == {"en-029"}
  assert {r["voice"] for r in rows if r["split"] == "train"} == {"en", "en-us"}
  meta = json.loads((tmp_path / "av" / "prepared" / "spoken" / "metadata.json").read_text())
  assert meta["splits"]["train"]["count"] == 20 and meta["splits"]["test"]["count"] == 10
  assert meta["fields"]["audio"]["shape"] == [98, 32, 1]  # 1 s at a 10 ms hop, 32 mel bins
  sources = load_sources(_point_at(get_config(), prepared).datasets)
  av = sources["av"]
  assert av.modalities == ("image", "audio", "text")
  # 1,797 images, 20% held out per class; every image finds a spoken digit of its class.
  assert len(av.split("train")) + len(av.split("test")) == 1797
  example = av.split("test")[0]
  assert example["image"].shape == (8, 8, 1) and example["audio"].shape == (98, 32, 1)
  # Regenerating gives byte-identical audio (espeak-ng is deterministic).
  again = spoken_digits.write_spoken_digits(str(tmp_path / "again"), train_voices=("en",),
                                            test_voices=(), speeds=(160,), pitches=(50,))
  first = tmp_path / "av" / "wav" / "en" / "seven_s160_p50.wav"
  assert first.read_bytes() == (tmp_path / "again" / "en" / "seven_s160_p50.wav").read_bytes()
  assert os.path.basename(again) == "manifest.csv"
  # The digest covers every file's name and bytes: equal for equal files, else different.
  digest, files = spoken_digits.speech_digest(str(tmp_path / "again"))
  assert files == 10 and len(digest) == 64
  assert spoken_digits.speech_digest(str(tmp_path / "again")) == (digest, files)
  with open(tmp_path / "again" / "en" / "seven_s160_p50.wav", "ab") as f:
    f.write(b"\0")
  assert spoken_digits.speech_digest(str(tmp_path / "again"))[0] != digest
  with pytest.raises(ValueError, match=r"voices \['en'\] are in both"):
    spoken_digits.main(["--output", str(tmp_path / "bad"), "--train-voices", "en",
                        "--test-voices", "en"])


@needs_espeak
@pytest.mark.slow
def test_av_digits_trains_end_to_end(tmp_path, av_digits_folders):
  config = _point_at(get_config(), av_digits_folders)
  config.total_steps = 1000  # of 1,500: keeps the test near 2 minutes on an idle 2-core CPU
  summary = experiment.train(config, tmp_path / "run")
  evals = summary["eval"]
  print(json.dumps({k: v for k, v in summary.items() if k != "step_cache"}, indent=1))
  assert not missed_bars(evals, BARS), evals
  # data_wait_share is a timing ratio (load-dependent): `python -m benchmarks.input_pipeline`
  # measures it; here it must only be reported.
  assert 0.0 <= summary["data_wait_share"] <= 1.0
  assert len(summary["task_steps"]) == 9  # 3 entries expanded into 4 + 3 + 2 variants
