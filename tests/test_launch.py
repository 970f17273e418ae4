"""launch/: the scripts pass shellcheck, and launch/README.md's commands use real flags."""

import importlib.util
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "launch").iterdir() if p.suffix in (".sh", ".sbatch"))
README = ROOT / "launch" / "README.md"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_launch_scripts_pass_shellcheck():
  assert len(SCRIPTS) == 3
  proc = subprocess.run(["shellcheck", "--severity=style", *map(str, SCRIPTS)],
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout


def _commands(text):
  """Shell commands of the README's ```bash blocks, continuation lines joined."""
  blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
  return [c.strip() for b in blocks for c in b.replace("\\\n", " ").splitlines() if c.strip()]


def _main_flags():
  source = (ROOT / "imp" / "main.py").read_text()
  return set(re.findall(r'DEFINE_\w+\(\s*"(\w+)"', source)) | {"config"}


def _get_config(path):
  path, _, arg = path.partition(":")  # `path:arg`, as ml_collections reads it
  spec = importlib.util.spec_from_file_location("readme_config", ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _imp_arguments(words):
  """The arguments imp.main receives: after `imp.main`, or after a launch script's name."""
  for i, word in enumerate(words):
    if word == "imp.main" or word.startswith("launch/"):
      rest = words[i + 1:]
      return rest[rest.index("--") + 1:] if "--" in rest else rest  # local.sh N -- <args>
  return None


def test_readme_commands_use_flags_and_config_keys_that_exist():
  flags, checked = _main_flags(), 0
  for command in _commands(README.read_text()):
    args = _imp_arguments(shlex.split(command))
    if args is None:
      continue
    config_path = next(a.split("=", 1)[1] for a in args if a.startswith("--config="))
    config = _get_config(config_path)
    for arg in args:
      if not arg.startswith("--"):
        continue
      name, _, value = arg[2:].partition("=")
      if name.startswith("config."):
        parent, *keys, last = ["config", *name.split(".")[1:]]
        parent = config
        for key in keys:
          assert key in parent, f"{command}: {name} is not a key of {config_path}"
          parent = parent[key]
        assert last in parent, f"{command}: {name} is not a key of {config_path}"
        # ml_collections cannot override a field whose value is a plain None.
        assert parent.get_type(last) is not type(None), f"{command}: {name} is None-typed"
      else:
        assert name in flags, f"{command}: --{name} is not an imp.main flag ({sorted(flags)})"
      checked += 1
  assert checked >= 15  # the README really has imp.main commands with flags


def test_readme_names_the_scripts_it_walks_through():
  text = README.read_text()
  for script in SCRIPTS:
    assert f"launch/{script.name}" in text
