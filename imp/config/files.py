"""Reading experiment files by path: `--config path[:arg]`, and one experiment file reading
another."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def from_file(spec: str):
  """`get_config([arg])` of the config file `spec` names ("path" or "path:arg"), loaded by
  path as `imp.main --config` loads it."""
  path, sep, arg = spec.partition(":")
  if not Path(path).is_file():
    raise FileNotFoundError(f"--config={spec}: no such file {path!r}.")
  module = load(path)
  return module.get_config(arg) if sep else module.get_config()


def load(path: str | Path) -> ModuleType:
  """The experiment file at `path`, executed as a module of its own (not in sys.modules)."""
  spec = importlib.util.spec_from_file_location(Path(path).stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def sibling(name: str, beside: str) -> ModuleType:
  """The experiment file `<name>.py` in the folder of `beside` (an experiment's `__file__`).

  Experiment files are loaded by path (`--config experiments/X.py`), not imported as a
  package, so `from experiments.X import ...` works only when the repository root is the
  working directory. Loading the sibling by its path works from anywhere: another directory,
  a script elsewhere, a notebook in its own folder.
  """
  path = Path(beside).resolve().with_name(f"{name}.py")
  key = f"_imp_experiment_{path.parent.name}_{name}"
  if key not in sys.modules:
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
  return sys.modules[key]
