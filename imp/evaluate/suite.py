"""The evaluation suite of an experiment (config key `evals`), run during and after training.

Per entry: zero-shot classification (image embeddings against prompt-ensembled class-name
embeddings) and a linear probe on frozen pooled encoder features, both on the held-out split,
plus the same probe on raw pixels as the baseline the features must beat.

The suite never touches parameters: it calls `infer(request, batch)`, which the training loop
backs with compiled programs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from imp.data import DataSource, eval_batches, prompt_tokens
from imp.evaluate.linear_probe import linear_probe
from imp.evaluate.zero_shot import class_embeddings, top1_accuracy, zero_shot_predictions
from imp.model import Request

Infer = Callable[[Request, dict[str, np.ndarray]], dict[str, np.ndarray]]

_EVAL_KEYS = ("dataset", "modality", "resolution", "spectrogram", "text_length", "train_split",
              "test_split", "batch_size", "zero_shot", "linear_probe", "templates", "classifier")


@dataclasses.dataclass(frozen=True)
class _Entry:
  name: str
  source: DataSource
  modality: str
  resolution: tuple[int, int] | None
  spectrogram: tuple[int, int] | None
  text_length: int
  train_split: str
  test_split: str
  batch_size: int
  zero_shot: bool
  linear_probe: bool
  templates: tuple[str, ...] | None
  head: str = ""  # the dataset's classifier head, for `classifier`
  classifier: bool = False


def _raw_name(entry: _Entry) -> str:
  """The baseline probe's result name: raw pixels for images, the raw spectrogram for audio."""
  return "raw_pixel_probe_top1" if entry.modality == "image" else "raw_input_probe_top1"


class EvalSuite:
  """Builds fixed-shape evaluation batches once; `run(infer)` returns flat metrics."""

  def __init__(self, evals: Mapping[str, Mapping[str, Any]], sources: Mapping[str, DataSource]):
    self.entries = []
    for name, spec in evals.items():
      unknown = sorted(set(spec) - set(_EVAL_KEYS))
      if unknown:
        raise ValueError(
            f"evals.{name}.{unknown[0]} is not an eval setting; valid: {', '.join(_EVAL_KEYS)}.")
      if spec["dataset"] not in sources:
        raise ValueError(f"evals.{name}.dataset={spec['dataset']!r} is not in config.datasets; "
                         f"valid: {', '.join(sources)}.")
      res, spectrogram = spec.get("resolution"), spec.get("spectrogram")
      self.entries.append(_Entry(
          name=name, source=sources[spec["dataset"]], modality=spec.get("modality", "image"),
          resolution=(res, res) if isinstance(res, int) else (tuple(res) if res else None),
          spectrogram=tuple(spectrogram) if spectrogram else None,
          text_length=int(spec.get("text_length", 16)),
          train_split=spec.get("train_split", "train"), test_split=spec.get("test_split", "test"),
          batch_size=int(spec.get("batch_size", 128)), zero_shot=bool(spec.get("zero_shot", True)),
          linear_probe=bool(spec.get("linear_probe", True)),
          templates=tuple(spec["templates"]) if spec.get("templates") else None,
          head=spec["dataset"], classifier=bool(spec.get("classifier", False))))
    self._batches: dict[tuple[str, str], Any] = {}
    self._raw_probe: dict[str, float] = {}

  @property
  def metric_names(self) -> tuple[str, ...]:
    """Names of the results `run` returns."""
    names = []
    for e in self.entries:
      names += [f"{e.name}/zero_shot_top1"] if e.zero_shot else []
      names += [f"{e.name}/classifier_top1"] if e.classifier else []
      names += ([f"{e.name}/linear_probe_top1", f"{e.name}/{_raw_name(e)}"]
                if e.linear_probe else [])
    return tuple(names)

  def _split(self, entry: _Entry, split: str):
    key = (entry.name, split)
    if key not in self._batches:
      self._batches[key] = eval_batches(entry.source, split, modality=entry.modality,
                                        resolution=entry.resolution,
                                        batch_size=entry.batch_size,
                                        spectrogram=entry.spectrogram)
    return self._batches[key]

  @staticmethod
  def _outputs(infer: Infer, request: Request, batches, key: str) -> np.ndarray:
    """Concatenates output `key` over batches, dropping padded rows."""
    parts = [np.asarray(infer(request, {k: v for k, v in b.items() if k != "mask"})[key])[b["mask"]]
             for b in batches]
    return np.concatenate(parts)

  def run(self, infer: Infer) -> dict[str, float]:
    results = {}
    for e in self.entries:
      m = e.modality
      request = Request(embed=(m,) if e.zero_shot else (), features=(m,))
      test = self._split(e, e.test_split)
      if e.zero_shot:
        embeddings = self._outputs(infer, request, test, f"embedding/{m}")
        prompts = prompt_tokens(e.source, e.text_length, e.templates)  # [C, T, L]
        classes, templates, length = prompts.shape
        flat = prompts.reshape(-1, length)
        text_batches = []
        for start in range(0, len(flat), e.batch_size):
          chunk = flat[start:start + e.batch_size]
          pad = np.zeros((e.batch_size - len(chunk), length), flat.dtype)
          text_batches.append({"text": np.concatenate([chunk, pad]),
                               "mask": np.arange(e.batch_size) < len(chunk)})
        text = self._outputs(infer, Request(embed=("text",)), text_batches, "embedding/text")
        class_emb = class_embeddings(text.reshape(classes, templates, -1))
        results[f"{e.name}/zero_shot_top1"] = top1_accuracy(
            zero_shot_predictions(embeddings, class_emb), test.labels)
      if e.classifier:  # the trained head of the dataset on the held-out split
        logits = self._outputs(infer, Request(classify=((m, e.head),)), test, f"logits/{e.head}")
        results[f"{e.name}/classifier_top1"] = top1_accuracy(logits.argmax(-1), test.labels)
      if e.linear_probe:
        train = self._split(e, e.train_split)
        train_x = self._outputs(infer, request, train, f"features/{m}")
        test_x = self._outputs(infer, request, test, f"features/{m}")
        if np.isfinite(train_x).all() and np.isfinite(test_x).all():
          probe = linear_probe(train_x, train.labels, test_x, test.labels).accuracy
        else:  # a diverged model: report it, do not crash the run
          probe = float("nan")
        results[f"{e.name}/linear_probe_top1"] = probe
        if e.name not in self._raw_probe:
          self._raw_probe[e.name] = linear_probe(train.raw, train.labels, test.raw,
                                                 test.labels).accuracy
        results[f"{e.name}/{_raw_name(e)}"] = self._raw_probe[e.name]
    return results
