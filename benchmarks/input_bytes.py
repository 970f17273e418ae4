r"""Host-to-device bytes per device of every train program: uint8 pixels against float32.

  python -m benchmarks.input_bytes --config experiments/imp_moe_l.py --cpu_devices 8
  python -m benchmarks.input_bytes --config experiments/imp_moe_l.py --cpu_devices 8 \
      --dtype bfloat16        # config.model.dtype: audio batches in bf16 too

Builds the config's plan (no data read, nothing compiled) and, for every train program, the
bytes of its batch per data-parallel device twice: as the pipeline sends it (images and video
uint8, audio in the compute dtype, `imp.plan.abstract_batch`), and with every image, video and
audio field float32, as the pipeline sent them before pixels stayed uint8. These are the bytes
each step copies from host memory to a device; the dry run's `input MiB` column and
programs.json's `input_bytes` report the first figure.
"""

from __future__ import annotations

import argparse
import os
import sys

FLOAT_FIELDS = ("image", "video", "audio")  # float32 in the pipeline before uint8 pixels


def rows(plan) -> list[tuple[str, int, int]]:
  """(program, bytes per device now, bytes per device with float32 media) per train program."""
  import jax
  import jax.numpy as jnp

  from imp.plan import programs

  def as_float32(batch):
    return {k: jax.ShapeDtypeStruct(v.shape, jnp.float32) if k in FLOAT_FIELDS else v
            for k, v in batch.items()}

  out = []
  for program in plan.programs:
    batch = plan.batch_of(program)
    before = (as_float32(batch) if isinstance(batch, dict)
              else tuple(as_float32(b) for b in batch))
    out.append((program.name, programs.input_bytes(batch, plan.mesh),
                programs.input_bytes(before, plan.mesh)))
  return out


def main(argv: list[str] | None = None) -> list[tuple[str, int, int]]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="experiment file, path[:arg]")
  parser.add_argument("--cpu_devices", type=int, default=None,
                      help="simulate this many CPU devices (the config's mesh)")
  parser.add_argument("--dtype", default=None, help="set config.model.dtype (the compute dtype)")
  args = parser.parse_args(argv)
  if args.cpu_devices:  # before JAX starts, as imp.main does
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                               f"device_count={args.cpu_devices}").strip()
  from imp.config.files import from_file
  from imp.plan.plan import build_plan, declared_facts

  config = from_file(args.config)
  if args.dtype:
    config.model.dtype = args.dtype
  plan = build_plan(config, declared_facts(config))
  table = rows(plan)
  width = max(len(name) for name, _, _ in table)
  print(f"{args.config}: mesh {dict(plan.mesh.shape)}, model.dtype "
        f"{plan.model_config.dtype}; MiB per device and step")
  print(f"{'program':<{width}} {'sent MiB':>11} {'f32 media MiB':>13} {'ratio':>6}")
  for name, now, before in table:
    print(f"{name:<{width}} {now / 2**20:11.2f} {before / 2**20:13.2f} {before / now:6.2f}")
  return table


if __name__ == "__main__":
  main(sys.argv[1:])
