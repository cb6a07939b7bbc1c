"""Pretraining throughput: bert_jax's full train step against Hugging Face's BertForPreTraining, same run.

bert_jax: the step `python -m bert_jax pretrain` runs (bert_jax.trainer.make_train_step): MLM on the gathered
masked positions + NSP, global-norm clipping, the original BERT AdamW with its decay mask, sharded state donated
on a 1-device mesh. Peer: transformers.BertForPreTraining (PyTorch, sdpa attention) with torch.optim.AdamW and
clip_grad_norm_(1.0): same config (dropout on), same batch, same masked positions (labels -100 elsewhere).
Both float32 on the CPU, each in its own process, alternating in rounds of a few steps (benchmarks/timing.py).

    python benchmarks/pretrain_step.py                            # tiny, small, base at seq 128
    python benchmarks/pretrain_step.py --sizes tiny --rounds 5 --steps 5

Prints seq/s, tokens/s and MFU (model FLOPs from bert_jax.train_metrics.flops_per_sequence over the device's
peak, estimated for a CPU) of each, and the ratio (goal: bert_jax >= 2x the peer's seq/s).
"""

from __future__ import annotations

import argparse

import jax
import torch
import transformers

from bert_jax import optim, sharding, trainer
from bert_jax.convert import config_to_hf
from bert_jax.data.synthetic import SyntheticPretrainingData
from bert_jax.model import BertConfig
from bert_jax.pretrain import PretrainingObjective
from bert_jax.train_metrics import flops_per_sequence, peak_flops_per_device
from hf_pretraining import hf_pretraining_inputs  # benchmarks/hf_pretraining.py, next to this script
from timing import measure  # benchmarks/timing.py, next to this script

DEFAULT_BATCH = {"tiny": 32, "mini": 32, "small": 16, "medium": 8, "base": 8, "large": 4}


def jax_step(config: BertConfig, batch: dict):
    objective = PretrainingObjective(config)
    tx, schedule = optim.make_optimizer("adamw", learning_rate=1e-4, warmup_steps=10, total_steps=1000)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    state, shardings = trainer.create_train_state(objective, tx, mesh, seed=0)
    step = trainer.make_train_step(objective, tx, schedule, mesh, shardings)
    global_batch = sharding.global_batch(batch, mesh, len(batch["input_ids"]))
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], global_batch)
        jax.block_until_ready(metrics["loss"])

    return run


def torch_step(config: BertConfig, batch: dict, threads: int = 0):
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = transformers.BertForPreTraining._from_config(transformers.BertConfig(**config_to_hf(config)),
                                                         attn_implementation="sdpa").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
    inputs = hf_pretraining_inputs(batch)

    def run():
        opt.zero_grad(set_to_none=True)
        out = model(**inputs)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,small,base")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--predictions", type=int, default=20)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="steps per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = jax.devices()[0]
    peak = peak_flops_per_device(device)
    print(f"train step, seq {args.length}, {args.predictions} masked positions, vocab {args.vocab}, float32; "
          f"jax {jax.__version__} on {device.device_kind}, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads); peak {peak / 1e9:.0f} GFLOP/s per device"
          + (" (CPU estimate)" if device.platform == "cpu" else ""))
    header = (f"{'size':<7}{'batch':>6}{'GFLOP/seq':>10} | {'bert_jax ms':>11}{'seq/s':>8}{'tok/s':>8}{'MFU':>7} | "
              f"{'HF ms':>9}{'seq/s':>8}{'MFU':>7} | {'ratio':>6}")
    print(header)
    print("-" * len(header))
    for size in args.sizes.split(","):
        batch_size = DEFAULT_BATCH[size]
        config = BertConfig.from_size(size, vocab_size=args.vocab)
        batch = next(SyntheticPretrainingData(batch_size, args.length, args.predictions, args.vocab, seed=0))
        seconds = measure({"jax": (jax_step, (config, batch)), "torch": (torch_step, (config, batch, args.threads))},
                          args.rounds, args.steps, args.warmup)
        flops = flops_per_sequence(config, args.length, args.predictions)
        jax_seq, torch_seq = batch_size / seconds["jax"], batch_size / seconds["torch"]
        print(f"{size:<7}{batch_size:>6}{flops / 1e9:>10.2f} | {seconds['jax'] * 1e3:>11.1f}{jax_seq:>8.1f}"
              f"{jax_seq * args.length:>8.0f}{100 * jax_seq * flops / peak:>6.1f}% | {seconds['torch'] * 1e3:>9.1f}"
              f"{torch_seq:>8.1f}{100 * torch_seq * flops / peak:>6.1f}% | {jax_seq / torch_seq:>5.2f}x", flush=True)
    print("ratio = bert_jax seq/s / Hugging Face seq/s (goal >= 2x); MFU counts model FLOPs only (3x forward "
          "matmuls, MLM head on the masked positions), both against the same peak.")


if __name__ == "__main__":
    main()
