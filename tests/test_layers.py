"""The packages of `imp` form floors, and every import points down a floor (imports inside
functions count): the layer diagram of docs/architecture.md, checked on the source.

A command line (`imp.main`, `imp.experiment`, a package's `__main__`) composes the floors, so
it sits on the top one. On the building-block floor the packages may import one another
without a cycle; on the floor of the loop, the evaluation and the analysis, none imports
another (the experiment passes hooks in)."""

import ast
import collections
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = (
    ("config", "paths"),                                      # typed schema, one notion of a path
    ("tasks", "data", "model", "objectives", "parallel"),     # building blocks
    ("step",),          # the pure train step, train state, optimizer, shardings, checkpoints
    ("plan",),          # config -> Plan -> compiled, sized programs (+ the step cache)
    ("run",),           # open / restore a run, inference programs: what the three share
    ("train", "evaluate", "analysis"),                        # none imports another
    ("experiment", "main", "flag_errors"),                    # command lines
)
FLOOR = {part: i for i, parts in enumerate(FLOORS) for part in parts}
TOP = len(FLOORS) - 1


def _module(path: Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str:
  """The floor entry of an `imp.*` module: its package under imp, or a top-level module."""
  return module.split(".")[1] if "." in module else "imp"


def _floor(module: str) -> int:
  if module.endswith(".__main__"):  # `python -m imp.<package>`: a command line
    return TOP
  return FLOOR[_part(module)]


def _targets(module: str, path: Path) -> set[str]:
  """Every imp module `path` imports, at any depth of its code (function bodies included)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      assert node.level == 0, f"{module}: relative import (imp imports by full name)"
      if node.module == "imp":  # from imp import paths, experiment
        out |= {f"imp.{a.name}" for a in node.names}
      elif node.module:
        out.add(node.module)
  return {t for t in out if t.startswith("imp.")}


def _edges() -> dict[str, set[str]]:
  return {_module(p): _targets(_module(p), p) for p in sorted((ROOT / "imp").rglob("*.py"))}


def _violations(edges: dict[str, set[str]]) -> list[str]:
  """Every import that points up a floor, or across the loop's floor, or into an unknown
  package; then any cycle among the packages of one floor."""
  bad, within = [], collections.defaultdict(set)
  for module, targets in edges.items():
    for target in targets:
      if _part(target) not in FLOOR:
        bad.append(f"{module} imports {target}: package {_part(target)!r} is on no floor")
        continue
      here, there = _floor(module), _floor(target)
      if _part(module) == _part(target) and here == there:
        continue  # inside one package
      if there > here:
        bad.append(f"{module} (floor {here}) imports {target} (floor {there}): up")
      elif there == here and here == FLOOR["train"]:
        bad.append(f"{module} imports {target}: the loop, evaluation and analysis are peers")
      elif there == here:
        within[_part(module)].add(_part(target))
  try:
    graphlib.TopologicalSorter(within).prepare()
  except graphlib.CycleError as e:
    bad.append(f"packages import each other in a cycle: {' -> '.join(e.args[1])}")
  return bad


def test_every_package_is_on_a_floor():
  parts = {_part(_module(p)) for p in (ROOT / "imp").rglob("*.py")} - {"imp"}
  assert parts == set(FLOOR), parts ^ set(FLOOR)


def test_imports_point_down():
  assert _violations(_edges()) == []


@pytest.mark.parametrize("module,target,message", [
    ("imp.config.schema", "imp.model", "up"),                 # schema reading the model
    ("imp.plan.plan", "imp.run.restore", "up"),
    ("imp.analysis.ablations", "imp.experiment", "up"),
    ("imp.train.loop", "imp.evaluate.suite", "peers"),
    ("imp.data.sources", "imp.nowhere", "on no floor"),
])
def test_an_import_that_points_up_is_named(module, target, message):
  """The check itself: one planted upward (or sideways) edge fails, naming both ends."""
  edges = _edges()
  edges[module] = edges[module] | {target}
  (problem,) = _violations(edges)
  assert module in problem and target in problem and message in problem


def test_a_cycle_on_the_building_block_floor_is_named():
  edges = _edges()
  edges["imp.model.encoder"] = edges["imp.model.encoder"] | {"imp.parallel.rules"}
  (problem,) = _violations(edges)  # parallel.rules imports imp.model
  assert "cycle" in problem and "model" in problem and "parallel" in problem


def test_commands_sit_on_top():
  assert _floor("imp.evaluate.__main__") == _floor("imp.analysis.ablations.__main__") == TOP
  assert _floor("imp.evaluate.suite") == _floor("imp.train.loop") < TOP
