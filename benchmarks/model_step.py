"""Training-step time of bert_jax's BertForPreTraining against Hugging Face's (PyTorch) on the same machine.

One step = forward + backward + AdamW update, MLM on the gathered masked positions + NSP, same config, same batch,
both in float32 on the CPU (or whatever JAX/PyTorch default device is), measured in the same run:

    python benchmarks/model_step.py                       # small: L4/H512, batch 32, seq 128, 20 masked positions
    python benchmarks/model_step.py --size tiny --rounds 6 --threads 2

Each runs in its own process and the two alternate in rounds of a few steps (benchmarks/timing.py). Prints
the median step time of each and the ratio (goal: bert_jax at least 2x faster).
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import transformers

from bert_jax import model
from bert_jax.convert import config_to_hf
from timing import measure  # benchmarks/timing.py, next to this script


def make_batch(config, batch, length, predictions, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        input_ids=rng.integers(1, config.vocab_size, (batch, length)),
        attention_mask=np.ones((batch, length), np.int64),
        token_type_ids=(np.arange(length)[None] >= length // 2).repeat(batch, 0).astype(np.int64),
        masked_lm_positions=np.sort(rng.permuted(np.tile(np.arange(1, length), (batch, 1)), axis=1)[:, :predictions]),
        masked_lm_ids=rng.integers(1, config.vocab_size, (batch, predictions)),
        masked_lm_weights=np.ones((batch, predictions), np.float32),
        next_sentence_labels=rng.integers(0, 2, (batch,)),
    )


def bert_jax_step(config, batch):
    m = model.BertForPreTraining(config)
    params = model.init_params(m, jax.random.PRNGKey(0))
    tx = optax.adamw(1e-4, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01)
    state = (params, tx.init(params))
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}

    def loss_fn(params, b, rng):
        out = m.apply({"params": params}, b["input_ids"], b["attention_mask"], b["token_type_ids"],
                      b["masked_lm_positions"], deterministic=False, rngs={"dropout": rng})
        logp = jax.nn.log_softmax(out["mlm_logits"])  # [B, P, V]
        nll = -jnp.take_along_axis(logp, b["masked_lm_ids"][..., None], -1)[..., 0]
        w = b["masked_lm_weights"]
        mlm = jnp.sum(nll * w) / (jnp.sum(w) + 1e-5)
        nsp = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out["nsp_logits"]),
                                            b["next_sentence_labels"][:, None], -1))
        return mlm + nsp

    @functools.partial(jax.jit, donate_argnums=0)  # the state is updated in place, as in bert_jax's trainer
    def step(state, b, rng):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, b, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    holder = {"state": state, "i": 0}

    def run():
        holder["i"] += 1
        holder["state"], loss = step(holder["state"], jbatch, jax.random.PRNGKey(holder["i"]))
        loss.block_until_ready()

    return run


def hugging_face_step(config, batch, threads=0):
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining._from_config(transformers.BertConfig(**config_to_hf(config)),
                                                      attn_implementation="sdpa").train()
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
    tb = {k: torch.tensor(v) for k, v in batch.items()}
    # HF computes the MLM head on every position; give it labels only at the masked positions (-100 elsewhere)
    # so its loss equals ours. That full-sequence head is how people train with transformers.
    labels = torch.full_like(tb["input_ids"], -100)
    labels.scatter_(1, tb["masked_lm_positions"], tb["masked_lm_ids"])

    def run():
        opt.zero_grad(set_to_none=True)
        out = hf(input_ids=tb["input_ids"], attention_mask=tb["attention_mask"], token_type_ids=tb["token_type_ids"],
                 labels=labels, next_sentence_label=tb["next_sentence_labels"])
        out.loss.backward()
        opt.step()

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=list(model.SIZES))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--predictions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4, help="the two alternate in rounds")
    parser.add_argument("--steps", type=int, default=3, help="steps per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = model.BertConfig.from_size(args.size)
    batch = make_batch(config, args.batch, args.length, args.predictions)
    seconds = measure({"ours": (bert_jax_step, (config, batch)),
                       "theirs": (hugging_face_step, (config, batch, args.threads))},
                      args.rounds, args.steps, args.warmup)
    ours, theirs = seconds["ours"], seconds["theirs"]

    print(f"BertForPreTraining train step, {args.size} (L{config.num_layers}/H{config.hidden_size}), batch "
          f"{args.batch}, seq {args.length}, {args.predictions} masked positions, float32, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print(f"{'implementation':<28}{'step (ms)':>12}{'seq/s':>10}")
    for name, t in (("bert_jax (Flax, jit)", ours), ("Hugging Face (PyTorch)", theirs)):
        print(f"{name:<28}{t * 1e3:>12.1f}{args.batch / t:>10.1f}")
    print(f"speed-up of bert_jax over Hugging Face: {theirs / ours:.2f}x (goal >= 2x)")


if __name__ == "__main__":
    main()
