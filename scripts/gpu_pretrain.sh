#!/usr/bin/env bash
# Pretrain BERT on GPU hosts: one host with one or more GPUs, or several hosts (one process per host,
# joined through a coordinator). Run from the repository root of a checkout; see docs/launching.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/gpu_pretrain.sh COMMAND [-- EXTRA_PRETRAIN_FLAGS...]

commands:
  install  pip install jax[cuda12] with requirements.txt into $PYTHON's environment, then check that
           JAX sees the GPUs
  run      python -m bert_jax pretrain --config=$CONFIG --workdir=$WORKDIR [extra flags]; the script
           execs Python, so a SIGTERM to it (a scheduler's preemption notice) reaches the trainer, which
           saves a checkpoint and exits with status 143 ("saved, requeue me"; 0 only when finished); running
           it again with the same WORKDIR resumes (docs/launching.md: Slurm, Kubernetes, restart loops)
  all      install, then run

settings (environment variables, defaults in brackets):
  CONFIG               [configs/pretrain.py:base]   configs/pretrain.py alone: the tiny built-in run
  WORKDIR              [workdirs/pretrain_<CONFIG argument>]   (the pretrain command's own default)
  INPUT_FILES          []                 passed as --config.data.input_files (files, globs, directories)
  VOCAB_FILE           []                 passed as --config.data.vocab_file
  PYTHON               [python3]          e.g. .venv/bin/python
  JAX_CUDA             [jax[cuda12]]      the JAX requirement installed with requirements.txt
  CUDA_VISIBLE_DEVICES [all]              the GPUs this process uses
  multi-host (set all three on every host; the same CONFIG and WORKDIR everywhere, WORKDIR shared):
  COORDINATOR_ADDRESS  []                 host:port of process 0, reachable from every host
  NUM_PROCESSES        [1]
  PROCESS_ID           [0]                0 .. NUM_PROCESSES-1, different on each host
  (under SLURM with one task per host, leave these unset: JAX reads the job's layout itself)

examples:
  PYTHON=.venv/bin/python CONFIG=configs/pretrain.py scripts/gpu_pretrain.sh all     # built-in smoke run
  INPUT_FILES=../shared/data/wikipedia VOCAB_FILE=../shared/data/vocab/bert-base-uncased-vocab.txt \
      scripts/gpu_pretrain.sh run -- --config.train.num_steps=100000
  COORDINATOR_ADDRESS=10.0.0.2:1234 NUM_PROCESSES=2 PROCESS_ID=1 WORKDIR=gs://my-bucket/bert \
      scripts/gpu_pretrain.sh run
EOF
}

CONFIG="${CONFIG:-configs/pretrain.py:base}"
WORKDIR="${WORKDIR:-}"
INPUT_FILES="${INPUT_FILES:-}"
VOCAB_FILE="${VOCAB_FILE:-}"
PYTHON="${PYTHON:-python3}"
JAX_CUDA="${JAX_CUDA:-jax[cuda12]}"
COORDINATOR_ADDRESS="${COORDINATOR_ADDRESS:-}"
NUM_PROCESSES="${NUM_PROCESSES:-1}"
PROCESS_ID="${PROCESS_ID:-0}"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() {
  echo "gpu_pretrain.sh: $*" >&2
  exit 2
}

cmd_install() {
  cd "$REPO_ROOT"
  # One resolver call, so the CUDA build of JAX stays within the versions requirements.txt allows.
  "$PYTHON" -m pip install -r requirements.txt "$JAX_CUDA"
  "$PYTHON" - <<'EOF'
import sys

import jax

devices = jax.devices()
print(f"JAX {jax.__version__}, backend {jax.default_backend()}: {devices}")
if jax.default_backend() != "gpu":
    sys.exit("JAX found no GPU: check the NVIDIA driver (nvidia-smi) and that jax[cuda12] installed its plugin")
EOF
}

cmd_run() {
  if [[ -z "$WORKDIR" ]]; then
    local argument="${CONFIG#*:}"
    [[ "$argument" == "$CONFIG" ]] && argument="builtin"
    WORKDIR="workdirs/pretrain_$argument"
  fi
  local data=() distributed=()
  if [[ -n "$INPUT_FILES" ]]; then
    data+=(--config.data.source=files --config.data.input_files="$INPUT_FILES")
  fi
  if [[ -n "$VOCAB_FILE" ]]; then
    data+=(--config.data.vocab_file="$VOCAB_FILE")
  fi
  if [[ -n "$COORDINATOR_ADDRESS" ]]; then
    [[ "$NUM_PROCESSES" =~ ^[1-9][0-9]*$ ]] || die "NUM_PROCESSES='$NUM_PROCESSES': expected a positive integer"
    [[ "$PROCESS_ID" =~ ^[0-9]+$ && "$PROCESS_ID" -lt "$NUM_PROCESSES" ]] ||
      die "PROCESS_ID='$PROCESS_ID': expected an integer in [0, $NUM_PROCESSES)"
    distributed=(--coordinator_address="$COORDINATOR_ADDRESS" --num_processes="$NUM_PROCESSES"
      --process_id="$PROCESS_ID")
  elif [[ "$NUM_PROCESSES" != "1" ]]; then
    die "NUM_PROCESSES=$NUM_PROCESSES needs COORDINATOR_ADDRESS (host:port of process 0)"
  fi
  cd "$REPO_ROOT"
  # TensorFlow only feeds data here; it must not reserve GPU memory that JAX needs.
  export TF_FORCE_GPU_ALLOW_GROWTH=true TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
  # ${a[@]+"${a[@]}"}: an empty array under `set -u` in bash 3.2. Data flags before the extra flags, so
  # that those override them.
  exec "$PYTHON" -m bert_jax pretrain --config="$CONFIG" --workdir="$WORKDIR" \
    ${distributed[@]+"${distributed[@]}"} ${data[@]+"${data[@]}"} "$@"
}

main() {
  if [[ $# -eq 0 ]]; then
    usage >&2
    exit 2
  fi
  local command="$1"
  shift
  if [[ "${1:-}" == "--" ]]; then
    shift
  elif [[ $# -gt 0 ]]; then
    die "extra pretrain flags go after '--' (got '$1')"
  fi
  if [[ $# -gt 0 && "$command" != "run" && "$command" != "all" ]]; then
    die "'$command' takes no pretrain flags"
  fi
  case "$command" in
    -h | --help | help) usage ;;
    install) cmd_install ;;
    run) cmd_run "$@" ;;
    all)
      cmd_install
      cmd_run "$@"
      ;;
    *)
      usage >&2
      die "unknown command '$command'"
      ;;
  esac
}

main "$@"
