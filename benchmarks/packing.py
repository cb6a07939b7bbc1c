"""Useful (non-padding) tokens per second of a pretraining step: packed rows against padded ones, and against
Hugging Face's BertForPreTraining fed the same padded instances, all measured in the same run.

    python benchmarks/packing.py                                  # BERT-base at 128 (batch 32) and 512 (batch 8)
    python benchmarks/packing.py --size tiny --lengths 128 --rounds 2     # a quick look

The instances are the original generator's (bert_jax's streaming pipeline, SPEC §1: short_seq_prob, document
ends, dupe passes) over ../shared/data/wikipedia with BERT's vocabulary, so their padding is what real
pretraining pads. One step = bert_jax's own jitted train step (bert_jax/trainer.py: gathered MLM + NSP, clipping,
the original AdamW, donated state), float32, with dropout; the packed step takes the same instances in fewer rows
(bert_jax/data/packing.py). Hugging Face: BertForPreTraining with sdpa attention, torch AdamW, the same instances
padded. Each peer runs in its own process and they alternate in rounds (benchmarks/timing.py). Printed: step
time, instances/s, useful tokens/s, and the ratios (goals at BERT-base on the 2-core CPU: packed >= 1.15x
unpacked at 128 and >= 1.8x at 512; >= 1.0x Hugging Face at 128 and >= 1.5x at 512).
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile

import numpy as np

from timing import measure  # benchmarks/timing.py, next to this script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIKIPEDIA = os.path.join(REPO, "..", "shared", "data", "wikipedia")
VOCAB = os.path.join(REPO, "..", "shared", "data", "vocab", "bert-base-uncased-vocab.txt")
MAX_INSTANCES = 4
RECIPE_PREDICTIONS = {128: 20, 512: 80}  # configs/pretrain.py's phases


def make_instances(length: int, max_predictions: int, count: int, files: int, path: str) -> str:
    """`count` instances at `length` from the first `files` Wikipedia files, saved to `path` (.npz)."""
    from bert_jax.data.pipeline import PipelineSpec, PretrainingIterator
    from bert_jax.tokenizer import load_tokenizer

    inputs = sorted(glob.glob(os.path.join(WIKIPEDIA, "wiki_*")))[:files]
    data = PretrainingIterator(PipelineSpec(input_pattern=inputs, mode="streaming", batch_size=count,
                                            max_seq_length=length, max_predictions_per_seq=max_predictions, seed=0,
                                            repeat=True, shuffle=True), tokenizer=load_tokenizer(VOCAB))
    np.savez(path, **next(data))
    return path


def load_batches(path: str, batch: int) -> list[dict]:
    arrays = dict(np.load(path))
    n = len(arrays["input_ids"]) // batch
    return [{k: v[i * batch:(i + 1) * batch] for k, v in arrays.items()} for i in range(n)]


def bert_jax_step(size: str, path: str, batch: int, length: int, max_predictions: int, packed: bool):
    import jax

    from bert_jax import optim, pretrain, sharding, trainer
    from bert_jax.data import packing
    from bert_jax.model import BertConfig

    config = BertConfig.from_size(size, vocab_size=30522)
    objective = pretrain.PretrainingObjective(config)
    tx, schedule = optim.make_optimizer("adamw", learning_rate=1e-4, warmup_steps=10, total_steps=10_000)
    mesh = sharding.make_mesh({"data": -1})
    state, shardings = trainer.create_train_state(objective, tx, mesh, seed=0)
    step = trainer.make_train_step(objective, tx, schedule, mesh, shardings)
    batches = load_batches(path, batch)
    if packed:
        options = dict(row_length=length, max_instances=MAX_INSTANCES,
                       max_predictions=packing.default_max_predictions(max_predictions, MAX_INSTANCES))
        rows = max(packing.rows_needed(b, **options) for b in batches)
        batches = [packing.pack(b, rows=rows, **options) for b in batches]
    batches = [sharding.global_batch(b, mesh) for b in batches]
    holder = {"state": state, "i": 0}

    def run():
        holder["state"], metrics = step(holder["state"], batches[holder["i"] % len(batches)])
        holder["i"] += 1
        jax.block_until_ready(metrics)

    return run


def hugging_face_step(size: str, path: str, batch: int, threads: int):
    import torch
    import transformers

    from bert_jax.convert import config_to_hf
    from bert_jax.model import BertConfig

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = BertConfig.from_size(size, vocab_size=30522)
    hf = transformers.BertForPreTraining._from_config(transformers.BertConfig(**config_to_hf(config)),
                                                      attn_implementation="sdpa").train()
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
    batches = []
    for b in load_batches(path, batch):
        t = {k: torch.tensor(v) for k, v in b.items()}
        labels = torch.full_like(t["input_ids"], -100, dtype=torch.long)  # the masked positions only, as ours
        real = t["masked_lm_weights"] > 0
        for row in range(len(labels)):
            labels[row, t["masked_lm_positions"][row][real[row]].long()] = t["masked_lm_ids"][row][real[row]].long()
        batches.append(dict(input_ids=t["input_ids"].long(), attention_mask=t["input_mask"].long(),
                            token_type_ids=t["segment_ids"].long(), labels=labels,
                            next_sentence_label=t["next_sentence_labels"].long()))
    holder = {"i": 0}

    def run():
        opt.zero_grad(set_to_none=True)
        out = hf(**batches[holder["i"] % len(batches)])
        holder["i"] += 1
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="base")
    parser.add_argument("--lengths", default="128,512")
    parser.add_argument("--batch", default="32,8", help="instances per step, one per length")
    parser.add_argument("--batches", type=int, default=3, help="distinct batches cycled through")
    parser.add_argument("--files", type=int, default=2, help="Wikipedia files the instances come from")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1, help="steps per round")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--no-hf", action="store_true", help="leave out Hugging Face")
    args = parser.parse_args()
    from bert_jax.data import packing

    lengths = [int(x) for x in args.lengths.split(",")]
    sizes = [int(x) for x in args.batch.split(",")][:len(lengths)]

    with tempfile.TemporaryDirectory() as scratch:
        for length, batch in zip(lengths, sizes):
            max_predictions = RECIPE_PREDICTIONS.get(length, round(length * 0.15))
            path = make_instances(length, max_predictions, batch * args.batches, args.files,
                                  os.path.join(scratch, f"instances_{length}.npz"))
            batches = load_batches(path, batch)
            useful = np.mean([b["input_mask"].sum() for b in batches])  # tokens per step, the same for all
            options = dict(row_length=length, max_instances=MAX_INSTANCES,
                           max_predictions=packing.default_max_predictions(max_predictions, MAX_INSTANCES))
            rows = max(packing.rows_needed(b, **options) for b in batches)
            peers = {"unpacked": (bert_jax_step, (args.size, path, batch, length, max_predictions, False)),
                     "packed": (bert_jax_step, (args.size, path, batch, length, max_predictions, True))}
            if not args.no_hf:
                peers["hf"] = (hugging_face_step, (args.size, path, batch, args.threads))
            seconds = measure(peers, args.rounds, args.steps, args.warmup)

            print(f"\n{args.size}, seq {length}, {batch} instances per step ({useful / (batch * length):.0%} of "
                  f"their tokens are not padding; packed into {rows} rows of {length}), float32, "
                  f"{args.rounds} rounds x {args.steps} steps")
            print(f"{'peer':<34}{'step (s)':>10}{'inst/s':>9}{'useful tok/s':>14}")
            names = {"unpacked": "bert_jax, padded rows", "packed": "bert_jax, packed rows",
                     "hf": "Hugging Face BertForPreTraining"}
            for name, t in seconds.items():
                print(f"{names[name]:<34}{t:>10.3f}{batch / t:>9.1f}{useful / t:>14.0f}")
            print(f"packed / unpacked: {seconds['unpacked'] / seconds['packed']:.2f}x"
                  + (f"; packed / Hugging Face: {seconds['hf'] / seconds['packed']:.2f}x" if "hf" in seconds else ""))


if __name__ == "__main__":
    main()
