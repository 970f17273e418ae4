"""One line for a bad command line: a config file or variant that fails, an unknown override key,
an override value of the wrong type.

absl and ml_collections report these as a chained traceback (or, for an unknown key, as a
quoted `KeyError` repr with escaped newlines). `diagnose` re-reads the command line against the
loaded config and names the first bad flag, what is valid, and a did-you-mean where one exists.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from imp.config import files
from imp.plan import config_keys


def innermost(e: BaseException) -> BaseException:
  """The exception at the bottom of `e`'s chain (`raise ... from` or raised while handling)."""
  seen = {id(e)}
  while (nxt := e.__cause__ or e.__context__) is not None and id(nxt) not in seen:
    seen.add(id(nxt))
    e = nxt
  return e


def one_line(e: BaseException) -> str:
  """`e`'s own message on one line (a KeyError's repr quoting is undone)."""
  message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
  lines = [line.strip() for line in str(message).replace("\\n", "\n").splitlines()]
  return " ".join(line for line in lines if line) or type(e).__name__


def _config_spec(argv: Sequence[str], default: str) -> str:
  spec = default
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      spec = a.split("=", 1)[1]
    elif a == "--config" and i + 1 < len(argv):
      spec = argv[i + 1]
  return spec


def _overrides(argv: Sequence[str]) -> list[tuple[str, str | None]]:
  """[(dotted key below config, value or None for a bare boolean flag)] in command-line order."""
  out = []
  for i, a in enumerate(argv):
    for prefix in ("--config.", "--noconfig."):
      if a.startswith(prefix):
        key, sep, value = a[len(prefix):].partition("=")
        if not sep:
          nxt = argv[i + 1] if i + 1 < len(argv) else None
          value = nxt if nxt is not None and not nxt.startswith("--") else None
        out.append((key, "False" if prefix == "--noconfig." and value is None else value))
  return out


def _declared(key: str) -> list[str]:
  """The schema's key names one level below `key`'s parent that match it (`*`: any name);
  [] when the schema does not declare a section there."""
  parts = key.split(".")
  names = []
  for k in config_keys.all_keys():
    path = k.path.split(".")
    head = path[:len(parts) - 1]
    if len(path) > len(parts) - 1 and all(a in ("*", b) for a, b in zip(head, parts[:-1],
                                                                       strict=True)):
      names.append(path[len(parts) - 1])
  return names


def _key_problem(config: Any, key: str) -> tuple[str | None, Any, Any]:
  """(problem, parent, leaf name) for `config.<key>`; problem is None when the key exists, or
  when the experiment leaves it out but the schema declares it (its default then holds, and
  the command line may set it: `--config.model.scan_unroll=2`)."""
  node, parts = config, key.split(".")
  for depth, part in enumerate(parts):
    here = ".".join(["config", *parts[:depth]])
    if isinstance(node, Mapping | ml_collections.ConfigDict):
      keys = [str(k) for k in node]
      declared = _declared(".".join(parts[:depth + 1]))
      if part not in keys and part in declared:
        return None, None, None
      if part not in keys:
        keys = sorted(set(keys) | set(declared) - {"*"})
        close = difflib.get_close_matches(part, keys, n=1)
        hint = f" Did you mean {here}.{close[0]}?" if close else ""
        valid = ", ".join(sorted(keys)) or "(none: it is empty)"
        return (f"--config.{key}: unknown key {part!r} in {here}; valid keys: {valid}.{hint}",
                None, None)
      if depth == len(parts) - 1:
        return None, node, part
      node = node[part]
    elif isinstance(node, list | tuple) and part.isdigit() and int(part) < len(node):
      if depth == len(parts) - 1:
        return None, node, int(part)
      node = node[int(part)]
    else:
      return (f"--config.{key}: {here} is a {type(node).__name__} value ({node!r}), it has no "
              f"key {part!r}.", None, None)
  return None, None, None


def _value_problem(key: str, value: str | None, parent: Any, leaf: Any) -> str | None:
  """A message when `value` cannot become the type the config declares for the key."""
  current = parent[leaf]
  declared = parent.get_type(leaf) if isinstance(parent, ml_collections.ConfigDict) else None
  declared = declared or (type(current) if current is not None else None)
  if declared is None or value is None and declared is bool:
    return None
  if value is None:
    return f"--config.{key} needs a value: --config.{key}=<{declared.__name__}>."
  if declared is bool:
    ok = value.lower() in ("true", "false", "1", "0")
  elif declared in (int, float):
    try:
      declared(value) if declared is float else int(value)
      ok = True
    except ValueError:
      ok = False
  elif declared in (tuple, list):
    try:
      ok = isinstance(ast.literal_eval(value), tuple | list)
    except (ValueError, SyntaxError):
      ok = False
  else:
    return None  # str, dicts and the rest: ml_collections' own message is already one line
  if ok:
    return None
  example = f" (now {current!r})" if current is not None else ""
  return f"--config.{key}={value!r}: expects {declared.__name__}{example}."


def diagnose(argv: Sequence[str], default_config: str) -> str | None:
  """The first problem with the command line's config file, variant or overrides, or None."""
  spec = _config_spec(argv, default_config)
  try:
    config = files.from_file(spec)
  except Exception as e:  # the config file's own error, whatever it raised
    message = one_line(e)  # get_config raised it itself: no wrapping chain to unwind
    return message if message.startswith("--config") else f"--config={spec}: {message}"
  for key, value in _overrides(argv):
    problem, parent, leaf = _key_problem(config, key)
    if problem is None and parent is not None:
      problem = _value_problem(key, value, parent, leaf)
    if problem:
      return problem
  return None
