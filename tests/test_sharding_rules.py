"""Logical-axis rules, state shardings, multi-host settings and dry-run helpers (no compiles)."""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from imp.model import ModelConfig
from imp.parallel.distributed import distributed_settings
from imp.parallel.mesh import MESH_AXES, make_mesh
from imp.parallel.rules import RULES, get_rules, param_shardings, spec_for, state_shardings
from imp.plan import dry_run
from imp.step.state import TrainState
from imp.tasks import Task, Variant

# data 2, fsdp 2, expert 4, tensor 1: shape checks only, no devices needed.
MESH = AbstractMesh((2, 2, 4, 1), MESH_AXES)


@pytest.mark.parametrize("preset", ["uniperceiver_moe_ti.py", "m3sat.py"])
def test_presets_map_every_parameter_axis_the_model_uses(preset):
  # The names are read off real models (attention and FFN experts, routing conditions, the
  # Perceiver front end), so a new parameter with an unmapped axis fails here, not on a mesh.
  import importlib.util

  from imp.model import IMPModel
  from imp.step.state import logical_axes

  spec = importlib.util.spec_from_file_location("preset", f"experiments/{preset}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = ModelConfig.from_config(module.get_config("smoke").model)
  model = IMPModel(config, heads=(("digits", 10),), modalities=("audio", "image", "text"))
  specs = jax.tree.leaves(logical_axes(model), is_leaf=lambda x: isinstance(x, PartitionSpec))
  names = {name for s in specs for name in s if name is not None}
  assert {"embed", "expert"} <= names
  for rules_name, rules in RULES.items():
    assert names <= dict(rules).keys(), (rules_name, sorted(names - dict(rules).keys()))


def test_fsdp_rules_shard_experts_over_expert_and_width_over_fsdp():
  rules = get_rules("fsdp")
  # Expert MLP kernel [layers, E, D, H] = [2, 8, 32, 64]: E over expert (4), D over fsdp (2),
  # H over tensor (size 1 here, so it stays whole but is named).
  assert spec_for("wi", PartitionSpec("layers", "expert", "embed", "mlp"), (2, 8, 32, 64),
                  MESH, rules) == PartitionSpec(None, "expert", "fsdp", "tensor")
  assert spec_for("w", PartitionSpec("layers", "expert", "embed", "mlp"), (2, 8, 32, 64),
                  MESH, get_rules("expert")) == PartitionSpec(None, "expert", None, None)
  assert spec_for("scale", PartitionSpec(), (), MESH, rules) == PartitionSpec()


def test_rules_fail_clearly():
  with pytest.raises(ValueError, match=r"config.mesh_rules='tp' is not a rules preset; valid: "
                                       r"replicated, expert, fsdp"):
    get_rules("tp")
  # 6 experts do not split over the 4 devices of the expert axis.
  with pytest.raises(ValueError, match=r"parameter enc/wi \(6, 32\): dimension 0 \('expert', "
                                       r"size 6\) does not split over mesh axes \('expert',\)"):
    spec_for("enc/wi", PartitionSpec("expert", "embed"), (6, 32), MESH, get_rules("fsdp"))
  with pytest.raises(ValueError, match=r"logical axis 'rows', which the mesh rules do not map"):
    spec_for("x", PartitionSpec("rows"), (4,), MESH, get_rules("fsdp"))


def test_optimizer_state_follows_its_parameter():
  mesh = make_mesh({"data": -1}, jax.devices()[:1])
  params = {"experts": np.zeros((4, 8, 16), np.float32), "bias": np.zeros((8,), np.float32)}
  axes = {"experts": PartitionSpec("expert", "embed", "mlp"), "bias": PartitionSpec("embed")}
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
  shardings = param_shardings(axes, params, mesh, get_rules("fsdp"))
  state = TrainState(step=np.zeros((), np.int32), params=params, opt_state=tx.init(params),
                     rng=np.zeros((2,), np.uint32))
  out = state_shardings(state, shardings, tx, mesh)
  adam = out.opt_state[1][0]
  for moment in (adam.mu, adam.nu):
    assert moment["experts"].spec == PartitionSpec("expert", "fsdp", "tensor")
    assert moment["bias"].spec == PartitionSpec("fsdp")
  assert adam.count.spec == PartitionSpec() and out.step.spec == PartitionSpec()


def test_distributed_settings_from_the_environment():
  assert distributed_settings({}) is None
  assert distributed_settings({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
                               "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}) == {
      "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
  assert distributed_settings({"IMP_DISTRIBUTED": "auto"}) == {}  # TPU pods: JAX detects
  assert distributed_settings({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}) == {}
  assert distributed_settings({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES=None"):
    distributed_settings({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_PROCESS_ID": "0"})
  with pytest.raises(ValueError, match=r"JAX_PROCESS_ID=4 must be in \[0, JAX_NUM_PROCESSES=4\)"):
    distributed_settings({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4",
                          "JAX_PROCESS_ID": "4"})
  with pytest.raises(ValueError, match="IMP_DISTRIBUTED='yes'"):
    distributed_settings({"IMP_DISTRIBUTED": "yes"})


def test_collective_counts_read_hlo_instructions():
  hlo = """
    %all-to-all.1 = f32[2,4,8]{2,1,0} all-to-all(f32[2,4,8]{2,1,0} %x), dimensions={1}
    %a2a-start = (f32[8]) all-to-all-start(f32[8] %y)
    %a2a-done = f32[8] all-to-all-done((f32[8]) %a2a-start)
    %ar = f32[] all-reduce(f32[] %z), to_apply=%add
  """
  counts = dry_run.collective_counts(hlo)
  # One sync all-to-all plus one async start/done pair (counted once); one all-reduce.
  assert counts["all-to-all"] == 2 and counts["all-reduce"] == 1
  assert counts["all-gather"] == 0


def test_abstract_batch_has_the_pipeline_shapes():
  model = ModelConfig(vision_channels=3)
  variant = Variant("v", batch_size=8, resolution=(32, 32), frames=16, text_length=12,
                    spectrogram=(64, 16))
  task = Task("t/v", "t", "d", "nce", ("video", "audio", "text"), variant, 1.0)
  batch = dry_run.abstract_batch(task, model, labelled=True)
  assert {k: (v.shape, str(v.dtype)) for k, v in batch.items()} == {
      "video": ((8, 16, 32, 32, 3), "uint8"), "audio": ((8, 64, 16, 1), "float32"),
      "text": ((8, 12), "int32"), "label": ((8,), "int32")}
  # Pixels stay uint8 whatever the compute dtype; audio takes it.
  bf16 = dry_run.abstract_batch(task, ModelConfig(vision_channels=3, dtype="bfloat16"), True)
  assert (str(bf16["video"].dtype), str(bf16["audio"].dtype)) == ("uint8", "bfloat16")
  # The model's init input takes the same dtypes (one rule: embedders.input_dtype).
  for cfg, abstract in ((model, batch), (ModelConfig(vision_channels=3, dtype="bfloat16"), bf16)):
    for modality in ("video", "audio", "text"):
      assert cfg.dummy_input(modality).dtype == abstract[modality].dtype, modality


def test_memory_budget_names_every_signature_over_it():
  reports = [dry_run.SignatureReport("a/base", {}, 1, 1, None, 3 * dry_run.GIB, 0.0),
             dry_run.SignatureReport("a/hires", {}, 1, 1, None, 1 * dry_run.GIB, 0.0)]
  dry_run.check_budget(reports, 4.0)  # both fit
  with pytest.raises(dry_run.DryRunError, match=r"1 of 2 signatures exceed the per-device "
                                                r"memory budget of 2.0 GiB \(a/base: 3.00 GiB\)"):
    dry_run.check_budget(reports, 2.0)
