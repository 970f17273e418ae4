"""Reading experiment files: `--config path[:arg]` or a shipped experiment's name
(`--config digits`, `digits_moe:smoke`), and one experiment file reading another.

A path that is not a file here is also looked up among the shipped experiments, so
`experiments/digits.py` and `digits` load from any folder (a notebook's included).
"""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path
from types import ModuleType

# The shipped experiments: `experiments/` beside the `imp` package (the repository root of a
# clone and of its editable install).
SHIPPED = Path(__file__).resolve().parents[2] / "experiments"


def shipped() -> list[str]:
  """The names of the shipped experiments (`digits`, `imp_moe_l`, ...)."""
  return sorted(p.stem for p in SHIPPED.glob("*.py") if not p.stem.startswith("_"))


def resolve(spec: str) -> str:
  """`spec` ("path[:arg]" or "name[:arg]") with its path made a file that exists.

  Raises:
    FileNotFoundError: one line naming `spec`, with a did-you-mean among the shipped
      experiments.
  """
  path, sep, arg = spec.partition(":")
  if Path(path).is_file():
    return spec
  stem = Path(path).stem if path.endswith(".py") else path
  candidates = [SHIPPED / f"{stem}.py"] if "/" not in stem else []
  if Path(path).parent.name == "experiments":  # experiments/X.py from outside the clone
    candidates.append(SHIPPED / Path(path).name)
  for candidate in candidates:
    if candidate.is_file():
      return str(candidate) + sep + arg
  names = shipped()
  close = difflib.get_close_matches(Path(path).stem, names, n=1)
  hint = (f" Did you mean experiments/{close[0]}.py?" if close else
          f" Shipped experiments (by name or path): {', '.join(names)}.")
  raise FileNotFoundError(f"--config={spec}: no such file {path!r}.{hint}")


def resolve_argv(argv: list[str], *, strict: bool = False) -> list[str]:
  """A command line with `--config NAME[:arg]` (a shipped experiment's name, or
  experiments/X.py from another folder) made the file's path, which is what ml_collections'
  config flag loads. A spec that resolves to nothing raises `resolve`'s FileNotFoundError
  when `strict`, else is left for the caller's own error."""
  out = list(argv)
  for i, a in enumerate(out):
    spec = a.split("=", 1)[1] if a.startswith("--config=") else (
        out[i + 1] if a == "--config" and i + 1 < len(out) else None)
    if spec is None:
      continue
    try:
      resolved = resolve(spec)
    except FileNotFoundError:
      if strict:
        raise
      continue
    if a == "--config":
      out[i + 1] = resolved
    else:
      out[i] = f"--config={resolved}"
  return out


def from_file(spec: str):
  """`get_config([arg])` of the config file `spec` names ("path", "path:arg" or a shipped
  experiment's name), loaded by path as `imp.main --config` loads it."""
  path, sep, arg = resolve(spec).partition(":")
  module = load(path)
  return module.get_config(arg) if sep else module.get_config()


def load(path: str | Path) -> ModuleType:
  """The experiment file at `path`, executed as a module of its own (not in sys.modules)."""
  spec = importlib.util.spec_from_file_location(Path(path).stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def sibling(name: str, beside: str) -> ModuleType:
  """The experiment file `<name>.py` in the folder of `beside` (an experiment's `__file__`),
  loaded by path as `load` does: one config reading another (imp_b reads imp_moe_b).

  Experiment files are loaded by path (`--config experiments/X.py`), not imported as a
  package, so `from experiments.X import ...` works only when the repository root is the
  working directory; loading the sibling by its path works from anywhere. What several
  experiments share is library code and lives in an importable module
  (`imp.config.ablation`, `imp.config.digits`).
  """
  return load(Path(beside).resolve().with_name(f"{name}.py"))
