"""Every config key: imp.config.schema's `KEYS` plus model.* and model.moe.*, read off
ModelConfig's and MoeConfig's fields (their type, default and docstring entry are the one
declaration of a model key). Here, above both imp.config and imp.model, because the schema
sits below the model."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import docstring_parser

from imp.config.schema import KEYS, REQUIRED, Key, value_at
from imp.model import ModelConfig, MoeConfig


@functools.cache  # all_keys runs once per override flag and per plan: parse each docstring once
def _field_docs(cls: type) -> dict[str, str]:
  """Each field's meaning, from the dataclass's docstring (its Google-style `Attributes:`
  section, the one place a model key is documented), on one line without a final period."""
  return {p.arg_name: " ".join(p.description.split()).rstrip(".")
          for p in docstring_parser.parse(cls.__doc__).params}


def _dataclass_keys(prefix: str, cls: type) -> list[Key]:
  docs, out = _field_docs(cls), []
  for f in dataclasses.fields(cls):
    default = (f.default if f.default is not dataclasses.MISSING else
               f.default_factory() if f.default_factory is not dataclasses.MISSING else REQUIRED)
    if dataclasses.is_dataclass(default):
      default = {}
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    out.append(Key(prefix + f.name, kind, default, docs.get(f.name, "")))
  return out


def all_keys() -> list[Key]:
  """KEYS plus model.* and model.moe.*, read off ModelConfig and MoeConfig (their fields and
  docstrings are the declaration: type, default and meaning in one place)."""
  return KEYS + _dataclass_keys("model.", ModelConfig) + _dataclass_keys("model.moe.",
                                                                        MoeConfig)



def describe(config: Any) -> list[str]:
  """One line per key: path = value (default ...): meaning; `*` keys once per entry."""
  lines = []
  keys = all_keys()
  parents = {k.path.rsplit(".", 1)[0] for k in keys if "." in k.path}
  parents |= {p.rsplit(".", 1)[0] for p in parents if p.endswith(".*")}
  for key in keys:
    if key.path in parents:
      continue  # a section: its keys follow, one line each
    matches = value_at(config, key.path)
    if not matches:
      if "*" in key.path:
        continue
      matches = [(key.path, "(unset)")]
    for path, value in matches:
      if hasattr(value, "to_dict"):
        value = value.to_dict()
      lines.append(f"{path} = {value!r}  [{key.type}, default {key.default!r}]  {key.doc}")
  return lines
