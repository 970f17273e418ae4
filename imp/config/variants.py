"""`get_config(arg)` of an experiment file: one parser for every experiment's variants.

An argument is a comma-separated list of options: words ("smoke") and settings ("chips=256",
"condition=task"). Each experiment declares the ones it knows; anything else is an error
naming the file, the option and what is valid.

  def get_config(arg=None):
    options = parse_arg(arg, "experiments/x.py", words=("smoke",), settings={"chips": int})
    if "smoke" in options: ...
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

# A setting's values: a tuple of the valid strings, or a type such as int to convert with.
Setting = tuple[str, ...] | Callable[[str], Any]


def _describe(words: Sequence[str], settings: Mapping[str, Setting]) -> str:
  valid = list(words)
  for name, kind in settings.items():
    shown = "|".join(kind) if isinstance(kind, tuple) else getattr(kind, "__name__", "value")
    valid.append(f"{name}=<{shown}>")
  return ", ".join(valid) or "(none)"


def parse_arg(arg: str | None, where: str, *, words: Sequence[str] = (),
              settings: Mapping[str, Setting] | None = None,
              exclusive: Sequence[Sequence[str]] = ()) -> dict[str, Any]:
  """The options of `arg` ("" or None: none): word -> True, setting -> its value.

  Args:
    arg: the `path:arg` part of --config.
    where: the experiment file, for messages.
    words: the words this experiment knows, in the order its message lists them.
    settings: name -> the valid strings (a tuple) or a converter (e.g. int).
    exclusive: groups of words of which at most one may be given (e.g. budgets).

  Raises:
    ValueError: naming the unknown option (or bad value, or clash) and what is valid.
  """
  settings = dict(settings or {})
  out: dict[str, Any] = {}
  for option in (o.strip() for o in (arg or "").split(",")):
    if not option:
      continue
    name, has_value, value = option.partition("=")
    if (has_value and name not in settings) or (not has_value and name not in words):
      raise ValueError(f"{where}: unknown option {option!r}; valid: "
                       f"{_describe(words, settings)} (comma-separated).")
    if not has_value:
      out[name] = True
      continue
    kind = settings[name]
    if isinstance(kind, tuple):
      if value not in kind:
        raise ValueError(f"{where}: {name}={value!r}; valid: {', '.join(kind)}.")
      out[name] = value
    else:
      try:
        out[name] = kind(value)
      except ValueError:
        raise ValueError(f"{where}: {name}={value!r} is not a valid "
                         f"{getattr(kind, '__name__', 'value')}.") from None
  for group in exclusive:
    chosen = [w for w in group if w in out]
    if len(chosen) > 1:
      raise ValueError(f"{where}: options {', '.join(map(repr, chosen))} exclude each other; "
                       "give at most one.")
  return out
