#!/usr/bin/env bash
# Train (or dry-run) imp on a Cloud TPU pod slice: create or reuse the TPU VM, copy this
# checkout to every worker, install it, and start the same command on all workers at once.
# JAX finds the other workers itself (IMP_DISTRIBUTED=auto -> jax.distributed.initialize()).
#
#   TPU_NAME=imp-v4 ZONE=us-central2-b ACCELERATOR_TYPE=v4-256 \
#   WORKDIR=gs://my-bucket/imp_moe_l launch/tpu_pod.sh \
#       --config=experiments/imp_moe_l.py --config.mesh.expert=16 \
#       --config.datasets.laion400m.data_dir=gs://my-bucket/tfds
#
# Arguments after the script name go to `python -m imp.main` unchanged.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME, the TPU VM to create or reuse}"
: "${WORKDIR:?set WORKDIR, e.g. gs://bucket/run (shared by all workers)}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-256}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
PROJECT_FLAG=()
if [[ -n "${PROJECT:-}" ]]; then
  PROJECT_FLAG=(--project "$PROJECT")
fi
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

tpu() {
  gcloud compute tpus tpu-vm "$@" --zone "$ZONE" "${PROJECT_FLAG[@]}"
}

# 1. Create the TPU VM unless it exists (a preempted or deleted one is created again).
if tpu describe "$TPU_NAME" >/dev/null 2>&1; then
  echo "reusing TPU VM $TPU_NAME"
else
  echo "creating TPU VM $TPU_NAME ($ACCELERATOR_TYPE, $RUNTIME_VERSION)"
  tpu create "$TPU_NAME" --accelerator-type "$ACCELERATOR_TYPE" --version "$RUNTIME_VERSION"
fi

# 2. Copy this checkout to every worker and install it with JAX for TPU.
archive="$(mktemp -t imp-XXXXXX.tar.gz)"
trap 'rm -f "$archive"' EXIT
tar -C "$REPO_ROOT" --exclude=.git --exclude=workdirs -czf "$archive" .
tpu scp "$archive" "$TPU_NAME:imp.tar.gz" --worker=all
tpu ssh "$TPU_NAME" --worker=all --command \
  'mkdir -p ~/imp && tar -xzf ~/imp.tar.gz -C ~/imp && cd ~/imp &&
   python3 -m pip install -q -U "jax[tpu]" && python3 -m pip install -q -e .'

# 3. Run on all workers; every process reads its own shard of each dataset, process 0 logs.
args="$(printf '%q ' "$@")"
tpu ssh "$TPU_NAME" --worker=all --command \
  "cd ~/imp && IMP_DISTRIBUTED=auto python3 -m imp.main --workdir $(printf '%q' "$WORKDIR") $args"
