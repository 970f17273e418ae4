"""The evaluation and analysis commands on a tiny trained run, the ablation configs, and the
ablations notebook in its short mode (both end-to-end tests are slow)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from imp import experiment
from imp.analysis import ablations
from imp.experiment import markdown_table

REPO = Path(__file__).resolve().parents[1]

TINY = '''
from imp.config.digits import get_config as digits


def get_config(arg=None):
  c = digits("smoke")
  c.total_steps, c.log_every, c.eval_every, c.checkpoint_every = 6, 3, 0, 6
  c.checkpoint_best_metric = None
  c.model.depth = 1
  for task in c.tasks.values():
    task.variants = dict(base=task.variants.base.to_dict())
  c.evals.digits.resolution = 8
  c.evals.digits.linear_probe = False  # a 6-step model's features make lbfgs slow
  c.evals.digits.retrieval = (("image", "text"),)
  c.evals.digits.retrieval_positives = "label"
  return c
'''


def test_markdown_table_and_ablation_table():
  text = markdown_table({"digits/zero_shot_top1": 0.5, "digits/retrieval/image_to_text/R@1": 1.0},
                        step=7)
  assert "| digits | zero_shot_top1 | 50.00 |" in text
  assert "| digits | retrieval/image_to_text/R@1 | 100.00 |" in text and "step 7" in text
  # Sample std of (0.5, 0.7, 0.9) is 0.2 (deviations -0.2, 0, 0.2; 0.08 / 2 = 0.04).
  mean, std = ablations.mean_std([0.5, 0.7, 0.9])
  assert mean == pytest.approx(0.7) and std == pytest.approx(0.2)
  runs = [{"steps": 10, "eval": {"digits/linear_probe_top1": p, "digits/zero_shot_top1": 0.1}}
          for p in (0.5, 0.7, 0.9)]
  table = ablations.table("moe", {"dense": runs})
  assert "| dense | 3 | 10 | 70.0 ± 20.0 | 10.0 ± 0.0 |" in table


@pytest.mark.parametrize("study", [s for s in ablations.STUDIES if s != "modality_mix"])
def test_ablation_configs_build(study):
  variants, columns = ablations.STUDIES[study]
  configs = [ablations.load_config(study, v) for v in variants]
  assert len({c.total_steps for c in configs}) == 1  # same steps in every arm
  assert ablations.load_config(study, variants[0] + ",short").total_steps == 12
  assert ablations.load_config(study, variants[0] + ",long").total_steps == 1000
  with pytest.raises(ValueError, match="unknown variant"):
    ablations.load_config(study, "nope")
  for config in configs:  # every column's eval exists in every arm
    entries = {m.split("/")[0] for m, _ in columns}
    assert entries <= set(config.evals)
  if study == "resolution":  # equal image tokens per batch: 64 x (8/2)^2 = 16 x (16/2)^2
    mix = configs[1].tasks.digits_cls.variants
    assert {v.batch_size * (v.resolution // 2) ** 2 for v in mix.values()} == {1024}


def test_modality_mix_arms_train_alone_or_mixed_at_equal_compute_or_equal_steps_per_task():
  variants, _ = ablations.STUDIES["modality_mix"]
  arms = {v: ablations.load_config("modality_mix", v) for v in variants}
  assert set(arms["audio"].tasks) == {"spoken_cls"} and set(arms["audio"].evals) == {"spoken"}
  assert set(arms["image"].tasks) == {"images_cls"} and set(arms["image"].evals) == {"images"}
  for name in ("mix", "mix_moe", "mix_modality"):
    mix, x3 = arms[name], arms[name + "_x3"]
    assert set(mix.tasks) == {"images_cls", "spoken_cls", "av_nce"} == set(x3.tasks)
    assert set(mix.evals) == {"spoken", "images", "av"}
    assert mix.sampling.weighting == "uniform"  # 3 entries: each about a third of the steps
    # Equal compute, and equal steps per task: 3 x the single-modality run's steps.
    assert mix.total_steps == arms["audio"].total_steps == arms["image"].total_steps == 1500
    assert x3.total_steps == 3 * 1500
    assert mix.model.depth == arms["audio"].model.depth == 4
  assert "moe" not in arms["mix"].model or not arms["mix"].model.moe.get("num_experts")
  assert arms["mix_moe"].model.moe.router == "expert_choice"
  assert (arms["mix_modality"].model.moe.router, arms["mix_modality"].model.moe.condition) == (
      "top_k", "modality")
  assert ablations.load_config("modality_mix", "mix_x3,short").total_steps == 36
  with pytest.raises(ValueError, match="unknown variant"):
    ablations.load_config("modality_mix", "nope")
  # A modality the arm does not train is "-" in the table.
  runs = [{"steps": 12, "eval": {"spoken/classifier_top1": 0.5, "spoken/linear_probe_top1": 0.25},
           "task_steps": {"spoken_cls/base": 5, "spoken_cls/droptoken": 7}}]
  assert "| audio | 1 | 12 | 12 / - / - | 50.0 (1 seed) | 25.0 (1 seed) | - | - | - |" in (
      ablations.table("modality_mix", {"audio": runs}))
  # Steps per entry, summed over its variants, mean over seeds.
  mixed = [{"steps": 12, "eval": {}, "task_steps": {"images_cls/base": 4, "av_nce/base": 8}},
           {"steps": 12, "eval": {}, "task_steps": {"images_cls/half_res": 7, "av_nce/base": 5}}]
  assert "| mix | 2 | 12 | - / 6 / 6 | - | - | - | - | - |" in ablations.table(
      "modality_mix", {"mix": mixed})


def test_modality_mix_interference_table_reads_each_pair_from_its_row_and_column():
  tasks, _ = ablations.INTERFERENCE["modality_mix"]
  assert tasks == ("spoken_cls/base", "images_cls/base", "av_nce/base")

  def run(scale):  # I[i][j]: task i's loss under a step on task j, in a shuffled task order
    order = ["av_nce/base", "spoken_cls/base", "images_cls/base"]
    matrix = [[scale * (10 * i + j) for j in range(3)] for i in range(3)]
    return {"selections": {"encoder": {"tasks": order, "interference": matrix,
                                       "sign_purity_mean_distance_from_half": 0.25 * scale}}}

  text = ablations.interference_table("modality_mix", {"mix": [run(0.01), run(0.03)]})
  header, _, row = text.splitlines()
  assert header.count("|") == row.count("|") == 8  # no "|" inside a header or cell
  # audio <- image = I[spoken=1][images=2] = 12 x scale; image <- audio = 21; audio <- NCE = 10;
  # image <- NCE = 20: means over scales 0.01 and 0.03, sample std sqrt(2) x 0.01 x value.
  assert row == ("| mix | 2 | +0.240 ± 0.170 | +0.420 ± 0.297 | +0.200 ± 0.141 | +0.400 ± 0.283 "
                 "| +0.005 ± 0.004 |")


@pytest.mark.slow
def test_commands_on_a_tiny_run(tmp_path):
  from imp.analysis import interference, plots

  config_path = tmp_path / "tiny.py"
  config_path.write_text(TINY)
  workdir = tmp_path / "run"
  experiment.train(ablations.config_from_file(str(config_path)), workdir)

  results = experiment.evaluate(ablations.config_from_file(str(config_path)), workdir)
  saved = json.loads((workdir / "evaluation.json").read_text())
  assert saved["step"] == 6 and saved["results"] == results
  for k in (1, 5, 10):
    assert 0.0 <= results[f"digits/retrieval/text_to_image/R@{k}"] <= 1.0
  assert "| digits | zero_shot_top1 |" in (workdir / "evaluation.md").read_text()

  interference.main(["--config", str(config_path), "--workdir", str(workdir), "--batches", "2"])
  out = json.loads((workdir / "analysis" / "interference.json").read_text())
  ffn = out["selections"]["ffn_l0"]
  assert ffn["tasks"] == ["digits_cls/base", "digits_label_nce/base"]
  matrix = np.array(ffn["interference"])
  np.testing.assert_allclose(np.diag(matrix), 1.0)
  assert np.isfinite(np.array(ffn["affinity"])).all()
  assert sum(ffn["sign_purity_histogram"]) == pytest.approx(1.0)
  assert (workdir / "analysis" / "interference_ffn_l0.png").exists()
  with pytest.raises(ValueError, match=r"\['nope/base'\] are not task variants.*valid: "
                     r"digits_cls/base, digits_label_nce/base"):
    interference.main(["--config", str(config_path), "--workdir", str(workdir),
                       "--tasks", "digits_cls/base,nope/base"])

  plots.main(["--config", str(config_path), "--workdir", str(workdir)])
  assert (workdir / "analysis" / "loss_curves.png").exists()
  assert (workdir / "analysis" / "task_counts.png").exists()


@pytest.mark.slow
def test_ablations_notebook_short(tmp_path):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  folder = REPO / "experiments" / "notebooks"  # the notebook runs in its own folder
  nb = nbformat.read(folder / "ablations.ipynb", as_version=4)
  # Two of the three studies (5 runs, not 9): the third's configs build in
  # test_ablation_configs_build and its weighted-sum step trains in test_weighted_sum.
  studies = ("resolution", "moe")
  env = dict(ABLATIONS_SHORT="1", ABLATIONS_ROOT=str(tmp_path),
             ABLATIONS_STUDIES=",".join(studies))
  os.environ.update(env)
  try:
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(folder)}}).execute()
  finally:
    for key in env:
      del os.environ[key]
  assert (tmp_path / "ablations.png").exists()
  assert not (tmp_path / "objectives").exists()
  for study in studies:
    for v in ablations.STUDIES[study][0]:
      summary = json.loads((tmp_path / study / v / "seed0" / "summary.json").read_text())
      assert summary["steps"] == 12


@pytest.mark.slow
def test_modality_mix_interference_runs_once_per_mixed_run(tmp_path, monkeypatch,
                                                            av_digits_folders):
  # The study reads data/av_digits/prepared from where it runs, as its command does.
  prepared = Path(av_digits_folders["images"]).parent
  (tmp_path / "data" / "av_digits").mkdir(parents=True)
  (tmp_path / "data" / "av_digits" / "prepared").symlink_to(prepared)
  monkeypatch.chdir(tmp_path)
  root = tmp_path / "runs"
  config = ablations.load_config("modality_mix", "mix,short")
  experiment.train(config, root / "modality_mix" / "mix" / "seed0")

  found = ablations.run_interference("modality_mix", root, [0], budget="short")
  assert list(found) == ["mix"]  # the one finished run; arms without a run are skipped
  saved = root / "modality_mix" / "mix" / "seed0" / ablations.INTERFERENCE_FILE
  encoder = found["mix"][0]["selections"]["encoder"]
  assert sorted(encoder["tasks"]) == sorted(ablations.INTERFERENCE["modality_mix"][0])
  np.testing.assert_allclose(np.diag(encoder["interference"]), 1.0)  # I(i, i) = 1 by eq. 2
  assert 0.0 <= encoder["sign_purity_mean_distance_from_half"] <= 0.5
  assert found["mix"][0]["checkpoint_step"] == 12
  written = saved.stat().st_mtime_ns
  assert ablations.run_interference("modality_mix", root, [0], budget="short") == found
  assert saved.stat().st_mtime_ns == written  # read, not computed again
  assert ablations.interference_table("modality_mix", found).splitlines()[2].startswith(
      "| mix | 1 | ")
