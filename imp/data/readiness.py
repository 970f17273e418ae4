"""Which datasets of a config cannot be read yet, found before any is opened.

A paper config (experiments/imp_b.py, imp_moe_b.py, imp_moe_l.py) names datasets that are not
shipped: a folder to prepare, a TFDS dataset to build, a SentencePiece model to give. Loading
the sources would stop at the first of them; `unprepared` lists them all at once, with the
key to set for each, so a newcomer learns in one message what a run needs (and that the dry
run needs none of it).
"""

from __future__ import annotations

from collections.abc import Mapping

from imp.data import tfds_source

# The sources whose data sits in a folder that `python -m imp.data.prepare` (or the user)
# writes: unset, nothing can be read.
_FOLDER_SOURCES = ("arrayrecord", "idx")


def _needs(name: str, entry: Mapping) -> list[str]:
  """The `--config.datasets.<name>...` settings this dataset still needs."""
  key = f"--config.datasets.{name}"
  source = entry.get("source")
  needs = []
  if source in _FOLDER_SOURCES and entry.get("directory") is None:
    needs.append(f"{key}.directory=DIR (a folder `python -m imp.data.prepare` wrote)")
  if source == "tfds":
    try:  # the very check the tfds source makes when it loads (no download, no read)
      tfds_source._builder(name, entry["tfds_name"], entry.get("data_dir"))
    except ValueError:
      needs.append(f"{key}.data_dir=DIR (where `tfds build {entry['tfds_name']} "
                   "--file_format=array_record` wrote it)")
  tokenizer = entry.get("tokenizer") or {}
  if tokenizer.get("name") == "sentencepiece" and tokenizer.get("model_file") is None:
    needs.append(f"{key}.tokenizer.model_file=PATH (a SentencePiece .model)")
  return needs


def unprepared(datasets: Mapping) -> dict[str, list[str]]:
  """dataset name -> the settings it still needs, for every dataset that cannot be read."""
  return {name: needs for name, entry in datasets.items() if (needs := _needs(name, entry))}
