#!/usr/bin/env bash
# Pretrain BERT on a Cloud TPU VM: a single host (v4-8, v5litepod-8, v6e-8, ...) or a pod slice (v4-32,
# v5p-64, ...). Every worker gets this checkout and the same `python -m bert_jax pretrain` command; JAX
# finds the other workers by itself on Cloud TPU, checkpoints and TensorBoard logs go to WORKDIR (a gs://
# path every worker can reach), and a run started again with the same WORKDIR resumes from its latest
# checkpoint. See docs/launching.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/tpu_vm_pretrain.sh COMMAND [-- EXTRA_PRETRAIN_FLAGS...]

commands (each acts on every worker of the TPU VM):
  create   create the TPU VM (gcloud compute tpus tpu-vm create)
  setup    copy this checkout (tracked and untracked, not ignored, files) to every worker and install
           jax[tpu] and requirements.txt there
  data     copy DATA_GCS (a gs:// folder: text files, vocab.txt) to ~/$DATA_DIR on every worker; each
           worker's input pipeline reads its own share of the files from local disk
  run      start `python -m bert_jax pretrain` on every worker in the background; it keeps running
           when this script or your ssh session ends
  status   whether the run is alive on each worker, with the last lines of its log
  logs     follow the log of worker $WORKER (default 0)
  stop     send SIGTERM to the run on every worker: the trainer saves a checkpoint and exits with
           status 143 ("saved, requeue me"); `run` again resumes
  delete   delete the TPU VM (the checkpoints in WORKDIR stay)
  all      create, setup, data (when DATA_GCS is set) and run

settings (environment variables, defaults in brackets):
  TPU_NAME          [bert-jax]
  ZONE              [us-central2-b]           a zone that has ACCELERATOR_TYPE
  PROJECT           [gcloud's default project]
  ACCELERATOR_TYPE  [v4-8]                    v4-32, v5litepod-16, v5p-64, v6e-8, ...
  RUNTIME_VERSION   [from ACCELERATOR_TYPE]   tpu-ubuntu2204-base (v2-v4), v2-alpha-tpuv5-lite (v5e),
                                              v2-alpha-tpuv5 (v5p), v2-alpha-tpuv6e (v6e)
  CAPACITY          [on-demand]               on-demand | spot | preemptible
  BUCKET            []                        a GCS bucket in the TPU's region; needed unless WORKDIR is set
  CONFIG            [configs/pretrain.py:base]  configs/pretrain.py alone: the tiny built-in run
  DATA_GCS          []                        gs:// folder that `data` copies to every worker
  DATA_DIR          [bert_jax_data]           where `data` puts it (relative to home)
  INPUT_FILES       []                        passed as --config.data.input_files (paths on the workers,
                                              e.g. bert_jax_data/wiki; relative to ~/$REMOTE_DIR)
  VOCAB_FILE        []                        passed as --config.data.vocab_file
  RUN_NAME          [the CONFIG argument, e.g. base]
  WORKDIR           [gs://$BUCKET/bert_jax/$RUN_NAME]
  GIT_URL, GIT_REF  []  [main]                setup clones GIT_URL at GIT_REF instead of copying this checkout
  REMOTE_DIR        [bert_jax]                where the code goes on each worker (relative to home)
  PYTHON            [python3]                 the Python on the workers
  JAX_TPU           [jax[tpu]]                the JAX requirement installed with requirements.txt
  WORKER            [0]                       the worker `logs` follows
  GCLOUD            [gcloud]
  DRY_RUN           [0]                       1: print the gcloud commands instead of running them

examples:
  CONFIG=configs/pretrain.py BUCKET=my-bucket scripts/tpu_vm_pretrain.sh all     # the built-in smoke run
  ACCELERATOR_TYPE=v4-32 CAPACITY=spot BUCKET=my-bucket DATA_GCS=gs://my-bucket/bert_data \
      INPUT_FILES=~/bert_jax_data/wiki VOCAB_FILE=~/bert_jax_data/vocab.txt scripts/tpu_vm_pretrain.sh all
  BUCKET=my-bucket scripts/tpu_vm_pretrain.sh run -- --config.train.num_steps=100000
  WORKDIR=gs://my-bucket/runs/base-lamb scripts/tpu_vm_pretrain.sh run -- --config.optimizer.name=lamb
EOF
}

TPU_NAME="${TPU_NAME:-bert-jax}"
ZONE="${ZONE:-us-central2-b}"
PROJECT="${PROJECT:-}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-}"
CAPACITY="${CAPACITY:-on-demand}"
BUCKET="${BUCKET:-}"
CONFIG="${CONFIG:-configs/pretrain.py:base}"
DATA_GCS="${DATA_GCS:-}"
DATA_DIR="${DATA_DIR:-bert_jax_data}"
INPUT_FILES="${INPUT_FILES:-}"
VOCAB_FILE="${VOCAB_FILE:-}"
RUN_NAME="${RUN_NAME:-}"
WORKDIR="${WORKDIR:-}"
GIT_URL="${GIT_URL:-}"
GIT_REF="${GIT_REF:-main}"
REMOTE_DIR="${REMOTE_DIR:-bert_jax}"
PYTHON="${PYTHON:-python3}"
JAX_TPU="${JAX_TPU:-jax[tpu]}"
WORKER="${WORKER:-0}"
GCLOUD="${GCLOUD:-gcloud}"
DRY_RUN="${DRY_RUN:-0}"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() {
  echo "tpu_vm_pretrain.sh: $*" >&2
  exit 2
}

# The runtime image that matches the TPU generation (cloud.google.com/tpu/docs/runtimes), unless set.
resolve_runtime_version() {
  if [[ -n "$RUNTIME_VERSION" ]]; then
    return
  fi
  case "$ACCELERATOR_TYPE" in
    v5litepod-* | v5e-*) RUNTIME_VERSION="v2-alpha-tpuv5-lite" ;;
    v5p-*) RUNTIME_VERSION="v2-alpha-tpuv5" ;;
    v6e-*) RUNTIME_VERSION="v2-alpha-tpuv6e" ;;
    v2-* | v3-* | v4-*) RUNTIME_VERSION="tpu-ubuntu2204-base" ;;
    *) die "no default RUNTIME_VERSION for ACCELERATOR_TYPE=$ACCELERATOR_TYPE; set RUNTIME_VERSION" ;;
  esac
}

# Runs gcloud, or prints the command (quoted, ready to paste) when DRY_RUN=1.
gc() {
  if [[ "$DRY_RUN" != "1" ]]; then
    "$GCLOUD" "$@"
    return
  fi
  local arg line="$GCLOUD"
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
      line+=" $arg"
    else
      line+=" '${arg//\'/\'\\\'\'}'"
    fi
  done
  printf '%s\n' "$line"
}

check_settings() {
  # REMOTE_DIR is removed and recreated by `setup`: a plain relative path under home, never home itself.
  if [[ ! "$REMOTE_DIR" =~ ^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)*$ || "$REMOTE_DIR" == *..* ]]; then
    die "REMOTE_DIR='$REMOTE_DIR': use a relative path under the home directory such as bert_jax"
  fi
  if [[ ! "$DATA_DIR" =~ ^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)*$ || "$DATA_DIR" == *..* ]]; then
    die "DATA_DIR='$DATA_DIR': use a relative path under the home directory such as bert_jax_data"
  fi
}

zone_flags() {
  ZONE_FLAGS=(--zone="$ZONE")
  if [[ -n "$PROJECT" ]]; then
    ZONE_FLAGS+=(--project="$PROJECT")
  fi
}

# Runs a shell command on every worker at once.
on_all_workers() {
  gc compute tpus tpu-vm ssh "$TPU_NAME" "${ZONE_FLAGS[@]}" --worker=all --command="$1"
}

resolve_workdir() {
  if [[ -z "$RUN_NAME" ]]; then
    RUN_NAME="${CONFIG##*:}"
    [[ "$RUN_NAME" == "$CONFIG" ]] && RUN_NAME="default"
  fi
  # It names files in the workers' home directories: keep it to a plain name.
  [[ "$RUN_NAME" =~ ^[A-Za-z0-9._-]+$ ]] || die "RUN_NAME='$RUN_NAME': use letters, digits, '.', '_' and '-' only"
  if [[ -z "$WORKDIR" ]]; then
    [[ -n "$BUCKET" ]] || die "set BUCKET (or WORKDIR): every worker must write its checkpoint shards to one shared gs:// directory"
    WORKDIR="gs://${BUCKET#gs://}/bert_jax/$RUN_NAME"
  fi
  LOG_FILE="pretrain-$RUN_NAME.log"
  PID_FILE="pretrain-$RUN_NAME.pid"
}

cmd_create() {
  resolve_runtime_version
  local capacity_flags=()
  case "$CAPACITY" in
    on-demand) ;;
    spot) capacity_flags=(--spot) ;;
    preemptible) capacity_flags=(--preemptible) ;;
    *) die "CAPACITY=$CAPACITY: expected on-demand, spot or preemptible" ;;
  esac
  # ${a[@]+"${a[@]}"}: an empty array under `set -u` in the bash 3.2 that macOS ships.
  gc compute tpus tpu-vm create "$TPU_NAME" "${ZONE_FLAGS[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" ${capacity_flags[@]+"${capacity_flags[@]}"}
}

cmd_setup() {
  local install
  install="cd ~/$REMOTE_DIR && $(printf '%q' "$PYTHON") -m pip install --upgrade pip"
  # One resolver call, so jax[tpu] stays within the versions requirements.txt allows.
  install+=" && $(printf '%q' "$PYTHON") -m pip install -r requirements.txt $(printf '%q' "$JAX_TPU")"
  install+=" && $(printf '%q' "$PYTHON") -c 'import jax; print(jax.process_index(), jax.local_devices())'"
  if [[ -n "$GIT_URL" ]]; then
    on_all_workers "rm -rf ~/$REMOTE_DIR && git clone --depth 1 --branch $(printf '%q' "$GIT_REF") $(printf '%q' "$GIT_URL") ~/$REMOTE_DIR && $install"
    return
  fi
  local staging tarball
  staging="$(mktemp -d)"
  tarball="$staging/bert_jax.tar.gz"
  # This checkout as it is now, uncommitted edits included; ignored files (.venv, runs/) stay behind.
  (cd "$REPO_ROOT" && git ls-files -z --cached --others --exclude-standard | existing_files | tar --null -T - -czf "$tarball")
  gc compute tpus tpu-vm scp "$tarball" "$TPU_NAME:bert_jax.tar.gz" "${ZONE_FLAGS[@]}" --worker=all
  rm -rf "$staging"
  on_all_workers "rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && tar -xzf ~/bert_jax.tar.gz -C ~/$REMOTE_DIR && rm ~/bert_jax.tar.gz && $install"
}

# NUL-separated paths in, those that exist out (git lists tracked files deleted in the work tree too).
existing_files() {
  local path
  while IFS= read -r -d '' path; do
    if [[ -e "$path" ]]; then
      printf '%s\0' "$path"
    fi
  done
}

cmd_data() {
  [[ "$DATA_GCS" == gs://* ]] || die "DATA_GCS='$DATA_GCS': set it to the gs:// folder to copy to the workers"
  # gcloud is preinstalled on TPU VM images and authorised as the TPU's service account.
  on_all_workers "mkdir -p ~/$DATA_DIR && gcloud storage cp --recursive $(printf '%q' "${DATA_GCS%/}/*") ~/$DATA_DIR/ && du -sh ~/$DATA_DIR"
}

# A `--flag=path` word for the remote shell; a leading ~/ becomes the worker's $HOME (Python would not
# expand it, and quoting keeps the worker's shell from doing so).
remote_path_flag() {
  local flag="$1" path="$2"
  if [[ "$path" == \~/* ]]; then
    # shellcheck disable=SC2016  # $HOME is for the worker's shell to expand, not this one
    printf '%q"$HOME"/%q' "$flag=" "${path#\~/}"
  else
    printf '%q' "$flag=$path"
  fi
}

cmd_run() {
  resolve_workdir
  local data_flags="" pretrain
  if [[ -n "$INPUT_FILES" ]]; then
    data_flags+=" --config.data.source=files $(remote_path_flag --config.data.input_files "$INPUT_FILES")"
  fi
  if [[ -n "$VOCAB_FILE" ]]; then
    data_flags+=" $(remote_path_flag --config.data.vocab_file "$VOCAB_FILE")"
  fi
  # Data flags first, so that flags given after '--' override them.
  pretrain="$(printf '%q ' "$PYTHON" -m bert_jax pretrain --config="$CONFIG" --workdir="$WORKDIR")"
  pretrain+="$data_flags"
  if [[ $# -gt 0 ]]; then
    pretrain+=" $(printf '%q ' "$@")"
  fi
  # setsid + nohup: the run outlives the ssh session; its pid is kept for `stop` and `status`.
  on_all_workers "cd ~/$REMOTE_DIR && if [ -f ~/$PID_FILE ] && kill -0 \$(cat ~/$PID_FILE) 2>/dev/null; then echo \"already running (pid \$(cat ~/$PID_FILE))\"; exit 1; fi; TF_CPP_MIN_LOG_LEVEL=2 setsid nohup $pretrain > ~/$LOG_FILE 2>&1 < /dev/null & echo \$! > ~/$PID_FILE; echo \"started pid \$(cat ~/$PID_FILE), log ~/$LOG_FILE\""
  echo "workdir: $WORKDIR   (TensorBoard: tensorboard --logdir $WORKDIR)"
}

cmd_status() {
  resolve_workdir
  on_all_workers "if [ -f ~/$PID_FILE ] && kill -0 \$(cat ~/$PID_FILE) 2>/dev/null; then echo \"\$(hostname): running\"; else echo \"\$(hostname): not running\"; fi; tail -n 3 ~/$LOG_FILE 2>/dev/null || true"
}

cmd_logs() {
  resolve_workdir
  gc compute tpus tpu-vm ssh "$TPU_NAME" "${ZONE_FLAGS[@]}" --worker="$WORKER" --command="tail -n 200 -F ~/$LOG_FILE"
}

cmd_stop() {
  resolve_workdir
  on_all_workers "if [ -f ~/$PID_FILE ] && kill -0 \$(cat ~/$PID_FILE) 2>/dev/null; then kill -TERM \$(cat ~/$PID_FILE) && echo \"\$(hostname): SIGTERM sent, the trainer saves a checkpoint and exits (status 143)\"; else echo \"\$(hostname): not running\"; fi"
}

cmd_delete() {
  gc compute tpus tpu-vm delete "$TPU_NAME" "${ZONE_FLAGS[@]}" --quiet
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
  check_settings
  zone_flags
  case "$command" in
    -h | --help | help) usage ;;
    create) cmd_create ;;
    setup) cmd_setup ;;
    run) cmd_run "$@" ;;
    status) cmd_status ;;
    logs) cmd_logs ;;
    stop) cmd_stop ;;
    data) cmd_data ;;
    delete) cmd_delete ;;
    all)
      resolve_workdir # fail before creating anything if BUCKET/WORKDIR is missing
      cmd_create
      cmd_setup
      if [[ -n "$DATA_GCS" ]]; then
        cmd_data
      fi
      cmd_run "$@"
      ;;
    *)
      usage >&2
      die "unknown command '$command'"
      ;;
  esac
}

main "$@"
