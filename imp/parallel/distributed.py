"""Multi-host start-up: `jax.distributed.initialize` driven by the environment.

Called by `imp.main` before anything touches a device. Which processes form one job:
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID   explicit (any GPU cluster);
  IMP_DISTRIBUTED=auto                                         let JAX detect the cluster
                                                               (Cloud TPU pods, SLURM, Open
                                                               MPI, Kubernetes);
  SLURM_JOB_ID with SLURM_NTASKS > 1                           a SLURM job step (JAX reads
                                                               the rest from SLURM);
  none of these                                                one process: nothing to do.
  IMP_HEARTBEAT_TIMEOUT_SECONDS (optional, any of the above)    how long the others wait for a
                                                               process that stopped answering
                                                               before they stop too (JAX's
                                                               default: 100 s).
After start-up each process sees every device of the job (`jax.devices()`) and its own
(`jax.local_devices()`); it reads its own shard of every dataset, only process 0 writes logs,
and all processes take part in checkpoints. At the end `finish` ends them in step.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

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
  env = os.environ if env is None else env
  settings = distributed_settings(env)
  if settings is None:
    return False
  heartbeat = env.get("IMP_HEARTBEAT_TIMEOUT_SECONDS")
  if heartbeat:
    if not heartbeat.isdigit() or int(heartbeat) < 1:
      raise ValueError(f"IMP_HEARTBEAT_TIMEOUT_SECONDS={heartbeat!r} must be a positive integer "
                       "(seconds).")
    settings["heartbeat_timeout_seconds"] = int(heartbeat)
  jax.distributed.initialize(**settings)
  log.info("process %d of %d; %d local and %d global devices", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def finish() -> None:
  """Ends a job of several processes in step, after its work succeeded on every process.

  Every process first waits for all the others, so none starts tearing down (its CPU
  collectives' connections, the coordination service that process 0 hosts) while another is
  still in a collective or a checkpoint's barriers: a preempted step's save and the summary
  take processes different times. Then the distributed runtime is shut down together, while
  every backend still exists, rather than from JAX's exit hook after the backends are gone.
  Nothing to do with one process.
  """
  if jax.process_count() == 1:
    return
  multihost_utils.sync_global_devices("imp_end_of_run")
  jax.distributed.shutdown()


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items() for k, v in _leaves(sub, f"{prefix}{key}.").items()}
  return {prefix[:-1]: tree}


def check_same_config(config_json: str) -> None:
  """Raises ValueError on every process if any process's config differs from process 0's.

  A process started with other flags would train another model, or wait forever in a
  collective the others never enter; so all stop before step 1, the differing one naming
  the keys. Nothing to do with one process.
  """
  if jax.process_count() == 1:
    return
  mine = np.frombuffer(config_json.encode(), np.uint8)
  length = int(multihost_utils.broadcast_one_to_all(np.int32(mine.size)))
  buffer = mine if jax.process_index() == 0 else np.zeros(length, np.uint8)
  first = bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer))).decode()
  differs = first != config_json
  flags = np.asarray(multihost_utils.process_allgather(np.int32(differs)))
  if not flags.any():
    return
  others = [str(i) for i in np.flatnonzero(flags)]
  if differs:
    a, b = _leaves(json.loads(first)), _leaves(json.loads(config_json))
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    shown = "; ".join(f"config.{k}: process 0 has {a.get(k)!r}, this one {b.get(k)!r}"
                      for k in keys[:5])
    raise ValueError(f"process {jax.process_index()} was started with another config than "
                     f"process 0 ({len(keys)} keys differ: {shown}); start every process with "
                     "the same command.")
  raise ValueError(f"process(es) {', '.join(others)} were started with another config than "
                   "process 0 (they name the keys); start every process with the same command.")
