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

Every split is streamed (`imp.data.eval_stream`): fixed-size batches, the last padded and
masked, each batch's outputs reduced to the pooled features / embeddings / logits the metric
needs before the next batch is read; no split's inputs are held. With `rows` (a process's
[start, stop) of a global batch, `imp.parallel.mesh.process_rows`), each process reads only its
rows; `infer` returns the whole batch's outputs (replicated), and labels and raw-baseline
inputs are gathered across processes. The raw-input baseline probe's [examples, pixels] matrix
is the one thing that grows with the raw inputs: it holds the first `raw_probe_examples`
(default 2048) of each split, named in its result, or nothing with `raw_probe=False`.

`merge_experts=True` evaluates an entry with every MoE layer run as the dense layer its
condition's experts merge into (Uni-Perceiver-MoE §3.3): each request carries the flag.

The suite never touches parameters: it calls `infer(request, batch)`, which the training loop
backs with compiled programs; `programs()` lists them, so a run compiles them before step 1.
`seconds` holds the wall seconds of each entry's latest evaluation.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from imp.config import schema
from imp.data import DataSource, prompt_tokens
from imp.data.eval_stream import EvalStream
from imp.evaluate import retrieval
from imp.evaluate.linear_probe import linear_probe
from imp.evaluate.zero_shot import class_embeddings, top1_accuracy, zero_shot_predictions
from imp.model import Request

Infer = Callable[[Request, dict[str, np.ndarray]], dict[str, np.ndarray]]
Rows = Callable[[int], tuple[int, int]]  # global batch size -> this process's [start, stop)

_EVAL_KEYS = schema.keys_of("evals.*")  # declared once, in imp/config/schema.py


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
  raw_probe: bool = True  # the raw-input baseline probe beside the linear probe
  raw_probe_examples: int = 2048  # the raw probe's sample: the first n of each split (0: all)
  merge_experts: bool = False  # evaluate with the experts merged per condition (§3.3)

  def request(self, **outputs: Any) -> Request:
    """The Request of `outputs` (Request's fields) under this entry's settings."""
    return Request(**outputs, merge_experts=self.merge_experts)


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
  clips = spec["clips"]
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
  positives = spec["retrieval_positives"]
  if positives not in retrieval.POSITIVES:
    raise ValueError(f"evals.{name}.retrieval_positives={positives!r}; valid: "
                     f"{', '.join(retrieval.POSITIVES)}.")
  pairs = []
  for pair in spec["retrieval"] or ():
    if isinstance(pair, str) or len(pair) != 2 or pair[0] == pair[1]:
      raise ValueError(f"evals.{name}.retrieval={spec['retrieval']!r}: each item must be a pair "
                       "of two different modalities, e.g. ((\"image\", \"audio\"),).")
    for m in pair:
      if m not in source.modalities:
        raise ValueError(f"evals.{name}.retrieval: dataset {source.name!r} has no modality "
                         f"{m!r}; valid: {', '.join(source.modalities)}.")
    fields = set(getattr(source.splits.get(spec["test_split"]), "fields", ()) or ())
    if positives == "pair" and "text" in pair and "text" not in fields:
      raise ValueError(f"evals.{name}.retrieval pairs {pair} with retrieval_positives='pair', "
                       f"but dataset {source.name!r} has no \"text\" field (its text is label "
                       "text, shared by a whole class); use retrieval_positives='label'.")
    pairs.append((str(pair[0]), str(pair[1])))
  return tuple(pairs), positives


def _flag(name: str, spec: Mapping[str, Any], key: str) -> bool:
  """`evals.<name>.<key>`, a bool."""
  value = spec[key]
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"evals.{name}.{key}={value!r} must be True or False.")
  return bool(value)


def _count(name: str, spec: Mapping[str, Any], key: str) -> int:
  value = spec[key]
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ValueError(f"evals.{name}.{key}={value!r} must be a whole number >= 0 (0: all).")
  return int(value)


def _raw_name(entry: _Entry) -> str:
  """The baseline probe's result name: raw pixels for images, the raw spectrogram for audio;
  `_first<n>` where it fits on a sample of a split (evals.<entry>.raw_probe_examples)."""
  name = "raw_pixel_probe_top1" if entry.modality == "image" else "raw_input_probe_top1"
  n = entry.raw_probe_examples
  sampled = n and any(len(entry.source.split(s)) > n
                      for s in (entry.train_split, entry.test_split))
  return f"{name}_first{n}" if sampled else name


def _gather(local: np.ndarray, rows: tuple[int, int], batch_size: int) -> np.ndarray:
  """This process's rows [stop - start, ...] of a global batch -> the batch's [batch_size, ...]
  (every process's rows, in order); the identity where one process reads every row."""
  if rows == (0, batch_size):
    return local
  from jax.experimental import multihost_utils  # only multi-process runs get here
  return np.asarray(multihost_utils.process_allgather(local, tiled=True))


class EvalSuite:
  """Streams fixed-shape evaluation batches; `run(infer)` returns flat metrics."""

  def __init__(self, evals: Mapping[str, Mapping[str, Any]], sources: Mapping[str, DataSource],
               rows: Rows | None = None):
    self.entries = []
    for name, spec in evals.items():
      unknown = sorted(set(spec) - set(_EVAL_KEYS))
      if unknown:
        raise ValueError(
            f"evals.{name}.{unknown[0]} is not an eval setting; valid: {', '.join(_EVAL_KEYS)}.")
      spec = schema.filled(spec, "evals.*")  # every setting, the unset ones at their defaults
      if spec["dataset"] not in sources:
        raise ValueError(f"evals.{name}.dataset={spec['dataset']!r} is not in config.datasets; "
                         f"valid: {', '.join(sources)}.")
      res, spectrogram = spec["resolution"], spec["spectrogram"]
      pairs, positives = _retrieval_settings(name, spec, sources[spec["dataset"]])
      modality = spec["modality"]
      clips = _clips_setting(name, spec, {modality, *(m for pair in pairs for m in pair)})
      batch_size = spec["batch_size"]
      if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or (
          batch_size < 1):
        raise ValueError(f"evals.{name}.batch_size={batch_size!r}: must be an integer >= 1 "
                         "(rows per inference batch; the last batch is padded).")
      self.entries.append(_Entry(
          name=name, source=sources[spec["dataset"]], modality=modality,
          resolution=(res, res) if isinstance(res, int) else (tuple(res) if res else None),
          spectrogram=tuple(spectrogram) if spectrogram else None,
          frames=int(spec["frames"]), text_length=int(spec["text_length"]),
          train_split=spec["train_split"], test_split=spec["test_split"],
          batch_size=int(batch_size), zero_shot=bool(spec["zero_shot"]),
          linear_probe=bool(spec["linear_probe"]),
          templates=tuple(spec["templates"]) if spec["templates"] else None,
          retrieval=pairs, retrieval_positives=positives,
          head=spec["dataset"], classifier=bool(spec["classifier"]), clips=clips,
          fuse=tuple(spec["fuse"] or ()), raw_probe=bool(spec["raw_probe"]),
          raw_probe_examples=_count(name, spec, "raw_probe_examples"),
          merge_experts=_flag(name, spec, "merge_experts")))
      if set(self.entries[-1].fuse) - set(self.entries[-1].source.modalities):
        raise ValueError(f"evals.{name}.fuse={spec['fuse']}: dataset {spec['dataset']!r} has "
                         f"modalities {self.entries[-1].source.modalities}.")
      if self.entries[-1].fuse and self.entries[-1].merge_experts:
        raise ValueError(f"evals.{name}: fuse={spec['fuse']} and merge_experts=True cannot be "
                         "combined; a fused pass mixes the conditions of its modalities, and "
                         "merged experts serve one condition per pass.")
      if self.entries[-1].fuse and clips > 1:
        raise ValueError(f"evals.{name}: fuse={spec['fuse']} and clips={clips} cannot be "
                         "combined; a fused head is evaluated on one clip per video (clips=1).")
    self._rows = rows or (lambda batch_size: (0, batch_size))
    self._raw_probe: dict[str, float] = {}
    self.seconds: dict[str, float] = {}

  @property
  def metric_names(self) -> tuple[str, ...]:
    """Names of the results `run` returns."""
    names = []
    for e in self.entries:
      names += [f"{e.name}/zero_shot_top1"] if e.zero_shot else []
      names += [f"{e.name}/classifier_top1"] if e.classifier else []
      names += [f"{e.name}/linear_probe_top1"] if e.linear_probe else []
      names += [f"{e.name}/{_raw_name(e)}"] if e.linear_probe and e.raw_probe else []
      names += [f"{e.name}/retrieval/{src}_to_{dst}/R@{k}" for a, b in e.retrieval
                for src, dst in ((a, b), (b, a)) for k in retrieval.RECALL_KS]
    return tuple(names)

  def _stream(self, entry: _Entry, split: str, modality: str | None = None,
              raw: bool = False) -> EvalStream:
    modality = modality or entry.modality
    return EvalStream(entry.source, split, modality=modality, resolution=entry.resolution,
                      batch_size=entry.batch_size, spectrogram=entry.spectrogram,
                      frames=entry.frames, clips=entry.clips if modality == "video" else 1,
                      text_length=entry.text_length, raw=raw,
                      where=f"evals.{entry.name}.clips", rows=self._entry_rows(entry))

  def _entry_rows(self, entry: _Entry) -> tuple[int, int]:
    try:
      return self._rows(entry.batch_size)
    except ValueError as e:
      raise ValueError(f"evals.{entry.name}.batch_size={entry.batch_size}: {e}") from e

  def _collect(self, infer: Infer, request: Request, streams: Sequence[EvalStream],
               keys: Sequence[str], desc: str, raw_rows: int = 0) -> dict[str, np.ndarray]:
    """Outputs `keys` per example [examples, ...] of the streams' examples (several streams:
    the same examples' modalities, read together for a fused head), plus "label" [examples]
    and, where the first stream reads it, "raw" [examples, dim]. Padded rows are dropped and
    a video's clips averaged (`clip_mean`; embeddings normalised) before the next batch.
    `raw_rows` (0: all) bounds "raw" to the first rows: host memory of the raw probe."""
    first = streams[0]
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (*keys, "label", "raw")}
    bar = tqdm(total=first.num_batches, desc=desc, unit="batch", leave=False, disable=None,
               dynamic_ncols=True)
    for batches in zip(*streams, strict=True):
      mask = batches[0]["mask"]
      outputs = infer(request, {s.modality: b[s.modality] for s, b in
                                zip(streams, batches, strict=True)})
      for k in keys:
        parts[k].append(np.asarray(outputs[k])[mask])
      for k in ("label", "raw"):
        left = raw_rows - sum(len(p) for p in parts[k]) if k == "raw" and raw_rows else None
        if k in batches[0] and (left is None or left > 0):  # the same on every process
          rows = _gather(batches[0][k], first.rows, first.batch_size)[mask]
          # a copy: a view would keep the whole batch's raw inputs alive
          parts[k].append(rows if left is None or left >= len(rows) else rows[:left].copy())
      bar.update(1)
    bar.close()
    out = {k: np.concatenate(v) for k, v in parts.items() if v}
    clips = first.clips
    if clips > 1:  # rows are clips, video-major: one output per video
      out = {k: v[::clips] if k == "label" else
             clip_mean(v, clips, normalize=k.startswith("embedding/")) for k, v in out.items()}
    return out

  def _text_embeddings(self, infer: Infer, tokens: np.ndarray, entry: _Entry) -> np.ndarray:
    """[n, dim] text embeddings of int32 tokens [n, length] (prompts, held in memory), in
    padded fixed-shape batches of which each process passes its rows."""
    batch_size = entry.batch_size
    start, stop = self._entry_rows(entry)
    parts = []
    for first in range(0, len(tokens), batch_size):
      chunk = tokens[first:first + batch_size]
      batch = np.concatenate([chunk, np.zeros((batch_size - len(chunk), tokens.shape[1]),
                                              tokens.dtype)])
      outputs = infer(entry.request(embed=("text",)), {"text": batch[start:stop]})
      parts.append(np.asarray(outputs["embedding/text"])[:len(chunk)])
    return np.concatenate(parts)

  def _head_streams(self, e: _Entry) -> list[EvalStream]:
    """The classifier's test streams: a fused head reads every modality of `fuse` from the
    same examples."""
    return [self._stream(e, e.test_split, f) for f in (e.fuse or (e.modality,))]

  def programs(self) -> list[tuple[Request, dict[str, jax.ShapeDtypeStruct]]]:
    """(Request, global batch signature) of every inference program `run` calls, so a run can
    compile them all before step 1 (transforms one example of each split to get its shape)."""
    out = []
    for e in self.entries:
      m = e.modality
      if e.zero_shot or e.linear_probe:
        out.append((e.request(embed=(m,) if e.zero_shot else (), features=(m,)),
                    self._stream(e, e.test_split).spec()))
      if e.zero_shot:
        prompts = prompt_tokens(e.source, e.text_length, e.templates)
        out.append((e.request(embed=("text",)), {"text": jax.ShapeDtypeStruct(
            (e.batch_size, prompts.shape[-1]), prompts.dtype)}))
      if e.classifier:
        out.append((e.request(classify=(((e.fuse or (m,))[0], e.head),), fuse=e.fuse),
                    {k: v for s in self._head_streams(e) for k, v in s.spec().items()}))
      for pair in e.retrieval:
        for modality in pair:
          out.append((e.request(embed=(modality,)),
                      self._stream(e, e.test_split, modality).spec()))
    return out

  def _retrieval(self, infer: Infer, entry: _Entry) -> dict[str, float]:
    results = {}
    for a, b in entry.retrieval:
      emb = {m: self._collect(infer, entry.request(embed=(m,)),
                              [self._stream(entry, entry.test_split, m)],
                              [f"embedding/{m}"], f"eval {entry.name} {m}")
             for m in (a, b)}
      if entry.retrieval_positives == "pair":
        positives = retrieval.pair_positives(len(emb[a][f"embedding/{a}"]))
      else:
        labels = emb[a]["label"]
        positives = retrieval.label_positives(labels, labels)
      for name, value in retrieval.bidirectional_recall(
          emb[a][f"embedding/{a}"], emb[b][f"embedding/{b}"], positives, (a, b)).items():
        results[f"{entry.name}/retrieval/{name}"] = value
    return results

  def _entry(self, infer: Infer, e: _Entry) -> dict[str, float]:
    results = {}
    m = e.modality
    raw = e.linear_probe and e.raw_probe and e.name not in self._raw_probe
    test = {}
    if e.zero_shot or e.linear_probe:  # one pass over the test split for both
      keys = [f"embedding/{m}"] * e.zero_shot + [f"features/{m}"] * e.linear_probe
      test = self._collect(infer, e.request(embed=(m,) if e.zero_shot else (), features=(m,)),
                           [self._stream(e, e.test_split, raw=raw)], keys,
                           f"eval {e.name} {e.test_split}", e.raw_probe_examples * e.clips)
    if e.zero_shot:
      prompts = prompt_tokens(e.source, e.text_length, e.templates)  # [C, T, L]
      classes, templates, length = prompts.shape
      text = self._text_embeddings(infer, prompts.reshape(-1, length), e)
      class_emb = class_embeddings(text.reshape(classes, templates, -1))
      results[f"{e.name}/zero_shot_top1"] = top1_accuracy(
          zero_shot_predictions(test[f"embedding/{m}"], class_emb), test["label"])
    if e.classifier:  # the trained head of the dataset on the held-out split
      head_request = e.request(classify=(((e.fuse or (m,))[0], e.head),), fuse=e.fuse)
      head = self._collect(infer, head_request, self._head_streams(e), [f"logits/{e.head}"],
                           f"eval {e.name} classifier")
      results[f"{e.name}/classifier_top1"] = top1_accuracy(
          head[f"logits/{e.head}"].argmax(-1), head["label"])
    if e.linear_probe:
      train = self._collect(infer, e.request(embed=(m,) if e.zero_shot else (), features=(m,)),
                            [self._stream(e, e.train_split, raw=raw)], [f"features/{m}"],
                            f"eval {e.name} {e.train_split}", e.raw_probe_examples * e.clips)
      train_x, test_x = train[f"features/{m}"], test[f"features/{m}"]
      if np.isfinite(train_x).all() and np.isfinite(test_x).all():
        probe = linear_probe(train_x, train["label"], test_x, test["label"]).accuracy
      else:  # a diverged model: report it, do not crash the run
        probe = float("nan")
      results[f"{e.name}/linear_probe_top1"] = probe
      if raw:  # computed once: the raw inputs do not change during training
        n_train, n_test = len(train["raw"]), len(test["raw"])  # the first n of each split
        self._raw_probe[e.name] = linear_probe(train["raw"], train["label"][:n_train],
                                               test["raw"], test["label"][:n_test]).accuracy
      if e.raw_probe:
        results[f"{e.name}/{_raw_name(e)}"] = self._raw_probe[e.name]
    results.update(self._retrieval(infer, e))
    return results

  def run(self, infer: Infer) -> dict[str, float]:
    results = {}
    for e in self.entries:
      start = time.perf_counter()
      results.update(self._entry(infer, e))
      self.seconds[e.name] = round(time.perf_counter() - start, 3)
    return results
