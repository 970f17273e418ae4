"""Multi-host start-up: `jax.distributed.initialize` driven by the environment.

Called by `imp.main` before anything touches a device. Which processes form one job:
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID   explicit (any GPU cluster);
  IMP_DISTRIBUTED=auto                                         let JAX detect the cluster
                                                               (Cloud TPU pods, SLURM, Open
                                                               MPI, Kubernetes);
  SLURM_JOB_ID with SLURM_NTASKS > 1                           a SLURM job step (JAX reads
                                                               the rest from SLURM);
  none of these                                                one process: nothing to do.
After start-up each process sees every device of the job (`jax.devices()`) and its own
(`jax.local_devices()`); it reads its own shard of every dataset, only process 0 writes logs,
and all processes take part in checkpoints.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import jax

log = logging.getLogger("imp.distributed")

EXPLICIT_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _int(env: Mapping[str, str], name: str) -> int:
  try:
    return int(env[name])
  except (KeyError, ValueError):
    raise ValueError(f"{name}={env.get(name)!r}: JAX_COORDINATOR_ADDRESS is set, so {name} "
                     "must be set to an integer too.") from None


def distributed_settings(env: Mapping[str, str]) -> dict[str, Any] | None:
  """Keyword arguments of jax.distributed.initialize for this environment; None if there is
  only one process. {} means JAX detects the cluster itself.

  Raises:
    ValueError: an incomplete or inconsistent explicit setting, naming the variable.
  """
  if env.get("JAX_COORDINATOR_ADDRESS"):
    num, pid = _int(env, "JAX_NUM_PROCESSES"), _int(env, "JAX_PROCESS_ID")
    if num < 1 or not 0 <= pid < num:
      raise ValueError(f"JAX_PROCESS_ID={pid} must be in [0, JAX_NUM_PROCESSES={num}).")
    return {"coordinator_address": env["JAX_COORDINATOR_ADDRESS"], "num_processes": num,
            "process_id": pid}
  mode = env.get("IMP_DISTRIBUTED", "").lower()
  if mode not in ("", "0", "off", "auto", "1"):
    raise ValueError(f"IMP_DISTRIBUTED={env['IMP_DISTRIBUTED']!r}; valid: auto (or 1), off "
                     "(or 0), or unset.")
  if mode in ("auto", "1"):
    return {}
  if mode in ("0", "off"):
    return None
  if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
    return {}
  return None


def initialize_from_env(env: Mapping[str, str] | None = None) -> bool:
  """Starts the multi-process runtime if the environment describes a job; True if it did."""
  settings = distributed_settings(os.environ if env is None else env)
  if settings is None:
    return False
  jax.distributed.initialize(**settings)
  log.info("process %d of %d; %d local and %d global devices", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
  return True
