r"""Uni-Perceiver-MoE-Ti-like: conditional MoEs with attribute routing (Uni-Perceiver-MoE §3.2).

Every layer's FFN and self-attention projections are Conditional-MoE layers (Table 11's best
row: SA + FFN, every-1) with 8 experts, top-2 token choice with Gaussian routing noise, routed by
the 8-bit token attributes of Table 2 (eq. 9). Data-dependent conditions (token, context) use
capacity factors 1.0 / 2.0 and a 1e-2 balance loss, as the paper's appendix; data-independent
ones hold every token of a condition (capacity S, see MoeConfig.layer_router_args).

The real-data multi-task mix, on this machine's bundled data: scikit-learn digits and Debian's
Fashion-MNIST IDX files, each with 10-way classification and label-text NCE, sampled by the
square root of dataset size (Uni-Perceiver's weighting). Held-out accuracy: each dataset's
classifier head and zero-shot retrieval of class-name prompts on the test split.

The paper's Ti model is DeiT-Ti (width 192, 3 heads, 12 layers); the CPU default here is
width 64, 4 heads, 4 layers. The argument is a comma list:

  python -m imp.main --config experiments/uniperceiver_moe_ti.py --workdir /tmp/upmoe
  python -m imp.main --config experiments/uniperceiver_moe_ti.py:condition=token   # ablation
  python -m imp.main --config experiments/uniperceiver_moe_ti.py:grid,condition=task
  python -m imp.main --config experiments/uniperceiver_moe_ti.py:smoke

  condition=<token|context|modality|task|attribute>  the routing condition (Table 3's grid)
  grid    the routing-condition comparison run (benchmarks/routing_conditions.py): 800 steps
          of a width-32, 2-layer model on digits (classification + label-text NCE),
          evaluated by the classifier head only
  smoke   seconds-long, for tests
  long    32,000 steps, evaluated every 2,000 (the convergence curve in
          docs/routing_conditions.md: digits passes 95% by step 8,000, Fashion-MNIST
          reaches 88% at step 30,000)
  paper   the DeiT-Ti widths (192 wide, 3 heads, 12 layers)
"""

import ml_collections

from imp.config.variants import parse_arg
from imp.data.idx_source import FASHION_MNIST_DIR

DIGIT_TEMPLATES = ("{}", "the digit {}", "a handwritten {}")
FASHION_TEMPLATES = ("a photo of a {}.", "a {}.", "{}")

# Router arguments by condition (appendix §6.1): balance loss only for data-dependent routing.
NOISE = 1.0 / 8  # Gaussian noise std of eq. 3 (V-MoE: 1 / E)
ROUTER_ARGS = {
    "token": dict(k=2, noise_std=NOISE, capacity_factor_train=1.0, capacity_factor_eval=2.0,
                  switch_loss_weight=1e-2),
    "context": dict(k=2, noise_std=NOISE, capacity_factor_train=1.0, capacity_factor_eval=2.0,
                    switch_loss_weight=1e-2),
    "modality": dict(k=2, noise_std=NOISE),
    "task": dict(k=2, noise_std=NOISE),
    "attribute": dict(k=2, noise_std=NOISE),
}

DATASETS = {
    "digits": dict(source="sklearn_digits", test_fraction=0.2, split_seed=0,
                   label_templates=DIGIT_TEMPLATES, augment=dict(translate=0)),
    "fashion": dict(source="idx", directory=FASHION_MNIST_DIR, preset="fashion_mnist",
                    label_templates=FASHION_TEMPLATES),
}
# Train variant and eval batch per dataset: 4x4 patches, 16 tokens for digits, 49 for fashion.
VARIANTS = {
    "digits": (dict(batch_size=32, resolution=16, text_length=24), 120),
    "fashion": (dict(batch_size=16, resolution=28, text_length=24), 500),
}
# Datasets per scale; the grid runs digits alone so that 15 runs fit a shared 2-core CPU.
MIXES = {"default": ("digits", "fashion"), "grid": ("digits",), "smoke": ("digits", "fashion"),
         "long": ("digits", "fashion"), "paper": ("digits", "fashion")}

#               steps  width depth heads mlp   log  eval  zero-shot eval
SCALES = {
    "default": (3000, 64, 4, 4, 256, 100, 1500, True),
    "grid": (800, 32, 2, 2, 64, 200, 0, False),
    "smoke": (6, 16, 1, 2, 32, 3, 0, True),
    "long": (32000, 64, 4, 4, 256, 200, 2000, True),
    "paper": (3000, 192, 12, 3, 768, 100, 1500, True),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  options = parse_arg(arg, "experiments/uniperceiver_moe_ti.py", words=tuple(SCALES),
                      settings={"condition": tuple(ROUTER_ARGS)}, exclusive=(tuple(SCALES),))
  condition = options.get("condition", "attribute")
  scale = next((s for s in SCALES if s in options), "default")
  steps, width, depth, heads, mlp, log_every, eval_every, zero_shot = SCALES[scale]

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.total_steps = steps
  config.log_every = log_every
  config.eval_every = eval_every
  config.checkpoint_every = eval_every or steps  # a checkpoint at every evaluation
  config.checkpoint_keep = 1
  # Resume from this checkpoint step (None: the newest intact one).
  config.restore_step = ml_collections.config_dict.placeholder(int)
  config.checkpoint_best_metric = None
  config.nonfinite = dict(policy="skip", max_consecutive=20)
  config.datasets = ml_collections.ConfigDict(
      {name: DATASETS[name] for name in MIXES[scale]})
  config.tasks = ml_collections.ConfigDict()
  config.evals = ml_collections.ConfigDict()
  for name in MIXES[scale]:
    variant, eval_batch = VARIANTS[name]
    config.tasks[f"{name}_cls"] = dict(
        dataset=name, objective="softmax", modalities=("image",),
        args=dict(label_smoothing=0.1), variants=dict(base=variant))
    config.tasks[f"{name}_label_nce"] = dict(
        dataset=name, objective="nce", modalities=("image", "text"),
        args=dict(positives="same_label"), variants=dict(base=variant))
    config.evals[name] = dict(
        dataset=name, modality="image", resolution=variant["resolution"], text_length=24,
        test_split="test", batch_size=eval_batch, zero_shot=zero_shot, linear_probe=False,
        classifier=True)
  config.sampling = dict(weighting="sqrt")  # Uni-Perceiver: square root of dataset size
  config.model = dict(
      width=width, depth=depth, num_heads=heads, mlp_dim=mlp, embed_dim=width,
      scan_layers=True, remat_policy="none",
      vision_patch=(1, 4, 4), vision_base_grid=(1, 4, 4), vision_channels=1,
      text_max_length=24,
      # LayerScale at 1e-3 and a uniform stochastic depth (appendix §1; DeiT-Ti's rate 0.1).
      layer_scale=1e-3, stochastic_depth=0.1,
      # Eq. 3 takes the top-k softmax values as they are (no renormalisation over the k).
      moe=dict(num_experts=8, every=1, router="top_k", router_args=ROUTER_ARGS[condition],
               condition=condition, ffn=True, attention="shared", group_size="example",
               renormalize_gates=False),
  )
  # §4.1: AdamW, lr 5e-4, weight decay 0.05, beta2 0.98, eps 1e-6; clip 0.5; cosine decay.
  config.optimizer = dict(name="adamw", learning_rate=5e-4, weight_decay=0.05, b2=0.98,
                          eps=1e-6, warmup_steps=min(100, steps // 10), schedule="cosine",
                          grad_clip_norm=0.5)
  config.input = dict(num_threads=1, prefetch=2)
  config.mesh = dict(data=-1)
  return config
