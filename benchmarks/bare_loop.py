r"""Framework tax: `imp` against a minimal, independent Flax/optax loop of the same experiment.

The default experiment (imp/config/digits.py: width 64, depth 4, 4 heads, MLP 256, layers
scanned; sklearn digits, classification and label-text NCE, each at 8x8 batch 64 and 16x16
batch 16, alternating by AGD; Adam with warm-up + cosine and global-norm clipping) is trained
twice per round, each run in its own Python process, interleaved imp, bare, imp, bare:

  imp:  `imp.experiment.train` on the default config with one evaluation, at the end: the
        classifier head's top-1 on the test split (`evals.digits.classifier`), at the eval
        resolution of the default (16x16). Checkpointing, logging, the persistent
        compilation cache and `model.scan_unroll="auto"` (on CPU the whole scan in one
        iteration) stay as the default config has them.
  bare_unrolled: the same with its layers in a Python for loop, as users write them
        (issue 35's comparison: imp with its defaults at most 1.05x of it).
  bare: this module's `bare_main`: its own NumPy batching of the same sklearn split, its own
        patch embedding and Transformer encoder (`nn.scan` over layers with imp's resolved
        unroll, `jax.nn.dot_product_attention`), one jitted step per task, plain optax on every
        parameter (no StepCache, parameter masks, NaN guard, grain pipelines or imp train
        step). It never imports `imp`. Task order: the same seeded draw as imp's TaskSampler
        (NumPy's generator seeded with (seed, step), inverse CDF over the registry's weights,
        which the parent passes in with the task shapes).

Reported per step count: imp / bare ratios of wall time and of the child's user and system
CPU time (`getrusage(RUSAGE_CHILDREN)` around each run, so every thread and the child's own
compiles count), paired round by round, and both held-out accuracies. Goals: imp / bare
<= 1.10x wall with the same layer stack (issue 17), accuracy within 1 point; imp / bare
unrolled <= 1.05x (issue 35).

  python -m benchmarks.run --only bare_loop          # 1,000 steps 4 rounds, 4,000 steps 2
  python -m benchmarks.run --quick --only bare_loop  # a few steps, 1 round (for tests)
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.measure import Report, Stat, ratio

NAME = "bare_loop"
GOAL = "<= 1.10x wall (same layer stack)"
UNROLLED_GOAL = "<= 1.05x wall (issue 35)"
# Rounds per step count: the 1,000-step runs are the noisier share of a run (compiles).
SIZES = {"quick": {4: 1}, "full": {1000: 4, 4000: 2}}
ROOT = Path(__file__).resolve().parents[1]


# ---- The imp side (parent and imp child) --------------------------------------------------
def imp_config(steps: int):
  """The default experiment at `steps`, evaluating only the classifier's test top-1 at the end."""
  import ml_collections

  from imp.config.digits import get_config
  config = get_config()
  config.total_steps = steps
  config.eval_every = steps
  config.checkpoint_best_metric = None
  res = config.evals.digits.resolution
  config.evals = ml_collections.ConfigDict({"digits": dict(
      dataset="digits", modality="image", resolution=res, text_length=24, train_split="train",
      test_split="test", batch_size=120, zero_shot=False, linear_probe=False, classifier=True)})
  return config


def bare_spec(steps: int) -> dict:
  """What the bare child needs from the config, as JSON: tasks in imp's registry order with
  their sampling weights, the model, the optimizer, the dataset and the eval resolution."""
  from imp.model import ModelConfig
  from imp.objectives import OBJECTIVES
  from imp.tasks.registry import TaskRegistry
  config = imp_config(steps)
  data = config.datasets.digits
  sizes = {"digits": len(digits(data.test_fraction, data.split_seed)["train"][1])}
  registry = TaskRegistry.from_config(
      config.tasks.to_dict(), dataset_sizes=sizes, dataset_modalities={"digits": ("image", "text")},
      objectives=list(OBJECTIVES), weighting=config.sampling.weighting)
  tasks = [dict(name=t.name, objective=t.objective, batch_size=t.variant.batch_size,
                resolution=list(t.variant.resolution), text_length=t.variant.text_length,
                loss_weight=t.loss_weight, args=dict(t.args)) for t in registry]
  unroll = ModelConfig.from_config(config.model.to_dict()).scan_unroll  # "auto" resolved here
  return dict(steps=steps, seed=config.seed, tasks=tasks, weights=list(registry.weights),
              model=dict(config.model.to_dict(), scan_unroll=unroll),
              optimizer=config.optimizer.to_dict(),
              test_fraction=data.test_fraction, split_seed=data.split_seed,
              templates=list(data.label_templates), eval_resolution=config.evals.digits.resolution)


def imp_main(spec: dict, out: Path) -> None:
  import logging

  from imp import experiment
  logging.getLogger("imp").setLevel(logging.WARNING)
  with tempfile.TemporaryDirectory() as workdir:
    summary = experiment.train(imp_config(spec["steps"]), workdir)
  out.write_text(json.dumps({"steps": summary["steps"], "task_steps": summary["task_steps"],
                             "accuracy": summary["eval"]["digits/classifier_top1"]}))


# ---- The bare side (never imports imp) ------------------------------------------------------
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digits(test_fraction: float, split_seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """sklearn's digits as uint8 [N, 8, 8, 1] and int32 [N], the stratified split imp uses."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  d = load_digits()
  images = np.clip(d.images * 16.0, 0, 255).astype(np.uint8)[..., None]
  labels = d.target.astype(np.int32)
  train, test = train_test_split(np.arange(len(labels)), test_size=test_fraction,
                                 stratify=labels, random_state=split_seed)
  return {s: (images[np.sort(i)], labels[np.sort(i)]) for s, i in (("train", train),
                                                                     ("test", test))}


def text_ids(text: str, length: int) -> np.ndarray:
  """Byte tokens (byte + 2), end-of-text 1, zero padding: int32 [length]."""
  ids = [b + 2 for b in text.encode()][:length - 1] + [1]
  return np.pad(np.asarray(ids, np.int32), (0, length - len(ids)))


def bare_model(m: dict, unrolled: bool = False):
  """The bare model; `unrolled`: its layers in a Python for loop, as users write them, instead
  of `nn.scan`."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  dense = lambda n, **kw: nn.Dense(n, **kw)  # noqa: E731  (lecun-normal kernel, zero bias)
  pos_init = nn.initializers.normal(0.02)

  class Block(nn.Module):
    @nn.compact
    def __call__(self, x, mask):  # x [B, N, D], mask bool [B, N]
      h = nn.LayerNorm()(x)
      heads = (m["num_heads"], m["width"] // m["num_heads"])
      q, k, v = (nn.DenseGeneral(heads, name=n)(h) for n in ("query", "key", "value"))
      a = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :])
      x = x + nn.DenseGeneral(m["width"], axis=(-2, -1), name="out")(a)
      h = nn.gelu(dense(m["mlp_dim"])(nn.LayerNorm()(x)))
      return x + dense(m["width"])(h), None

  class Model(nn.Module):
    @nn.compact
    def __call__(self, image, text):  # image [B, H, W, 1] float, text int32 [B, L]
      if unrolled:
        blocks = [Block(name=f"layer_{i}") for i in range(m["depth"])]

        def stack(x, mask):
          for block in blocks:
            x = block(x, mask)[0]
          return x, None
      else:
        stack = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=nn.broadcast, length=m["depth"],
                        unroll=m["scan_unroll"])(name="layers")
      final = nn.LayerNorm(name="ln_final")

      def encode(tokens, mask):  # -> pooled [B, D]
        x = final(stack(tokens, mask)[0])
        w = mask.astype(jnp.float32)[..., None]
        return (x * w).sum(1) / jnp.maximum(w.sum(1), 1.0)

      out = {}
      if image is not None:
        b, h, w, c = image.shape
        ph, pw = m["vision_patch"][1:]
        patches = image.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
        tokens = dense(m["width"], name="patch_proj")(patches.reshape(b, h // ph, w // pw, -1))
        table = self.param("vision_pos", pos_init, (*m["vision_base_grid"][1:], m["width"]))
        tokens = tokens + jax.image.resize(table, (*tokens.shape[1:3], m["width"]), "linear")
        tokens = tokens.reshape(b, -1, m["width"])
        pooled = encode(tokens, jnp.ones(tokens.shape[:2], bool))
        out["logits"] = dense(10, kernel_init=nn.initializers.zeros, name="head")(pooled)
        out["image"] = dense(m["embed_dim"], name="proj_image")(pooled)
      if text is not None:
        tokens = nn.Embed(258, m["width"], embedding_init=pos_init, name="token")(text)
        table = self.param("text_pos", pos_init, (m["text_max_length"], m["width"]))
        out["text"] = dense(m["embed_dim"], name="proj_text")(
            encode(tokens + table[:text.shape[1]], text != 0))
      for key in ("image", "text"):
        if key in out:
          out[key] = out[key] / jnp.linalg.norm(out[key], axis=-1, keepdims=True).clip(1e-6)
      log_scale = self.param("log_logit_scale", nn.initializers.constant(math.log(1 / 0.07)), ())
      out["scale"] = jnp.exp(jnp.minimum(log_scale, math.log(100.0)))
      return out

  return Model()


def bare_main(spec: dict, out: Path, unrolled: bool = False) -> None:
  import jax
  import jax.numpy as jnp
  import optax

  m, o, steps = spec["model"], spec["optimizer"], spec["steps"]
  data = digits(spec["test_fraction"], spec["split_seed"])
  resize = lambda x, r: np.asarray(jax.image.resize(  # noqa: E731  (uint8 -> [-1, 1], bilinear)
      x.astype(np.float32) / 127.5 - 1.0, (len(x), *r, 1), "linear"))
  images, labels = data["train"]
  by_res = {tuple(t["resolution"]): resize(images, t["resolution"]) for t in spec["tasks"]}
  length = max(t["text_length"] or 0 for t in spec["tasks"]) or m["text_max_length"]
  prompts = np.stack([[text_ids(t.format(n), length) for t in spec["templates"]]
                      for n in DIGIT_NAMES])  # int32 [classes, templates, L]
  model = bare_model(m, unrolled)
  params = jax.jit(model.init)(jax.random.PRNGKey(spec["seed"]), by_res[(8, 8)][:1],
                               prompts[:1, 0])["params"]
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, o["learning_rate"], o["warmup_steps"], max(steps, o["warmup_steps"] + 1),
      o["learning_rate"] * o["end_lr_fraction"])
  tx = optax.chain(optax.clip_by_global_norm(o["grad_clip_norm"]), optax.adam(schedule))
  opt_state = tx.init(params)

  def soft_xent(logits, targets, axis):
    return -(targets * jax.nn.log_softmax(logits, axis=axis)).sum(axis)

  def make_step(task):
    def loss_fn(params, image, label, text):
      out = model.apply({"params": params}, image, text)
      if task["objective"] == "softmax":
        eps = task["args"].get("label_smoothing", 0.0)
        targets = (1 - eps) * jax.nn.one_hot(label, 10) + eps / 10
        return soft_xent(out["logits"], targets, -1).mean() * task["loss_weight"]
      pos = (label[:, None] == label[None, :]).astype(jnp.float32)  # positives="same_label"
      logits = out["scale"] * out["image"] @ out["text"].T
      rows = soft_xent(logits, pos / pos.sum(1, keepdims=True), 1).mean()
      cols = soft_xent(logits, pos / pos.sum(0, keepdims=True), 0).mean()
      return 0.5 * (rows + cols) * task["loss_weight"]

    def step(params, opt_state, image, label, text):
      loss, grads = jax.value_and_grad(loss_fn)(params, image, label, text)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss
    return jax.jit(step, donate_argnums=(0, 1))

  tasks = spec["tasks"]
  programs = [make_step(t) for t in tasks]
  rng = np.random.default_rng(spec["seed"])
  orders = [np.empty(0, np.int64) for _ in tasks]
  cdf = np.cumsum(np.asarray(spec["weights"]) / np.sum(spec["weights"]))
  counts = {t["name"]: 0 for t in tasks}
  for s in range(steps):
    u = np.random.default_rng([spec["seed"], s]).random()  # imp's TaskSampler draw
    i = int(min(np.searchsorted(cdf, u, side="right"), len(tasks) - 1))
    task, b = tasks[i], tasks[i]["batch_size"]
    if len(orders[i]) < b:  # a new epoch: a fresh permutation, the remainder dropped
      orders[i] = rng.permutation(len(labels))
    index, orders[i] = orders[i][:b], orders[i][b:]
    text = (prompts[labels[index], rng.integers(len(spec["templates"]), size=b)]
            if task["objective"] == "nce" else None)
    params, opt_state, loss = programs[i](params, opt_state,
                                          by_res[tuple(task["resolution"])][index],
                                          labels[index], text)
    counts[task["name"]] += 1
  test_images, test_labels = data["test"]
  res = tuple([spec["eval_resolution"]] * 2)
  logits = jax.jit(lambda p, x: model.apply({"params": p}, x, None)["logits"])(
      params, resize(test_images, res))
  accuracy = float((np.asarray(logits).argmax(-1) == test_labels).mean())
  out.write_text(json.dumps({"steps": sum(counts.values()), "task_steps": counts,
                             "accuracy": accuracy, "final_loss": float(loss)}))


# ---- The parent -----------------------------------------------------------------------------
def child(side: str, spec_file: Path, root: Path) -> dict:
  """Runs one side in a fresh process: its result plus wall, user and system seconds."""
  out = Path(tempfile.mkstemp(dir=root, suffix=".json")[1])
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "benchmarks.bare_loop", side, str(spec_file),
                         str(out)], cwd=ROOT, capture_output=True, text=True)
  wall = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if proc.returncode:
    raise RuntimeError(f"bare_loop {side} run failed:\n{proc.stderr[-3000:]}")
  return dict(json.loads(out.read_text()), wall=wall, user=after.ru_utime - before.ru_utime,
              system=after.ru_stime - before.ru_stime)


def benchmark(quick: bool) -> Report:
  size = SIZES["quick" if quick else "full"]
  rows, data = [], {"rounds": {str(k): v for k, v in size.items()},
                    "experiment": "imp.config.digits (default), "
                    "evals: classifier top-1 on the test split only"}
  with tempfile.TemporaryDirectory() as root:
    for steps, rounds in size.items():
      spec_file = Path(root) / f"spec_{steps}.json"
      spec_file.write_text(json.dumps(bare_spec(steps)))
      runs = {"imp": [], "bare": [], "bare_unrolled": []}
      for _ in range(rounds):
        for side in runs:  # interleaved: imp, bare, bare unrolled, imp, ...
          runs[side].append(child(side, spec_file, Path(root)))
      ratios = {k: ratio([r[k] for r in runs["imp"]], [r[k] for r in runs["bare"]])
                for k in ("wall", "user", "system")}
      # Against the loop as users write it (layers in a Python for loop): the issue-35 goal.
      ratios["wall vs unrolled"] = ratio([r["wall"] for r in runs["imp"]],
                                         [r["wall"] for r in runs["bare_unrolled"]])
      acc = {side: Stat.of([100 * r["accuracy"] for r in rs]) for side, rs in runs.items()}
      rows += [(f"{steps} steps: imp / bare {k}", s.show(unit="x"),
                GOAL if k == "wall" else UNROLLED_GOAL if k == "wall vs unrolled" else "")
               for k, s in ratios.items()]
      rows += [(f"{steps} steps: imp | bare wall s", " | ".join(
          Stat.of([r["wall"] for r in rs]).show("{:.1f}") for rs in runs.values()),
                "bare unrolled last"),
               (f"{steps} steps: test top-1 imp | bare, %",
                f"{acc['imp'].median:.1f} | {acc['bare'].median:.1f}", "within 1 point")]
      data[f"steps_{steps}"] = {"runs": runs, **{f"{k.replace(' ', '_')}_ratio": s.to_json()
                                                 for k, s in ratios.items()}}
  return Report(rows=rows, data=data)


if __name__ == "__main__":
  side, spec_path, out_path = sys.argv[1:4]
  main = {"imp": imp_main, "bare": bare_main,
          "bare_unrolled": lambda spec, out: bare_main(spec, out, unrolled=True)}[side]
  main(json.loads(Path(spec_path).read_text()), Path(out_path))
