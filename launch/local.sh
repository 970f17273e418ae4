#!/usr/bin/env bash
# Start N processes of imp on this machine as one multi-process JAX job, the way
# tpu_pod.sh and slurm_gpu.sbatch start one process per host: every process runs the same
# `python -m imp.main ...` with JAX_COORDINATOR_ADDRESS (127.0.0.1 only), JAX_NUM_PROCESSES
# and JAX_PROCESS_ID set; CPU collectives (gloo) carry the gradient all-reduce.
#
#   launch/local.sh 2 -- --config=experiments/digits.py:smoke --workdir=/tmp/digits_2p \
#       --cpu_devices=4
#
# Arguments after `--` go to `python -m imp.main` unchanged (pass --cpu_devices=K for K CPU
# devices per process). Every line a process prints is echoed as "[p<i>] line" and kept in
# $LOG_DIR/process_<i>.log (its pid in process_<i>.pid; LOG_DIR defaults to a new temporary
# directory, printed first). SIGTERM or SIGINT to this script is sent to every process (a pod
# preemption); the script exits 0 when every process did, else with the first failing
# process's status, naming it.
#   PYTHON   interpreter (default: python)     PORT     coordinator port (default: a free one)
#   LOG_DIR  per-process logs                  JAX_PLATFORMS   default cpu
set -euo pipefail

if [[ $# -lt 1 || ! $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: launch/local.sh N -- <imp.main arguments>   (N: processes, a positive integer)" >&2
  exit 2
fi
NUM_PROCESSES=$1
shift
if [[ ${1:-} == "--" ]]; then
  shift
fi
PYTHON="${PYTHON:-python}"
PORT="${PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
LOG_DIR="${LOG_DIR:-$(mktemp -d -t imp-local-XXXXXX)}"
mkdir -p "$LOG_DIR"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
echo "launch/local.sh: $NUM_PROCESSES processes, coordinator 127.0.0.1:$PORT, logs in $LOG_DIR"

pids=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  log="$LOG_DIR/process_$i.log"
  : >"$log"
  JAX_COORDINATOR_ADDRESS="127.0.0.1:$PORT" JAX_NUM_PROCESSES="$NUM_PROCESSES" \
    JAX_PROCESS_ID="$i" "$PYTHON" -m imp.main "$@" >"$log" 2>&1 &
  pids+=("$!")
  echo "$!" >"$LOG_DIR/process_$i.pid"
  # The follower ends by itself once the process has ended and its last lines are out.
  tail --pid="$!" -n +1 -F "$log" 2>/dev/null | sed -u "s/^/[p$i] /" &
done

# shellcheck disable=SC2317  # called by the traps below
forward() {
  echo "launch/local.sh: signal $1: sending it to every process" >&2
  for pid in "${pids[@]}"; do
    kill -s "$1" "$pid" 2>/dev/null || true
  done
}
trap 'forward TERM' TERM
trap 'forward INT' INT

status=0
failed=""
for ((i = 0; i < NUM_PROCESSES; i++)); do
  # `wait` returns early when a trapped signal arrives; wait again until the process is gone.
  while true; do
    rc=0
    wait "${pids[$i]}" || rc=$?
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      break
    fi
  done
  if [[ $rc -ne 0 && -z $failed ]]; then
    status=$rc
    failed="process $i (pid ${pids[$i]}) exited with status $rc"
  fi
done
wait  # the followers
if [[ -n $failed ]]; then
  echo "launch/local.sh: $failed; logs in $LOG_DIR" >&2
else
  echo "launch/local.sh: all $NUM_PROCESSES processes exited 0; logs in $LOG_DIR"
fi
exit "$status"
