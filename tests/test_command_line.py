"""The command line as a user meets it: one line and exit status 2 for every bad flag, and
`imp` importable, its configs loadable and `python -m imp.main` runnable from any folder."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from imp import flag_errors
from imp.config import files as configs
from imp.data import sources

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "experiments" / "digits.py")


def _main(*flags, cwd=ROOT):
  """`python -m imp.main` as installed (no PYTHONPATH), in `cwd`."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  return subprocess.run([sys.executable, "-m", "imp.main", *flags], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flags, expected", [
    (["--config.total_step=5"],
     "FATAL --config.total_step: unknown key 'total_step' in config; valid keys: "),
    (["--config.model.depht=2"], "Did you mean config.model.depth?"),
    (["--config.modle.depth=2"], "unknown key 'modle' in config; "),
    (["--config.total_steps=abc"], "FATAL --config.total_steps='abc': expects int (now 4000)."),
    (["--config.model.scan_layers=maybe"], "--config.model.scan_layers='maybe': expects bool"),
    (["--config.seed", "x"], "--config.seed='x': expects int"),
    (["--workdri=/tmp/x"], "Unknown command line flag 'workdri'. Did you mean: workdir ?"),
])
def test_bad_override_is_one_line_naming_the_key_with_exit_status_2(flags, expected):
  proc = _main("--config", DIGITS, *flags)
  assert proc.returncode == 2, proc.stderr
  assert expected in proc.stderr
  assert "Traceback" not in proc.stderr + proc.stdout
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("spec, expected", [
    (f"{DIGITS}:nosuch", "unknown option 'nosuch'; valid: smoke (comma-separated)."),
    (f"{ROOT}/experiments/imp_moe_l.py:chips=x", "chips='x' is not a valid int."),
    (f"{ROOT}/experiments/ablation_moe.py:moe5", "valid: dense, moe4, moe16"),
    (f"{ROOT}/experiments/nope.py", "no such file"),
])
def test_bad_config_variant_or_file_is_one_line(spec, expected):
  proc = _main("--config", spec)
  assert proc.returncode == 2, proc.stderr
  assert expected in proc.stderr and "Traceback" not in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_schema_key_the_experiment_leaves_out_can_be_set(tmp_path):
  """model.scan_unroll is declared by the schema (default "auto"), not by the digits experiment."""
  proc = _main("--config", DIGITS, "--config.model.scan_unroll=2", "--mode=describe")
  assert proc.returncode == 0, proc.stderr
  assert "model.scan_unroll = 2  [int | str, default 'auto']" in proc.stdout


def test_debug_shows_the_traceback():
  proc = _main("--config", DIGITS, "--config.total_step=5", "--debug")
  assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_diagnose_names_nested_keys_and_list_indices():
  argv = ["--config", DIGITS, "--config.optimizer.learning_rat=1"]
  assert "Did you mean config.optimizer.learning_rate?" in flag_errors.diagnose(argv, DIGITS)
  assert flag_errors.diagnose(["--config", DIGITS, "--config.seed=3"], DIGITS) is None
  assert flag_errors.one_line(KeyError("'x'\nDid you mean y?")) == "'x' Did you mean y?"


@pytest.mark.parametrize("settings, expected", [
    ({"source": "sklearn_digits", "test_fractoin": 0.1},
     "datasets.d.test_fractoin is not a setting of source 'sklearn_digits'; valid settings: "
     "label_templates, split_seed, test_fraction"),
    ({"source": "arrayrecord", "diretory": "/x"}, "Did you mean datasets.d.directory?"),
    ({"source": "arrayrecord", "directory": None},
     "datasets.d.directory is not set; set it to a directory prepared by"),
])
def test_bad_data_source_settings_list_the_valid_ones(settings, expected):
  with pytest.raises(ValueError) as e:
    sources.load_source("d", settings)
  assert expected in str(e.value)


def test_imp_and_every_experiment_load_from_another_folder(tmp_path):
  """Python 3.12 has no stdlib `imp`: the installed package is found from any folder, and an
  experiment that reads a sibling file (imp_b, m3sat, the ablations) loads by path."""
  script = tmp_path / "elsewhere.py"
  script.write_text(
      "import sys\nfrom pathlib import Path\nimport imp, imp.main\n"
      "from imp.config import files as configs\nprint(Path(imp.__file__).resolve().parent)\n"
      "for path in sys.argv[1:]:\n  assert configs.from_file(path).total_steps > 0, path\n")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  files = sorted(str(p) for p in (ROOT / "experiments").glob("*.py"))
  proc = subprocess.run([sys.executable, str(script), *files], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert Path(proc.stdout.strip()) == ROOT / "imp"
  assert len(files) >= 12


def test_sibling_loads_the_file_beside_without_registering_it():
  before = set(sys.modules)
  fashion = configs.sibling("fashion_mnist", str(ROOT / "experiments" / "ablation_moe.py"))
  assert Path(fashion.__file__) == ROOT / "experiments" / "fashion_mnist.py"
  assert fashion.get_config().tasks and set(sys.modules) == before


@pytest.mark.slow
def test_main_trains_from_another_folder(tmp_path):
  proc = _main("--config", f"{ROOT}/experiments/ablation_moe.py:dense,short",
               f"--workdir={tmp_path / 'run'}", "--config.model.depth=1",
               "--config.model.width=32", "--config.model.mlp_dim=64", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  out = proc.stdout + proc.stderr
  assert out.count("== summary") == 1
  # The compile table is logged once (absl's root handler used to print every line a second
  # time), and it lists every program the step cache compiled.
  assert out.count("compiled before step 1:") == 1, out[-3000:]
  totals = re.findall(r"^(\d+) programs: [\d.]+ s of compiler time", out, flags=re.M)
  assert totals == [str(summary["step_cache"]["misses"])], (totals, summary["step_cache"])


def test_summary_of_a_run_resumed_at_its_end_gives_no_speed():
  from imp.main import _summary_lines

  cache = dict(size=10, misses=10, hits=48, compile_seconds=20.0, compile_share=0.216,
               xla_compiles_after_warmup=0)
  summary = dict(steps=700, steps_this_run=0, wall_seconds=92.5, steps_per_second=None,
                 step_cache=cache, data_wait_share=None, task_steps={}, eval={"a/top1": 0.25})
  lines = _summary_lines(summary)
  assert lines[0] == "steps: 700 (0 this run) in 92.5s" and "None" not in "\n".join(lines)
  summary.update(steps_this_run=700, steps_per_second=3.8)
  assert _summary_lines(summary)[0] == "steps: 700 (700 this run) in 92.5s, 3.8 steps/s"
