"""Every config key, declared once: its type, default and a one-line meaning.

`KEYS` is the schema: one `Key` per setting, with `*` standing for a name the experiment
chooses (a dataset, task entry, variant or eval entry). The parts that read a section check
its keys against the schema's lists (`keys_of`). The model's keys are ModelConfig's and
MoeConfig's fields (imp.model, a floor above): imp.plan.config_keys adds them, and
`python -m imp.main --mode=describe` prints every key with its value, default and meaning.
A section marked `open` takes further keys that its reader validates (a data source's
settings, an objective's or a router's arguments).
"""

from __future__ import annotations

import copy
import dataclasses
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

REQUIRED = "(required)"


@dataclasses.dataclass(frozen=True)
class Key:
  """One config setting: `path` (dotted, `*` for a chosen name), type, default, meaning."""

  path: str
  type: str
  default: Any
  doc: str


def _section(prefix: str, rows: tuple[tuple[str, str, Any, str], ...]) -> list[Key]:
  return [Key(f"{prefix}{name}", kind, default, doc) for name, kind, default, doc in rows]


KEYS: list[Key] = [
    *_section("", (
        ("seed", "int", REQUIRED, "seeds parameters, the task schedule and the data order"),
        ("total_steps", "int", REQUIRED, "train steps (one task each under AGD)"),
        ("log_every", "int", REQUIRED, "steps between metric writes (console, JSONL, TensorBoard)"),
        ("eval_every", "int", REQUIRED, "steps between evaluations (0: only at the end)"),
        ("checkpoint_every", "int", REQUIRED, "steps between checkpoints (and always at the end)"),
        ("checkpoint_keep", "int", REQUIRED, "newest checkpoints kept"),
        ("checkpoint_best_metric", "str|None", None, "also keep the best checkpoint by this "
         "eval result"),
        ("checkpoint_best_mode", "str", "max", "max | min: which value of the metric is best"),
        ("compilation_cache_dir", "str", "", "JAX's persistent cache: '' = the user's "
         "($XDG_CACHE_HOME or ~/.cache)/imp/jax, shared by runs; 'off'; or a directory"),
        ("mesh_rules", "str|None", None, "logical-axis rules preset: fsdp (default) | expert | "
         "replicated"),
        ("restore_step", "int|None", None, "resume from this checkpoint step instead of the "
         "newest intact one (an unreadable newest one is set aside)"),
        ("device_memory_limit", "float|None", None, "bytes per device a program may use; None: "
         "the device's own memory (a bigger program stops the run before step 1)"),
        ("datasets", "dict", REQUIRED, "dataset name -> its source and settings"),
        ("tasks", "dict", REQUIRED, "task entry -> dataset, objective, modalities, variants"),
        ("sampling", "dict", {}, "how tasks are drawn"),
        ("model", "dict", REQUIRED, "the model (imp.model.ModelConfig)"),
        ("optimizer", "dict", REQUIRED, "optimizer and learning-rate schedule"),
        ("input", "dict", REQUIRED, "grain input pipelines"),
        ("evals", "dict", {}, "eval entry -> what to evaluate on which dataset"),
        ("nonfinite", "dict", {}, "the NaN/Inf guard's policy"),
        ("mesh", "dict", {}, "device mesh axis -> size (-1: the remaining devices); {}: "
         "data over every device"),
        ("dry_run", "dict", {}, "what the dry run declares in place of opening data"),
        ("profile", "dict", {}, "a jax.profiler trace of some steps into <workdir>/profile "
         "(imp/train/profile_window.py); {} for none"),
    )),
    *_section("profile.", (
        ("start_step", "int", 1, "the first step traced (0-based; every program is compiled "
         "before step 0)"),
        ("num_steps", "int", 3, "steps traced"),
    )),
    *_section("nonfinite.", (
        ("policy", "str", "skip", "skip | stop: a non-finite loss or gradient skips the update "
         "or stops the run"),
        ("max_consecutive", "int", 20, "more consecutive skipped steps stop the run"),
    )),
    *_section("sampling.", (
        ("weighting", "str", "size", "size | sqrt | uniform | explicit: task weights"),
        ("schedule", "str", "agd", "agd (one task per step) | weighted_sum (every task, one "
         "update on the weighted sum, M3SAT)"),
    )),
    *_section("input.", (
        ("num_threads", "int", REQUIRED, "grain reader threads per task pipeline"),
        ("prefetch", "int", REQUIRED, "batches prefetched per task pipeline"),
    )),
    *_section("mesh.", (
        ("data", "int", 1, "data-parallel devices"),
        ("fsdp", "int", 1, "devices parameters and batches are sharded over"),
        ("expert", "int", 1, "devices experts are split over"),
        ("tensor", "int", 1, "devices a layer's width is split over"),
    )),
    *_section("optimizer.", (
        ("name", "str", "adam", "adam | adamw"),
        ("learning_rate", "float", REQUIRED, "peak learning rate"),
        ("warmup_steps", "int", 0, "linear warm-up steps"),
        ("schedule", "str", "cosine", "cosine | constant after the warm-up"),
        ("end_lr_fraction", "float", 0.0, "cosine's final learning rate / peak"),
        ("grad_clip_norm", "float|None", None, "global gradient-norm clip"),
        ("weight_decay", "float", 0.0, "decoupled weight decay (adamw), on matrices only: "
         "not biases, norms, LayerScale, positions or the temperature, scanned or not"),
        ("b1", "float", 0.9, "Adam beta1"),
        ("b2", "float", 0.999, "Adam beta2"),
        ("eps", "float", 1e-8, "Adam epsilon"),
    )),
    *_section("datasets.*.", (
        ("source", "str", REQUIRED, "a registered source: sklearn_digits, tfds, idx, arrayrecord, "
         "paired, ... (its own settings follow; open section)"),
        ("label_templates", "tuple[str]", None, "prompt templates with one {} for the class name"),
        ("augment", "dict", {}, "translate, random_resized_crop, flip"),
        ("tokenizer", "dict|None", None, "byte (default) | sentencepiece model_file"),
        ("on_error", "str", "fail", "fail | skip: a bad example stops the run or is skipped"),
        ("clip_fps", "float|None", None, "frames per second video clips are sampled at"),
    )),
    *_section("tasks.*.", (
        ("dataset", "str", REQUIRED, "a key of config.datasets (also its classifier head)"),
        ("objective", "str", REQUIRED, "softmax | bce | nce | sum (imp.objectives)"),
        ("modalities", "tuple[str]", REQUIRED, "image | video | audio | text, what it reads"),
        ("variants", "dict", REQUIRED, "variant name -> input signature, or auto=dict(...)"),
        ("weight", "float|None", None, "explicit sampling weight (sampling.weighting=explicit)"),
        ("loss_weight", "float", 1.0, "multiplies the task's loss"),
        ("args", "dict", {}, "the objective's arguments (open section)"),
    )),
    *_section("tasks.*.variants.*.", (
        ("batch_size", "int", REQUIRED, "examples per step"),
        ("resolution", "int|(int, int)|None", None, "image / video frame height and width"),
        ("frames", "int", 1, "video frames per example"),
        ("drop_token", "float", 0.0, "fraction of non-text tokens DropToken drops in training"),
        ("text_length", "int|None", None, "text tokens per example"),
        ("spectrogram", "(int, int)|None", None, "audio (time, mel) bins"),
    )),
    *_section("tasks.*.variants.auto.", (
        ("tokens_per_batch", "int", REQUIRED, "tokens per batch every variant is sized to"),
        ("base", "dict", {}, "the base variant's resolution, frames, spectrogram, text_length"),
        ("kinds", "tuple[str]", ("base",), "variant kinds: base, half_res, double_res, "
         "droptoken, double_res_droptoken"),
        ("patches", "dict", {}, "patch sizes by family (vision, audio), over imp's defaults"),
        ("drop_token", "float", 0.75, "DropToken of the droptoken kinds of image variants"),
        ("batch_multiple", "int", 1, "batches round to a multiple of this"),
        ("tolerance", "float", 0.1, "how far a batch's tokens may miss tokens_per_batch"),
    )),
    *_section("evals.*.", (
        ("dataset", "str", REQUIRED, "a key of config.datasets"),
        ("modality", "str", "image", "the modality evaluated"),
        ("resolution", "int|(int, int)|None", None, "input resolution"),
        ("frames", "int", 1, "video frames per clip"),
        ("spectrogram", "(int, int)|None", None, "audio (time, mel) bins"),
        ("text_length", "int", 16, "text tokens of prompts and captions"),
        ("train_split", "str", "train", "the linear probe's training split"),
        ("test_split", "str", "test", "the held-out split"),
        ("batch_size", "int", 128, "examples per inference batch (the last is padded)"),
        ("zero_shot", "bool", True, "zero-shot classification against prompt embeddings"),
        ("linear_probe", "bool", True, "logistic regression on frozen features (+ raw baseline)"),
        ("templates", "tuple[str]|None", None, "prompt templates (default: the dataset's)"),
        ("retrieval", "tuple[(str, str)]", (), "modality pairs for Recall@1/5/10 both ways"),
        ("retrieval_positives", "str", "pair", "pair | label"),
        ("classifier", "bool", False, "top-1 of the dataset's trained head"),
        ("clips", "int", 1, "evenly spaced clips per test video, outputs averaged"),
        ("fuse", "tuple[str]", (), "modalities the classifier reads encoded together (M3SAT)"),
        ("raw_probe", "bool", True, "the raw-input baseline probe beside the linear probe "
         "(holds [examples, raw dim] of its sample of both splits)"),
        ("raw_probe_examples", "int", 2048, "the raw probe's sample: the first n examples of "
         "each split, named in its result (`..._first<n>`) when a split is larger; 0: all"),
        ("merge_experts", "bool", False, "evaluate with each condition's experts merged into "
         "dense layers (data-independent model.moe.condition)"),
    )),
    *_section("dry_run.datasets.*.", (
        ("train_examples", "int", REQUIRED, "train split size (sampling weights)"),
        ("num_classes", "int", REQUIRED, "classes (0: no classifier head)"),
        ("modalities", "tuple[str]", REQUIRED, "modalities an example provides"),
    )),
]

def keys_of(section: str) -> tuple[str, ...]:
  """The key names directly under `section` ("" for the top level, "tasks.*" for an entry)."""
  prefix = f"{section}." if section else ""
  return tuple(k.path[len(prefix):] for k in KEYS
               if k.path.startswith(prefix) and "." not in k.path[len(prefix):])


def filled(values: Mapping[str, Any] | None, section: str) -> dict[str, Any]:
  """The settings of one `section` ("optimizer", "evals.*", ...) with the schema's defaults:
  every key declared directly under it, as `values` gives it or else its declared default,
  so a reader never restates a default. A required key `values` leaves out stays out (its
  reader names it); keys the schema does not declare (an open section's) are kept."""
  values = dict(values.to_dict() if hasattr(values, "to_dict") else values or {})
  declared = {k.path: k.default for k in KEYS}
  prefix = f"{section}." if section else ""
  for name in keys_of(section):
    default = declared[prefix + name]
    if name not in values and not (isinstance(default, str) and default == REQUIRED):
      values[name] = copy.deepcopy(default)
  return values


def setting(config: Any, path: str) -> Any:
  """One setting by its dotted path (no `*`): the config's value, else the declared default."""
  node = config
  for part in path.split("."):
    if node is None or not hasattr(node, "keys") or part not in node:
      return copy.deepcopy(next(k.default for k in KEYS if k.path == path))
    node = node[part]
  return node


def value_at(config: Any, path: str) -> list[tuple[str, Any]]:
  """(concrete path, value) of every match of `path` in `config` (`*`: every name)."""
  found = [("", config)]
  for part in path.split("."):
    nxt = []
    for where, node in found:
      if not isinstance(node, Mapping) and not hasattr(node, "keys"):
        continue
      names = list(node.keys()) if part == "*" else [part]
      for name in names:
        if name in node:
          nxt.append((f"{where}.{name}" if where else name, node[name]))
    found = nxt
  return found


# A key's declared type, checked when a config is loaded (`type_problem`): alternatives joined
# by "|"; a scalar (int, float, bool, str, None), a mapping (dict, or a settings dataclass such
# as MoeConfig given as a dict), a sequence ("tuple[...]" or "(a, b)"; its elements are the
# reader's to check), or Any.
# numbers.* and np.bool_: a NumPy integer, float or bool a config computed counts too.
_SCALARS = {"int": numbers.Integral, "float": numbers.Real, "bool": (bool, np.bool_),
            "str": str, "None": type(None)}
_MAPPINGS = ("dict", "MoeConfig", "HeadsConfig")


def _alternatives(kind: str) -> list[str]:
  """`kind` split on the "|" outside brackets: "tuple[int|str]|None" -> two alternatives."""
  out, depth, current = [], 0, ""
  for char in kind:
    if char in "[(":
      depth += 1
    elif char in "])":
      depth -= 1
    if char == "|" and depth == 0:
      out.append(current.strip())
      current = ""
    else:
      current += char
  return [*out, current.strip()]


def _is_mapping(value: Any) -> bool:
  return isinstance(value, Mapping) or hasattr(value, "to_dict")  # a dict or a ConfigDict


def _matches(value: Any, kind: str) -> bool:
  if kind == "Any":
    return True
  if kind in _SCALARS:
    if isinstance(value, bool | np.bool_) and kind in ("int", "float"):
      return False  # True is an int to Python, never a count or a rate to a config
    return isinstance(value, _SCALARS[kind])
  if kind in _MAPPINGS:
    return _is_mapping(value)
  if kind.startswith("tuple[tuple[str, ") and _is_mapping(value):
    return True  # (name, value) pairs are the frozen form of a dict: a config gives the dict
  if kind.startswith(("tuple[", "(")):
    return isinstance(value, list | tuple)
  raise ValueError(f"schema type {kind!r} is not one the check knows")


def type_problem(value: Any, kind: str) -> str | None:
  """Why `value` is not of the declared type `kind` ("must be int | None"), or None."""
  if any(_matches(value, k) for k in _alternatives(kind)):
    return None
  return f"must be {' | '.join(_alternatives(kind))}, not {type(value).__name__}"


def check_types(config: Any, keys: list[Key]) -> None:
  """Every set key's value against its declared type; ValueError naming the first that is
  not, with its meaning. Keys the config leaves unset are not checked (the default holds)."""
  for key in keys:
    for path, value in value_at(config, key.path):
      problem = type_problem(value, key.type)
      if problem:
        shown = repr(value.to_dict() if hasattr(value, "to_dict") else value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ValueError(f"config.{path}={shown} {problem} ({key.doc}).")

