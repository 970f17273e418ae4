r"""Model FLOPs utilisation of IMP-B dense and IMP-MoE-B in bf16 on a GPU.

MFU = model FLOPs per step / step time / the device's peak bf16 FLOP/s. Model FLOPs are
counted from the model (the usual 6 x parameters x tokens, plus attention):

  per step = 6 * P_token * T  +  12 * L * N^2 * D * B  +  6 * P_head * B

with P_token the parameters one token's forward pass multiplies with (patch projection and
encoder; for MoE, the dense parameters plus experts_per_token / E of the expert parameters,
`imp.plan.param_count`), T = B * N tokens per step, L layers, width D, and the heads
applied once per example. Forward attention is 2 * N^2 * D per layer for QK^T and as much for
AV; the backward pass doubles it (hence 12). On CPU, tests/test_benchmarks.py checks the count
against XLA's own (`cost_analysis()["flops"]`) of the gradient with unrolled layers. The
hardware FLOPs utilisation (HFU) beside MFU uses the FLOPs of the train step's own program,
every scanned layer counted, as the dry run counts them (`step_flops`): with remat it includes
the recomputed forward pass, which MFU by convention leaves out, and it has no FLOPs for the
inside of cuDNN's fused attention kernel (attention is about 5% of IMP-B's model FLOPs).

Shapes are the paper's (IMP §4.1, experiments/imp_moe_b.py): 256x256 RGB images repeated to
4 frames, 4x16x16 patches (256 tokens), width 768, 12 layers, full remat; IMP-MoE-B has a
16-expert expert-choice MoE in every second layer; IMP-B is the same model with
num_experts=0 (experiments/imp_b.py when present). The step is the trainer's own bf16 step
(`model.dtype="bfloat16"`, float32 parameters and Adam moments, uint8 images), each model with
`model.attention_impl` "xla" and "cudnn" (fused attention), built from the plan of
IMP-MoE-B's experiment config as training builds it (`mfu_config`). The batch splits over
every visible GPU (`config.mesh.data=-1`) and the peak is theirs together; one GPU is the
intended case.

  python -m benchmarks.gpu_mfu [--batch 256] [--remat] [--out benchmarks/results/gpu_mfu.json]

`--remat` adds IMP §3.1.1's trade at these shapes (70-80% less memory for 18-20% longer steps):
IMP-B with cuDNN attention under each `model.remat_policy`, the compiler's temporary memory of
the step and its time, the policies stepped side by side (`remat_policies`). The CPU benchmark
`benchmarks/remat.py` measures the same at a width this CPU can run.

On a machine without a GPU it exits with status 0 and says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks.measure import Report, Stat, interleaved, ratio
from benchmarks.programs import compile_train_program
from benchmarks.remat import POLICIES as REMAT_POLICIES
from imp.config.files import from_file
from imp.model import IMPModel, ModelConfig
from imp.plan import scan_flops
from imp.plan.param_count import count_params
from imp.plan.plan import Plan, build_plan, declared_facts
from imp.step.step import StepSpec, make_loss_fn

NAME = "gpu_mfu"
GOAL = "MFU of the paper's shapes (no paper figure)"
ROOT = Path(__file__).resolve().parents[1]
# Peak dense bf16 FLOP/s by device kind (vendor data sheets, without sparsity).
PEAK_BF16 = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12,
             "NVIDIA H200": 989e12, "NVIDIA A100-SXM4-80GB": 312e12,
             "NVIDIA A100-SXM4-40GB": 312e12}


@dataclasses.dataclass(frozen=True)
class FlopCount:
  """Analytic training FLOPs of one step (forward + backward) and what they come from."""

  params_per_token: int
  tokens: int
  attention: int
  heads: int

  @property
  def total(self) -> int:
    return 6 * self.params_per_token * self.tokens + self.attention + self.heads


def _experts_per_token(config: ModelConfig) -> float:
  args = dict(config.moe.router_args)
  if config.moe.router == "expert_choice":
    return float(args.get("capacity_factor_train", 1.0))
  return float(args.get("k", 1))


def vision_tokens(config: ModelConfig, image_shape: tuple[int, ...]) -> int:
  """Tokens of one image [H, W, C]: one temporal patch (an image fills it), H/ph x W/pw."""
  return (image_shape[0] // config.vision_patch[1]) * (image_shape[1] // config.vision_patch[2])


def train_flops(model: IMPModel, params: Any, batch: int, tokens_per_example: int) -> FlopCount:
  """Model FLOPs of one classification train step on `batch` images (see module docstring).

  Args:
    model: the IMP model (its config gives L, D and the MoE routing).
    params: its parameters (arrays or ShapeDtypeStructs).
    batch: images per step B.
    tokens_per_example: N.
  """
  config = model.config
  per_token = count_params(
      {"encoder": params["encoder"], "patch_proj": params["embedders_vision"]["patch_proj"]},
      num_experts=config.moe.num_experts,
      experts_per_token=_experts_per_token(config))["per_token"]
  head = sum(int(np.prod(x.shape)) for k, v in params.items() if k.startswith("classifiers_")
             for x in jax.tree.leaves(v))
  n, d = tokens_per_example, config.width
  return FlopCount(params_per_token=per_token, tokens=batch * n,
                   attention=12 * config.depth * n * n * d * batch, heads=6 * head * batch)


def xla_flops(program: Any) -> float:
  """XLA's FLOP count of a lowered or compiled program (a dict, or a list of them).

  XLA counts the body of a while loop once, so a program with scanned layers is counted as
  one layer; on a GPU a compiled program's count leaves out its cuBLAS and cuDNN calls.
  """
  analysis = program.cost_analysis()
  if isinstance(analysis, list | tuple):
    analysis = analysis[0]
  return float(analysis["flops"])


def grad_program(model: IMPModel, params: Any, batch: dict[str, Any], head: str) -> Any:
  """The lowered gradient of the classification loss (what the analytic count describes)."""
  loss_fn = make_loss_fn(model, StepSpec("softmax", head, ("image",)))
  grad = jax.grad(lambda p, b, r: loss_fn(p, b, r)[0])
  return jax.jit(grad).lower(params, batch, jax.random.PRNGKey(0))


def step_flops(plan: Plan, program: Any) -> float:
  """FLOPs of the train step with every scanned layer counted, as the dry run counts them:
  the step's jaxpr walked by `imp.plan.scan_flops.count` (XLA's weights, every scan trip).

  Not XLA's count of the compiled program: on a GPU that leaves out the cuBLAS and cuDNN
  calls the matmuls become (IMP-B's step on an H200, scaled to every layer: 0.11x the model
  FLOPs with XLA's attention, 0.005x with cuDNN's), and on any backend it counts a loop's
  body once."""
  traced = jax.jit(plan.step_fn(program)).trace(plan.state, plan.batch_of(program))
  return scan_flops.count(traced.jaxpr, every_trip=True)


def paper_model(moe: bool) -> dict[str, Any]:
  """The `config.model` of IMP-MoE-B, or of IMP-B (num_experts=0) for the dense model."""
  dense_file = ROOT / "experiments" / "imp_b.py"
  name = "imp_moe_b" if moe or not dense_file.exists() else "imp_b"
  model = from_file(str(ROOT / "experiments" / f"{name}.py")).model.to_dict()
  if not moe:
    model["moe"] = dict(model.get("moe") or {}, num_experts=0)
  return model


def mfu_config(model_cfg: dict[str, Any], batch_size: int, dtype: Any = jnp.bfloat16,
               ) -> ml_collections.ConfigDict:
  """IMP-MoE-B's experiment config (experiments/imp_moe_b.py) with `model_cfg` as its model in
  compute dtype `dtype`, reduced to ImageNet classification at the model's base resolution
  and `batch_size` images per step (split over every visible device), without evaluation."""
  config = from_file(str(ROOT / "experiments" / "imp_moe_b.py"))
  config.model = dict(model_cfg, dtype=jnp.dtype(dtype).name)
  model = ModelConfig.from_config(config.model)
  side = model.vision_base_grid[1] * model.vision_patch[1]
  config.tasks = ml_collections.ConfigDict({"imagenet_cls": dict(
      dataset="imagenet", objective="softmax", modalities=("image",),
      variants=dict(base=dict(batch_size=batch_size, resolution=side)))})
  config.evals = ml_collections.ConfigDict({})
  config.mesh = dict(data=-1)
  return config


def plan_of(config: ml_collections.ConfigDict) -> Plan:
  """The plan of an `mfu_config` (the dataset facts it declares for the dry run)."""
  return build_plan(config, declared_facts(config))


def measure(model_cfg: dict[str, Any], batch_size: int, *, dtype: Any = jnp.bfloat16,
            rounds: int = 5, repeats: int = 5, peak: float | None = None) -> dict[str, Any]:
  """Step time, model FLOPs, the step's FLOPs and (with `peak`) MFU and HFU of one train step;
  XLA's own count of the compiled step beside them (`xla_flops_compiled`).

  The step is the trainer's own, from the plan of `mfu_config`: `config.model.dtype` =
  `dtype` (the computation), float32 parameters and Adam moments, uint8 images normalised
  inside the step."""
  config = mfu_config(model_cfg, batch_size, dtype)
  plan = plan_of(config)
  (program,) = plan.programs
  step = compile_train_program(plan, program)
  times = Stat.of(interleaved({"step": step}, rounds=rounds, repeats=repeats)["step"])
  side = config.tasks.imagenet_cls.variants.base.resolution
  flops = train_flops(plan.model, plan.state.params, batch_size,
                      vision_tokens(plan.model_config, (side, side)))
  out = {"step_seconds": times.to_json(), "model_flops": flops.total,
         "params_per_token": flops.params_per_token, "tokens": flops.tokens,
         "step_flops": step_flops(plan, program),
         "xla_flops_compiled": xla_flops(step.compiled), "batch": batch_size,
         "dtype": jnp.dtype(dtype).name}
  if peak:
    out["mfu"] = flops.total / times.median / peak
    out["hfu"] = out["step_flops"] / times.median / peak
  return out


def remat_policies(model_cfg: dict[str, Any], batch_size: int, *, rounds: int = 5,
                   repeats: int = 5) -> dict[str, Any]:
  """Temporary memory (`compiled.memory_analysis()`) and step time of the `mfu_config` step
  under each of `REMAT_POLICIES`, the steps interleaved so their ratios are side by side.

  A policy whose step fails to compile or run (say, out of memory) is recorded as its error;
  the others are still measured."""
  steps, out = {}, {}
  for policy in REMAT_POLICIES:
    try:
      plan = plan_of(mfu_config(dict(model_cfg, remat_policy=policy), batch_size))
      (program,) = plan.programs
      steps[policy] = compile_train_program(plan, program)
    except Exception as error:  # noqa: BLE001 -- reported beside the policies that ran
      out[policy] = {"error": _error_text(error)}
  times = interleaved(steps, rounds=rounds, repeats=repeats)
  for policy, step in steps.items():
    out[policy] = {"temp_bytes": step.temp_bytes,
                   "step_seconds": Stat.of(times[policy]).to_json()}
    if "none" in steps:
      out[policy]["memory_saved"] = 1.0 - step.temp_bytes / steps["none"].temp_bytes
      out[policy]["step_ratio_to_none"] = ratio(times[policy], times["none"]).to_json()
  return out


def _error_text(error: Exception) -> str:
  where = traceback.extract_tb(error.__traceback__)[-1]
  return f"{type(error).__name__}: {error} ({where.filename}:{where.lineno})"


def benchmark(quick: bool) -> Report:
  """Registry entry: on CPU it reports that there is nothing to measure."""
  del quick
  device = jax.devices()[0]
  if device.platform != "gpu":
    return Report([("IMP-B / IMP-MoE-B MFU", f"not measured: no GPU ({device.platform} only)",
                    GOAL)], {"device": device.device_kind, "measured": False})
  results = dict(run_gpu(batch_size=256))
  return Report([(f"{name} bf16 MFU ({device.device_kind})", _summary(r), GOAL)
                 for name, r in results.items()], {"device": device.device_kind,
                                                   "results": results})


def _summary(result: dict[str, Any]) -> str:
  """One measurement in a few words: MFU and HFU, step time without a known peak, or the
  error."""
  if "error" in result:
    return f"failed: {result['error'][:200]}"
  if "mfu" not in result:
    return f"{1e3 * result['step_seconds']['median']:.1f} ms/step (peak unknown)"
  return (f"MFU {100 * result['mfu']:.1f}%, HFU {100 * result['hfu']:.1f}%, "
          f"{1e3 * result['step_seconds']['median']:.1f} ms/step")


def _remat_summary(result: dict[str, Any]) -> str:
  """One policy's measurement: temporary memory and step time, or the error."""
  if "error" in result:
    return f"failed: {result['error'][:200]}"
  return (f"temp {result['temp_bytes'] / 2**30:.2f} GiB, "
          f"{1e3 * result['step_seconds']['median']:.1f} ms/step")


def run_gpu(batch_size: int) -> Iterator[tuple[str, dict[str, Any]]]:
  """(name, measurement) of each model with XLA's attention and with cuDNN's fused attention
  (`model.attention_impl`), one at a time, so that a caller can keep each as it comes."""
  kind = jax.devices()[0].device_kind
  peak = PEAK_BF16.get(kind)
  if peak is None:  # still worth timing: step seconds and FLOPs, without the ratio
    print(f"gpu_mfu: no peak bf16 FLOP/s known for device {kind!r} (known: "
          f"{', '.join(PEAK_BF16)}); add it to PEAK_BF16 for MFU.", file=sys.stderr)
  for name, moe in (("IMP-B", False), ("IMP-MoE-B", True)):
    for impl in ("xla", "cudnn"):
      try:
        yield f"{name} {impl}", measure(dict(paper_model(moe), attention_impl=impl), batch_size,
                                        peak=peak and peak * jax.device_count())
      except Exception as error:  # noqa: BLE001 -- one model's failure (say, a cuDNN kernel
        # this GPU lacks) is a result to report; the other models are still measured
        yield f"{name} {impl}", {"error": _error_text(error)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=256, help="images per step")
  parser.add_argument("--remat", action="store_true",
                      help="also IMP-B (cuDNN attention) under each remat policy")
  parser.add_argument("--out", default="benchmarks/results/gpu_mfu.json")
  args = parser.parse_args()
  device = jax.devices()[0]
  if device.platform != "gpu":
    print(f"gpu_mfu: no GPU on this machine (JAX sees {device.platform}: "
          f"{device.device_kind}); nothing measured.")
    return
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  record: dict[str, Any] = {"device": device.device_kind, "jax": jax.__version__,
                            "batch": args.batch, "results": {}}
  for name, r in run_gpu(args.batch):  # written after each model: a killed run keeps the rest
    record["results"][name] = r
    print(f"{name}: {_summary(r)} ({device.device_kind})", flush=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
  if args.remat:
    record["remat"] = remat_policies(dict(paper_model(moe=False), attention_impl="cudnn"),
                                     args.batch)
    for policy, r in record["remat"].items():
      print(f"IMP-B cudnn remat={policy}: {_remat_summary(r)}", flush=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  sys.exit(main())
