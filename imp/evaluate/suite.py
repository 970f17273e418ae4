"""The evaluation suite of an experiment (config key `evals`), run during and after training.

Per entry: zero-shot classification (image embeddings against prompt-ensembled class-name
embeddings) and a linear probe on frozen pooled encoder features, both on the held-out split,
plus the same probe on raw pixels as the baseline the features must beat; and cross-modal
retrieval Recall@1/5/10 in both directions for the modality pairs in `retrieval`, e.g.
`retrieval=(("image", "audio"),)` with `retrieval_positives="pair"` (row i of one modality
matches row i of the other, so examples must carry both) or `"label"` (any item of the same
class), named `<entry>/retrieval/<a>_to_<b>/R@<k>`. Text without a "text" field in the data is
the class name in the dataset's first label template (label positives only).

Video entries take `clips` evenly spaced clips of `frames` frames per test video (default 1:
the middle clip); the model runs on every clip and the per-video output is the mean over clips
(`clip_mean`): of the L2-normalised embeddings, re-normalised (zero-shot, retrieval), of the
logits (classifier), of the pooled features (linear probe).

The suite never touches parameters: it calls `infer(request, batch)`, which the training loop
backs with compiled programs; `programs()` lists them, so a run compiles them before step 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from imp.data import DataSource, eval_batches, prompt_tokens
from imp.evaluate import retrieval
from imp.evaluate.linear_probe import linear_probe
from imp.evaluate.zero_shot import class_embeddings, top1_accuracy, zero_shot_predictions
from imp.model import Request

Infer = Callable[[Request, dict[str, np.ndarray]], dict[str, np.ndarray]]

_EVAL_KEYS = ("dataset", "modality", "resolution", "frames", "spectrogram", "text_length",
              "train_split", "test_split", "batch_size", "zero_shot", "linear_probe", "templates",
              "retrieval", "retrieval_positives", "classifier", "clips", "fuse")


@dataclasses.dataclass(frozen=True)
class _Entry:
  name: str
  source: DataSource
  modality: str
  resolution: tuple[int, int] | None
  spectrogram: tuple[int, int] | None
  frames: int  # video frames per clip
  text_length: int
  train_split: str
  test_split: str
  batch_size: int
  zero_shot: bool
  linear_probe: bool
  templates: tuple[str, ...] | None
  retrieval: tuple[tuple[str, str], ...] = ()
  retrieval_positives: str = "pair"
  head: str = ""  # the dataset's classifier head, for `classifier`
  classifier: bool = False
  clips: int = 1  # evenly spaced clips per video, outputs averaged over them
  fuse: tuple[str, ...] = ()  # modalities the `classifier` head reads encoded together (M3SAT)


def clip_mean(outputs: np.ndarray, clips: int, normalize: bool) -> np.ndarray:
  """[videos * clips, ...] rows (video-major) -> [videos, ...], the mean over each video's clips.

  With `normalize` (embeddings), each clip's row is L2-normalised before the mean and the mean
  is normalised again, so every clip counts equally and the result is a unit vector.
  """
  if len(outputs) % clips:
    raise ValueError(f"{len(outputs)} rows are not a whole number of videos of {clips} clips.")
  x = np.asarray(outputs, np.float32).reshape((-1, clips) + outputs.shape[1:])
  if not normalize:
    return x.mean(axis=1)
  x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  mean = x.mean(axis=1)
  return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def _clips_setting(name: str, spec: Mapping[str, Any], modalities: set[str]) -> int:
  """Validated `evals.<name>.clips`: an int >= 1, and > 1 only where video is evaluated."""
  clips = spec.get("clips", 1)
  if isinstance(clips, bool) or not isinstance(clips, (int, np.integer)) or clips < 1:
    raise ValueError(f"evals.{name}.clips={clips!r}: must be an integer >= 1 (clips per test "
                     "video, averaged; 1 = the middle clip).")
  if clips > 1 and "video" not in modalities:
    raise ValueError(f"evals.{name}.clips={clips}: clips average over video clips, but entry "
                     f"{name!r} evaluates no video (modalities: {', '.join(sorted(modalities))}).")
  return int(clips)


def _retrieval_settings(name: str, spec: Mapping[str, Any], source: DataSource,
                        ) -> tuple[tuple[tuple[str, str], ...], str]:
  """Validated (modality pairs, positives) of entry `name`."""
  positives = spec.get("retrieval_positives", "pair")
  if positives not in retrieval.POSITIVES:
    raise ValueError(f"evals.{name}.retrieval_positives={positives!r}; valid: "
                     f"{', '.join(retrieval.POSITIVES)}.")
  pairs = []
  for pair in spec.get("retrieval") or ():
    if isinstance(pair, str) or len(pair) != 2 or pair[0] == pair[1]:
      raise ValueError(f"evals.{name}.retrieval={spec['retrieval']!r}: each item must be a pair "
                       "of two different modalities, e.g. ((\"image\", \"audio\"),).")
    for m in pair:
      if m not in source.modalities:
        raise ValueError(f"evals.{name}.retrieval: dataset {source.name!r} has no modality "
                         f"{m!r}; valid: {', '.join(source.modalities)}.")
    fields = set(getattr(source.splits.get(spec.get("test_split", "test")), "fields", ()) or ())
    if positives == "pair" and "text" in pair and "text" not in fields:
      raise ValueError(f"evals.{name}.retrieval pairs {pair} with retrieval_positives='pair', "
                       f"but dataset {source.name!r} has no \"text\" field (its text is label "
                       "text, shared by a whole class); use retrieval_positives='label'.")
    pairs.append((str(pair[0]), str(pair[1])))
  return tuple(pairs), positives


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
      pairs, positives = _retrieval_settings(name, spec, sources[spec["dataset"]])
      modality = spec.get("modality", "image")
      clips = _clips_setting(name, spec, {modality, *(m for pair in pairs for m in pair)})
      self.entries.append(_Entry(
          name=name, source=sources[spec["dataset"]], modality=spec.get("modality", "image"),
          resolution=(res, res) if isinstance(res, int) else (tuple(res) if res else None),
          spectrogram=tuple(spectrogram) if spectrogram else None,
          frames=int(spec.get("frames", 1)),
          text_length=int(spec.get("text_length", 16)),
          train_split=spec.get("train_split", "train"), test_split=spec.get("test_split", "test"),
          batch_size=int(spec.get("batch_size", 128)), zero_shot=bool(spec.get("zero_shot", True)),
          linear_probe=bool(spec.get("linear_probe", True)),
          templates=tuple(spec["templates"]) if spec.get("templates") else None,
          retrieval=pairs, retrieval_positives=positives,
          head=spec["dataset"], classifier=bool(spec.get("classifier", False)), clips=clips,
          fuse=tuple(spec.get("fuse") or ())))
      if set(self.entries[-1].fuse) - set(self.entries[-1].source.modalities):
        raise ValueError(f"evals.{name}.fuse={spec['fuse']}: dataset {spec['dataset']!r} has "
                         f"modalities {self.entries[-1].source.modalities}.")
      if self.entries[-1].fuse and clips > 1:
        raise ValueError(f"evals.{name}: fuse={spec['fuse']} and clips={clips} cannot be "
                         "combined; a fused head is evaluated on one clip per video (clips=1).")
    self._batches: dict[tuple[str, str, str], Any] = {}
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
      names += [f"{e.name}/retrieval/{src}_to_{dst}/R@{k}" for a, b in e.retrieval
                for src, dst in ((a, b), (b, a)) for k in retrieval.RECALL_KS]
    return tuple(names)

  def _split(self, entry: _Entry, split: str, modality: str | None = None):
    modality = modality or entry.modality
    key = (entry.name, split, modality)
    if key not in self._batches:
      self._batches[key] = eval_batches(entry.source, split, modality=modality,
                                        resolution=entry.resolution,
                                        batch_size=entry.batch_size,
                                        spectrogram=entry.spectrogram, frames=entry.frames,
                                        clips=entry.clips if modality == "video" else 1,
                                        where=f"evals.{entry.name}.clips")
    return self._batches[key]

  @staticmethod
  def _outputs(infer: Infer, request: Request, batches, key: str) -> np.ndarray:
    """Output `key` per example [examples, ...]: concatenated over batches without padded rows,
    then averaged over each video's clips (`clip_mean`; embeddings normalised)."""
    parts = [np.asarray(infer(request, {k: v for k, v in b.items() if k != "mask"})[key])[b["mask"]]
             for b in batches]
    outputs = np.concatenate(parts)
    clips = getattr(batches, "clips", 1)
    if clips == 1:
      return outputs
    return clip_mean(outputs, clips, normalize=key.startswith("embedding/"))

  @staticmethod
  def _text_batches(tokens: np.ndarray, batch_size: int) -> list[dict[str, np.ndarray]]:
    """int32 tokens [n, length] as padded fixed-shape batches with a `mask` of real rows."""
    batches = []
    for start in range(0, len(tokens), batch_size):
      chunk = tokens[start:start + batch_size]
      pad = np.zeros((batch_size - len(chunk), tokens.shape[1]), tokens.dtype)
      batches.append({"text": np.concatenate([chunk, pad]),
                      "mask": np.arange(batch_size) < len(chunk)})
    return batches

  @classmethod
  def _text_embeddings(cls, infer: Infer, tokens: np.ndarray, batch_size: int) -> np.ndarray:
    """[n, dim] text embeddings of int32 tokens [n, length], in padded fixed-shape batches."""
    return cls._outputs(infer, Request(embed=("text",)), cls._text_batches(tokens, batch_size),
                        "embedding/text")

  def _text_tokens(self, entry: _Entry) -> np.ndarray:
    """[n, length] tokens of the test split's text (its "text" field, else label text)."""
    data, tokenizer = entry.source.split(entry.test_split), entry.source.tokenizer
    if "text" in data.fields:
      texts = [t.decode() if isinstance(t, bytes) else str(t) for t in data.fields["text"]]
    else:  # label text: the class name in the first template
      names, template = entry.source.class_names, entry.source.label_templates[0]
      texts = [template.format(names[int(y)]) for y in data.fields["label"]]
    return np.stack([tokenizer.encode(t, entry.text_length) for t in texts])

  def _head_batches(self, e: _Entry):
    """The classifier's test batches: a fused head reads every modality of `fuse` from the
    same examples' batches."""
    if not e.fuse:
      return self._split(e, e.test_split)
    return [{k: v for part in parts for k, v in part.items()} for parts in zip(
        *[self._split(e, e.test_split, f) for f in e.fuse], strict=True)]

  def programs(self) -> list[tuple[Request, dict[str, np.ndarray]]]:
    """(Request, first batch without `mask`) of every inference program `run` calls, so a
    run can compile them all before step 1 (builds the eval batches, as `run` would)."""
    out = []

    def add(request: Request, batches) -> None:
      out.append((request, {k: v for k, v in next(iter(batches)).items() if k != "mask"}))

    for e in self.entries:
      m = e.modality
      if e.zero_shot or e.linear_probe:
        add(Request(embed=(m,) if e.zero_shot else (), features=(m,)),
            self._split(e, e.test_split))
      if e.zero_shot:
        prompts = prompt_tokens(e.source, e.text_length, e.templates)
        add(Request(embed=("text",)),
            self._text_batches(prompts.reshape(-1, prompts.shape[-1]), e.batch_size))
      if e.classifier:
        add(Request(classify=(((e.fuse or (m,))[0], e.head),), fuse=e.fuse), self._head_batches(e))
      for pair in e.retrieval:
        for modality in pair:
          if modality == "text":
            add(Request(embed=("text",)), self._text_batches(self._text_tokens(e), e.batch_size))
          else:
            add(Request(embed=(modality,)), self._split(e, e.test_split, modality))
    return out

  def _embeddings(self, infer: Infer, entry: _Entry, modality: str) -> np.ndarray:
    """[examples, dim] embeddings of the test split's examples, in split order."""
    if modality != "text":
      batches = self._split(entry, entry.test_split, modality)
      return self._outputs(infer, Request(embed=(modality,)), batches, f"embedding/{modality}")
    return self._text_embeddings(infer, self._text_tokens(entry), entry.batch_size)

  def _retrieval(self, infer: Infer, entry: _Entry) -> dict[str, float]:
    results = {}
    labels = None
    for a, b in entry.retrieval:
      emb_a, emb_b = self._embeddings(infer, entry, a), self._embeddings(infer, entry, b)
      if entry.retrieval_positives == "pair":
        positives = retrieval.pair_positives(len(emb_a))
      else:
        if labels is None:
          labels = np.asarray(entry.source.split(entry.test_split).fields["label"])
        positives = retrieval.label_positives(labels, labels)
      for name, value in retrieval.bidirectional_recall(emb_a, emb_b, positives, (a, b)).items():
        results[f"{entry.name}/retrieval/{name}"] = value
    return results

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
        text = self._text_embeddings(infer, prompts.reshape(-1, length), e.batch_size)
        class_emb = class_embeddings(text.reshape(classes, templates, -1))
        results[f"{e.name}/zero_shot_top1"] = top1_accuracy(
            zero_shot_predictions(embeddings, class_emb), test.labels)
      if e.classifier:  # the trained head of the dataset on the held-out split
        batches = self._head_batches(e)
        head_request = Request(classify=(((e.fuse or (m,))[0], e.head),), fuse=e.fuse)
        logits = self._outputs(infer, head_request, batches, f"logits/{e.head}")
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
      results.update(self._retrieval(infer, e))
    return results
