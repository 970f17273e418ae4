"""Several processes through JAX's distributed runtime on this machine (launch/local.sh:
coordinator 127.0.0.1, CPU collectives over gloo) train the same model as one process.

Tolerance of "the same parameters": 1e-5 absolute. One process of 8 devices sums the
gradients of its 8 devices in one XLA all-reduce; 2 processes of 4 sum 4 inside each process
and then across the two over gloo, another order of float32 additions (measured: 9 of 94 state
leaves bit-identical, the largest difference 6.4e-6, in the attention key bias, whose true
gradient is 0 because softmax ignores a constant added to every score: Adam divides its
rounding noise by a near-zero second moment; every other leaf within 3e-8). The MoE mesh
test's key bias once differed by 1.09e-5 (CI, 2026-12-07), so key biases are held to 1e-4,
still 5.6x below the 5.6e-4 that the 8 steps' learning rates sum to (warm-up from 0 to 2e-3
over 100 steps): about what Adam would move a key bias with a real gradient.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import tiny_digits_config

from imp import experiment

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "local.sh"
ATOL = 1e-5
KEY_BIAS_ATOL = 1e-4
# The digits smoke config at tiny width: 8 steps, checkpoints at 4 and 8, final evaluation.
TINY = ["--config=experiments/digits.py:smoke", "--config.total_steps=8",
        "--config.checkpoint_every=4", "--config.eval_every=0", "--config.log_every=2",
        "--config.model.depth=1", "--config.model.width=32", "--config.model.mlp_dim=64"]


# Signs that a process crashed: a Python traceback, Python's fault handler (absl enables it)
# with every thread's stack, a C++ abort or CHECK failure, an absl FATAL line; failing those,
# absl ERROR lines.
CRASH = (re.compile(r"^Traceback|Fatal Python error|terminate called|Check failed|^F\d{4} ",
                    re.MULTILINE), re.compile(r"^E\d{4} ", re.MULTILINE))


def crash_report(log_dir, lines_shown=120):
  """How each process of a multi-process run ended, from its log: from a few lines before its
  first sign of a crash (CRASH; the first is the cause: an exception's traceback comes before
  the abort it leads to at shutdown), else its last lines. The fault handler's list of
  extension modules (thousands of characters, nothing about the crash) is left out."""
  parts = []
  for log in sorted(Path(log_dir).glob("process_*.log")):
    lines = [x for x in log.read_text(errors="replace").splitlines()
             if not x.startswith("Extension modules:")]
    first = next((i for pattern in CRASH for i, x in enumerate(lines) if pattern.search(x)),
                 max(len(lines) - lines_shown, 0) + 5)
    shown = lines[max(first - 5, 0):max(first - 5, 0) + lines_shown]
    parts.append(f"--- {log.name}, {len(lines)} lines, from line {max(first - 5, 0) + 1}:\n"
                 + "\n".join(shown))
  return "\n".join(parts) or f"(no process logs in {log_dir})"


def _run(processes, devices, workdir, *args, timeout=600, log_dir=None):
  """imp.main in `processes` processes of `devices` CPU devices each; the finished process.
  Logs go to `log_dir` (a local folder; default beside a local workdir)."""
  log_dir = log_dir or f"{workdir}_logs"
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu", LOG_DIR=log_dir)
  main = [*args, f"--workdir={workdir}", f"--cpu_devices={devices}"]
  command = ([sys.executable, "-m", "imp.main", *main] if processes == 1 else
             [str(LAUNCH), str(processes), "--", *main])
  proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == 0, (proc.stdout[-3000:] + proc.stderr[-3000:] +
                                (crash_report(log_dir) if processes > 1 else ""))
  return proc


def _state(workdir, config=None):
  exp = experiment.build(config or tiny_digits_config(total_steps=8), workdir)
  state, _ = exp.checkpointer.restore(exp.state)
  exp.checkpointer.close()
  return jax.device_get(state)


def _assert_close(a, b):
  """Every leaf within ATOL, the attention key biases within KEY_BIAS_ATOL (module docstring);
  a failure names the leaf."""
  def close(path, x, y):
    name = jax.tree_util.keystr(path)
    atol = KEY_BIAS_ATOL if "'key'" in name and "'bias'" in name else ATOL
    np.testing.assert_allclose(x, y, rtol=0, atol=atol, err_msg=name)
  jax.tree.map_with_path(close, a, b)


def _summary(workdir):
  return json.loads((Path(workdir) / "summary.json").read_text())


def _cut_at_step_4(source, target):
  """A copy of a finished run as a run stopped after its step-4 checkpoint."""
  shutil.copytree(source, target, ignore=shutil.ignore_patterns("compilation_cache"))
  shutil.rmtree(target / "checkpoints" / "8")
  (target / "summary.json").unlink()


def test_launcher_usage_and_a_failing_process_is_named(tmp_path):
  usage = subprocess.run([str(LAUNCH)], capture_output=True, text=True)
  assert usage.returncode == 2 and "usage: launch/local.sh N" in usage.stderr
  env = dict(os.environ, PYTHON=sys.executable, LOG_DIR=str(tmp_path / "logs"))
  proc = subprocess.run([str(LAUNCH), "2", "--", "--config=experiments/no_such_file.py"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode != 0
  assert "launch/local.sh: process 0 (pid" in proc.stderr and "exited with status" in proc.stderr
  for i in (0, 1):  # every process has its own log, and its lines on the console, prefixed
    assert "no_such_file.py" in (tmp_path / "logs" / f"process_{i}.log").read_text()
    assert f"[p{i}] " in proc.stdout


@pytest.mark.slow
def test_two_processes_train_resume_and_evaluate_like_one(tmp_path):
  one, two = tmp_path / "one", tmp_path / "two"
  _run(1, 8, one, *TINY)
  printed = _run(2, 4, two, *TINY).stdout
  assert printed.count("== summary") == 1 and "[p0] == summary" in printed  # process 0 only
  # Same model, same task schedule, same evaluation.
  _assert_close(_state(one), _state(two))
  assert _summary(one)["task_steps"] == _summary(two)["task_steps"]
  for name, value in _summary(one)["eval"].items():  # within one of the 360 test examples
    assert abs(_summary(two)["eval"][name] - value) <= 1 / 360 + 1e-9, name
  # Only process 0 writes metrics and TensorBoard: nothing doubled.
  lines = [(one / "metrics.jsonl").read_text().splitlines(),
           (two / "metrics.jsonl").read_text().splitlines()]
  assert [json.loads(x)["step"] for x in lines[0]] == [json.loads(x)["step"] for x in lines[1]]
  assert len(list((two / "tensorboard").iterdir())) == 1
  # Checkpoints across process counts: 2 processes -> 1, and 1 -> 2, end on the straight run.
  _cut_at_step_4(two, tmp_path / "two_then_one")
  out = _run(1, 8, tmp_path / "two_then_one", *TINY)
  assert "resumed from step 4" in out.stdout + out.stderr
  _cut_at_step_4(one, tmp_path / "one_then_two")
  # Run `two` put its process 0's programs in the tests' compilation cache; a process 0 that
  # loaded them hung with a process 1 that compiled (imp.run.restore.compilation_cache).
  out = _run(2, 4, tmp_path / "one_then_two", *TINY)
  assert "[p0] " in out.stdout and "persistent compilation cache off" in out.stdout
  assert "[p1] " in out.stdout and "resumed from step 4" in out.stdout
  for resumed in ("two_then_one", "one_then_two"):
    _assert_close(_state(one), _state(tmp_path / resumed))
    assert _summary(tmp_path / resumed)["steps_this_run"] == 4


MOE_CONFIG = """
import importlib.util

spec = importlib.util.spec_from_file_location("digits_moe", {path!r})
digits_moe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(digits_moe)


def get_config():
  config = digits_moe.get_config("smoke")
  config.total_steps, config.checkpoint_every, config.eval_every = 8, 4, 0
  config.model.update(depth=2, width=32, mlp_dim=64)
  config.model.moe.dispatch = "einsum"  # the paper configs' dispatch: all-to-all over expert
  config.mesh = dict(data=2, expert=4)
  config.evals = {{}}
  config.checkpoint_best_metric = None
  return config
"""


@pytest.mark.slow
def test_expert_mesh_on_two_processes_trains_like_one(tmp_path):
  path = tmp_path / "digits_moe_mesh.py"
  path.write_text(MOE_CONFIG.format(path=str(ROOT / "experiments" / "digits_moe.py")))
  one, two = tmp_path / "one", tmp_path / "two"
  _run(1, 8, one, f"--config={path}")
  _run(2, 4, two, f"--config={path}")
  spec = __import__("importlib").util.spec_from_file_location("moe_mesh", path)
  module = __import__("importlib").util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.mesh = dict(data=-1)  # this test process has one device
  _assert_close(_state(one, config), _state(two, config))
  assert _summary(one)["task_steps"] == _summary(two)["task_steps"]


def _process_env(port, process_id):
  """The environment of process `process_id` of a 2-process job on loopback `port`."""
  return dict(os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
              JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(process_id))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_a_process_started_with_another_config_stops_before_step_1(tmp_path):
  port = _free_port()
  procs = []
  for i in (0, 1):
    env = _process_env(port, i)
    seed = [f"--config.seed={i}"]  # process 1 differs
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "imp.main", *TINY, *seed, f"--workdir={tmp_path / 'run'}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [2, 2], outs
  assert ("FATAL process 1 was started with another config than process 0 (1 keys differ: "
          "config.seed: process 0 has 0, this one 1)") in outs[1], outs[1][-2000:]
  assert "FATAL process(es) 1 were started with another config than process 0" in outs[0]
  assert not (tmp_path / "run" / "checkpoints").exists() and "step 1" not in outs[0]


def _start(tmp_path, *args, **env):
  """launch/local.sh 2 in the background; its console as lines."""
  env = dict(os.environ, PYTHON=sys.executable, LOG_DIR=str(tmp_path / "logs"), **env)
  return subprocess.Popen(
      [str(LAUNCH), "2", "--", *TINY, *args, f"--workdir={tmp_path / 'run'}", "--cpu_devices=2"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _read_until(proc, text, also=None):
  """The console lines up to the first with `text` after which `also()` (if given) holds;
  reading on meanwhile keeps the pipe from filling and stalling the processes."""
  lines, seen = [], False
  for line in proc.stdout:
    lines.append(line)
    seen = seen or text in line
    if seen and (also is None or also()):
      return lines
  raise AssertionError(f"ended before {text!r}:\n{''.join(lines[-40:])}")


def _committed(directory):
  """Whether orbax has committed a checkpoint (a step folder, no longer its tmp name)."""
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


@pytest.mark.slow
def test_sigterm_to_every_process_saves_one_step_and_skips_the_due_evaluation(tmp_path):
  # An evaluation is due after every step, so the preempted step has one due too.
  proc = _start(tmp_path, "--config.total_steps=400", "--config.eval_every=1",
                "--config.checkpoint_every=1000")
  lines = _read_until(proc, "[p0] step 2: eval")
  proc.send_signal(signal.SIGTERM)  # the launcher sends it to both processes
  out = "".join(lines) + proc.communicate(timeout=900)[0]
  assert proc.returncode == 0, out[-2000:] + crash_report(tmp_path / "logs")
  saved = {int(m) for m in re.findall(r"\[p\d\] step \d+: signal 15 received; saved a "
                                      r"checkpoint at step (\d+)", out)}
  assert len(saved) == 1 and len(re.findall(r"signal 15 received", out)) == 2, out[-4000:]
  step = saved.pop()
  steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert steps == [step]
  assert f"[p0] step {step}: eval" not in out and f"[p1] step {step}: eval" not in out


@pytest.mark.slow
def test_sigkill_of_one_process_stops_the_other_naming_it_and_the_rerun_resumes(tmp_path):
  args = ["--config.total_steps=400", "--config.log_every=1", "--config.checkpoint_every=2"]
  proc = _start(tmp_path, *args, IMP_HEARTBEAT_TIMEOUT_SECONDS="10")
  # After a committed checkpoint: on a loaded machine the step-2 save can still be in flight at
  # step 4, and a run killed before any commit rightly starts again from step 0.
  lines = _read_until(proc, "[p0] step 4:",
                      also=lambda: _committed(tmp_path / "run" / "checkpoints"))
  os.kill(int((tmp_path / "logs" / "process_1.pid").read_text()), signal.SIGKILL)
  out = "".join(lines) + proc.communicate(timeout=600)[0]  # bounded: never a silent hang
  assert proc.returncode != 0
  log0 = (tmp_path / "logs" / "process_0.log").read_text()
  # JAX's coordination service names it: "Task 1 heartbeat timeout" (jax 0.12.0), "The following
  # tasks are unhealthy (stopped sending heartbeats):\n1" (jax 0.12.1).
  assert re.search(r"Task 1 heartbeat timeout|stopped sending heartbeats\):\s*1\s", log0), \
      log0[-3000:]
  rerun = _start(tmp_path, *args)  # the same command resumes; SIGTERM then ends it early
  lines = _read_until(rerun, "resumed from step")
  rerun.send_signal(signal.SIGTERM)
  out = "".join(lines) + rerun.communicate(timeout=900)[0]
  assert rerun.returncode == 0, out[-2000:] + crash_report(tmp_path / "logs")


@pytest.mark.slow
def test_two_processes_set_a_corrupt_checkpoint_aside_alike_and_resume_from_the_older(tmp_path):
  """Bit rot in the newest checkpoint of a 2-process run: both processes name it, process 0
  moves it aside (never deletes it), and the run resumes from the older one to the end."""
  from test_checkpoint_recovery import CORRUPTIONS

  workdir = tmp_path / "run"
  _run(2, 2, workdir, *TINY)
  CORRUPTIONS["array_bytes"][0](workdir / "checkpoints" / "8")
  proc = _run(2, 2, workdir, *TINY, "--config.total_steps=12")
  logs = [(tmp_path / "run_logs" / f"process_{i}.log").read_text() for i in (0, 1)]
  for log in logs:
    assert "checkpoint step 8 is unreadable" in log and "trying step 4" in log, log[-3000:]
    assert "resumed from step 4" in log, log[-3000:]
  assert (workdir / "checkpoints_corrupt" / "8" / "state").is_dir()
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["steps"] == 12 and summary["steps_this_run"] == 8, proc.stdout[-2000:]


# Two processes save the newest and the best checkpoint after every step, at staggered times,
# so the two CheckpointManagers' finishing threads often overlap on one process.
_SAVES = """
import sys, time
import jax
import numpy as np
from imp.parallel.distributed import finish, initialize_from_env
from imp.step.checkpoint import Checkpointer
initialize_from_env()
checkpointer = Checkpointer(sys.argv[1], every=1, keep=2, best_metric="score")
replicated = jax.NamedSharding(jax.make_mesh((jax.device_count(),), ("data",)),
                                jax.P())  # one array of the job, as a train state
state = {"w": jax.device_put(np.arange(512, dtype=np.float32), replicated)}
jitter = np.random.default_rng(jax.process_index())
for step in range(1, 31):
  time.sleep(jitter.uniform(0, 0.1))
  checkpointer.save(step, state, {"step": step})
  checkpointer.save_best(step, state, {"step": step}, {"score": -abs(step - 17)})
checkpointer.close()
finish()
print("saved", checkpointer.all_steps())
"""


@pytest.mark.slow
def test_newest_and_best_checkpoints_saved_at_once_on_two_processes(tmp_path):
  """Both managers end their saves at coordination-service barriers; with the same barrier
  names one process entered a barrier twice, was refused ("already ongoing") and the job
  aborted at shutdown (CI, twice, in the SIGTERM test above)."""
  port = _free_port()
  (tmp_path / "logs").mkdir()
  procs = []
  for i in (0, 1):
    env = _process_env(port, i)
    with open(tmp_path / "logs" / f"process_{i}.log", "w") as log:
      procs.append(subprocess.Popen([sys.executable, "-c", _SAVES, str(tmp_path / "ckpt")],
                                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
  try:  # about 15 s here; a process stuck at a barrier would otherwise wait for 10 minutes
    codes = [p.wait(timeout=180) for p in procs]
  except subprocess.TimeoutExpired:
    codes = "still running after 180 s"
    for p in procs:
      p.kill()
      p.wait()
  assert codes == [0, 0], f"{codes}\n" + crash_report(tmp_path / "logs")
  for i in (0, 1):
    assert "saved [29, 30]" in (tmp_path / "logs" / f"process_{i}.log").read_text()
  assert sorted(p.name for p in (tmp_path / "ckpt_best").iterdir() if p.name.isdigit()) == ["17"]
