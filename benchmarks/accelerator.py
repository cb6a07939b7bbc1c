"""bert_jax on one accelerator, measured against Hugging Face in the same run (issue 12).

One table of training and inference steps, one of attention paths, then the ratios bert_jax / HF:

    pretrain/base128   BERT-base, seq 128, 20 masked positions: the step `python -m bert_jax pretrain` runs
                       (bert_jax.trainer.make_train_step: MLM on the gathered positions + NSP, global-norm clipping
                       at 1.0, the original AdamW of bert_jax.optim.make_optimizer, state donated) in bf16 compute
                       with float32 parameters and Adam moments, dropout 0.1 as the default config has it (which
                       makes attention_impl='auto' take the explicit softmax path: the fused ones have no dropout)
    pretrain/large512  BERT-large, seq 512, 80 masked positions, the same step
    (impl hf)          transformers.BertForPreTraining on the same config and batch: sdpa attention, bf16 autocast,
                       torch.optim.AdamW(fused=True), clip_grad_norm_(1.0); on a CPU float32 and unfused AdamW
    finetune/base128   BERT-base sequence classification (bert_jax.heads.FinetuneObjective, 2 labels), same trainer
    embed/base128      bert_jax.inference.embed end to end (Python WordPiece + the jitted encoder), texts/s
    attention/large512 bert_jax.model.SelfAttention forward + backward at BERT-large width for each
                       `attention_impl` (explicit, xla, cudnn) in bf16, and the bf16 forward's error against the
                       float32 explicit path (computed at 'highest' matmul precision)

Columns: seq/s; MFU = seq/s x train_metrics.flops_per_sequence / train_metrics.peak_flops_per_device (the chip's
dense bf16 peak; HF is counted with the same model FLOPs although its MLM head runs on every position, so MFU is
useful work and the MFU ratio equals the seq/s ratio; embed counts the forward third); peak device memory (JAX:
memory_stats()['peak_bytes_in_use'], HF: torch.cuda.max_memory_allocated; n/a on a CPU); compile = the first call
minus one steady step (for HF, its warm-up); max batch = the largest batch x 2^k that ran, searched from a first
guess of what the timed step's memory allows, doubling (halving after an out-of-memory error); `search`
says why it stopped (oom@N, the cap of --search-doublings, or the --search-seconds budget). Timed steps run after
warm-up and end with a block_until_ready (torch.cuda.synchronize). Each (implementation, row) runs in a process of
its own, so peaks and out-of-memory errors do not carry over (--smoke: one process per implementation). Imports
only jax, flax, optax, orbax, numpy, torch, transformers, ml_collections and TensorFlow-free bert_jax modules.

    PYTHONPATH=. python benchmarks/accelerator.py --smoke             # CPU, tiny sizes, < 1 min (tests run it)
    PYTHONPATH=. python benchmarks/accelerator.py                     # one GPU, about 6 of the 8 minutes
    PYTHONPATH=. python benchmarks/accelerator.py --only base128,attention --steps 10 --json out.json
    PYTHONPATH=. python benchmarks/accelerator.py --only large512-remat,large512-nodrop   # optional rows

On the lent GPU machine (jax 0.11 with its CUDA plugin, flax, optax, orbax, torch, transformers; ml_collections is
missing and travels as a wheel), prepare here once, in the repo root:

    echo /.whl/ >> .git/info/exclude && pip download ml_collections==1.1.0 --no-deps -d .whl

then call the device tool's run with carry [".whl"] and timeout_s 560:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 && nvidia-smi -L &&
    python3 benchmarks/accelerator.py --json $OUT/accelerator.json 2>&1 | tee $OUT/accelerator.log

Expect the header to name jax 0.11.x, backend gpu and 'NVIDIA H200' (peak 989 TFLOP/s), then every row with
figures; the run stops starting rows after --budget-seconds (450). Goals (issue 12): pretrain/base128 MFU >= 50%,
pretrain/large512 >= 45%, bert_jax/hf seq/s >= 1.3x. attention/cudnn is expected to fail with the [B, S] padding
mask that unpacked batches carry (JAX's cuDNN path takes a mask only as a [B, 1, T, S] bias): the row says so and
times the mask broadcast to [B, T, S] instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bert_jax import optim, sharding, trainer
from bert_jax.convert import config_to_hf
from bert_jax.data.synthetic import SyntheticPretrainingData
from bert_jax.heads import FinetuneObjective
from bert_jax.inference import embed
from bert_jax.model import BertConfig, BertModel, SelfAttention, init_params
from bert_jax.pretrain import PretrainingObjective
from bert_jax.pretrained import Pretrained
from bert_jax.tokenizer import WordPieceTokenizer
from bert_jax.train_metrics import flops_per_sequence, peak_flops_per_device
from hf_pretraining import hf_pretraining_inputs  # benchmarks/hf_pretraining.py, next to this script

# ----------------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str  # the row's name in the table
    kind: str  # pretrain | finetune | embed | attention
    size: str  # bert_jax.model.SIZES
    seq_length: int
    batch: int
    predictions: int = 0  # masked positions per sequence (pretraining)
    remat: str = "none"
    attention_dropout: float = 0.1
    peers: tuple = ("bert_jax",)  # implementations measured, in order
    search: bool = True  # look for the largest batch (pretraining rows)


ROWS = {
    "base128": Workload("pretrain/base128", "pretrain", "base", 128, 256, 20, peers=("bert_jax", "hf")),
    "large512": Workload("pretrain/large512", "pretrain", "large", 512, 32, 80, peers=("bert_jax", "hf")),
    # Optional: with remat (saving the projections, recomputing attention); without attention dropout, so that
    # attention_impl='auto' takes jax.nn.dot_product_attention instead of the explicit softmax.
    "large512-remat": Workload("pretrain/large512-remat", "pretrain", "large", 512, 64, 80, remat="dots_no_batch"),
    "large512-nodrop": Workload("pretrain/large512-nodrop", "pretrain", "large", 512, 32, 80, attention_dropout=0.0),
    "attention": Workload("attention/large512", "attention", "large", 512, 32),
    "finetune": Workload("finetune/base128", "finetune", "base", 128, 64),
    "embed": Workload("embed/base128", "embed", "base", 128, 256),
}
DEFAULT_ROWS = ("base128", "large512", "attention", "finetune", "embed")
# --smoke: every row at sizes a 2-core CPU runs in seconds (the "large" rows: tiny at seq 64, and as each bert_jax
# search candidate compiles anew, only base128 searches).
SMOKE_SMALL, SMOKE_LONG = dict(size="tiny", seq_length=32, batch=8), dict(size="tiny", seq_length=64, batch=4)
SMOKE_SIZES = {"base128": dict(SMOKE_SMALL, predictions=5), "finetune": SMOKE_SMALL, "embed": SMOKE_SMALL,
               "attention": SMOKE_LONG,
               **{k: dict(SMOKE_LONG, predictions=10, search=False) for k in ROWS if k.startswith("large")}}


def workloads(keys, smoke: bool) -> list:
    unknown = [k for k in keys if k not in ROWS]
    if unknown:
        raise SystemExit(f"--only: unknown rows {unknown}; known: {', '.join(ROWS)}")
    return [dataclasses.replace(ROWS[k], **SMOKE_SIZES[k]) if smoke else ROWS[k] for k in keys]


# ----------------------------------------------------------------------------------------------------
# Timing, the largest-batch search, memory
# ----------------------------------------------------------------------------------------------------


def time_steps(run, sync, steps: int, warmup: int) -> tuple:
    """(seconds of the first call, steady seconds per step); `run()` starts one step, `sync()` waits for it."""
    start = time.perf_counter()
    run()
    sync()
    first = time.perf_counter() - start
    for _ in range(warmup):
        run()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        run()
    sync()
    return first, (time.perf_counter() - start) / steps


def is_out_of_memory(error: BaseException) -> bool:
    text = f"{type(error).__name__}: {error}"
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower() or "OutOfMemory" in text


def largest_batch(try_batch, timed_batch: int, doublings: int, budget_s: float, first_factor: int = 2) -> tuple:
    """(largest batch that ran, why the search stopped), over timed_batch x 2^k for k <= `doublings`.

    The first candidate is timed_batch x `first_factor` (what the timed step's memory says should fit, see
    fit_factor), then the search doubles while `try_batch(b)` runs and halves after an out-of-memory error, down to
    the largest batch that ran.
    """
    cap = timed_batch * 2 ** doublings
    largest, failed, candidate = timed_batch, None, timed_batch * max(2, first_factor)
    start, last_cost = time.perf_counter(), 0.0
    while True:
        if candidate <= largest or (failed is not None and candidate >= failed):
            return largest, f"oom@{failed}"
        if candidate > cap:
            return largest, f"cap {cap}" if doublings else "off"
        if time.perf_counter() - start + 2 * last_cost > budget_s:  # each bert_jax candidate compiles anew
            return largest, f"time {budget_s:.0f}s"
        began = time.perf_counter()
        try:
            try_batch(candidate)
        except Exception as e:  # noqa: BLE001 - only out-of-memory ends the search quietly
            if not is_out_of_memory(e):
                raise
            failed, candidate = candidate, candidate // 2
            continue
        last_cost, largest, candidate = time.perf_counter() - began, candidate, 2 * candidate


def fit_factor(peak_bytes, limit_bytes, doublings: int) -> int:
    """The power of two (2 .. 2^doublings) by which the batch may grow for its peak memory to stay within 80% of
    the limit, were the whole peak activations (it is not, so this errs low); 2 when either is unknown."""
    factor = 2
    while peak_bytes and limit_bytes and factor < 2 ** doublings and 2 * factor * peak_bytes <= 0.8 * limit_bytes:
        factor *= 2
    return factor


def tiled(batch: dict, rows: int) -> dict:
    """`batch` repeated along its first axis to `rows` rows (for the search: same content, no new data)."""
    return {k: np.resize(v, (rows, *v.shape[1:])) for k, v in batch.items()}


def gib(nbytes):
    return nbytes / 2 ** 30 if nbytes else None


def jax_memory() -> tuple:
    """(peak bytes in use, bytes the allocator may use) of the first device; None where JAX does not say (CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use"), stats.get("bytes_limit")


def log(message: str) -> None:
    print(f"[accelerator] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------
# bert_jax
# ----------------------------------------------------------------------------------------------------


def bert_config(size: str, vocab_size: int, dtype: str = "bfloat16", *, attention_dropout: float = 0.1,
                hidden_dropout: float = 0.1, remat: str = "none", scan_layers: bool = False,
                attention_impl: str = "auto") -> BertConfig:
    return BertConfig.from_size(size, vocab_size=vocab_size, dtype=dtype, hidden_dropout_rate=hidden_dropout,
                                attention_dropout_rate=attention_dropout, remat_policy=remat,
                                scan_layers=scan_layers, attention_impl=attention_impl)


def pretraining_batch(batch: int, seq_length: int, predictions: int, vocab_size: int, seed: int = 0) -> dict:
    """The 7 pretraining features (numpy) from bert_jax's synthetic source, as `data.source='synthetic'` has them."""
    return SyntheticPretrainingData(batch, seq_length, predictions, vocab_size, seed=seed).global_batch(0)


def classification_batch(batch: int, seq_length: int, vocab_size: int, seed: int = 0) -> dict:
    """Random sentence pairs with 2 labels, padded at the end like featurized GLUE rows."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(seq_length // 2, seq_length + 1, size=batch)
    positions = np.arange(seq_length)[None, :]
    mask = (positions < lengths[:, None]).astype(np.int32)
    ids = rng.integers(5, vocab_size, size=(batch, seq_length)).astype(np.int32) * mask
    ids[:, 0] = 2  # [CLS]
    types = ((positions >= lengths[:, None] // 2) & (mask > 0)).astype(np.int32)
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types,
                labels=rng.integers(0, 2, size=batch).astype(np.int32))


def jax_train_step(objective, batch: dict, learning_rate: float = 1e-4, seed: int = 0) -> tuple:
    """(step, new_state, device batch): bert_jax's trainer step for `objective` on a 1-device mesh with the original
    AdamW (clipping, decay mask, schedule) as optim.make_optimizer builds it. `step(state, batch)` donates the state;
    `new_state()` creates a fresh one (the same every time)."""
    tx, schedule = optim.make_optimizer("adamw", learning_rate=learning_rate, warmup_steps=10, total_steps=1000)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    step = trainer.make_train_step(objective, tx, schedule, mesh, trainer.state_shardings(objective, tx, mesh))

    def new_state():
        return trainer.create_train_state(objective, tx, mesh, seed=seed)[0]

    return step, new_state, sharding.global_batch(batch, mesh, len(batch["input_ids"]))


def measure_jax_training(work: Workload, settings: dict) -> dict:
    config = bert_config(work.size, settings["vocab_size"], settings["dtype"], remat=work.remat,
                         attention_dropout=work.attention_dropout, scan_layers=settings["scan_layers"])
    if work.kind == "pretrain":
        objective = PretrainingObjective(config)
        batch = pretraining_batch(work.batch, work.seq_length, work.predictions, config.vocab_size)
    else:
        objective = FinetuneObjective("classification", config, num_labels=2)
        batch = classification_batch(work.batch, work.seq_length, config.vocab_size)
    step, new_state, device_batch = jax_train_step(objective, batch)
    holder = {"state": new_state(), "metrics": None}

    def run(batch=device_batch):
        holder["state"], holder["metrics"] = step(holder["state"], batch)

    first, per_step = time_steps(run, lambda: jax.block_until_ready(holder), settings["steps"], settings["warmup"])
    peak, limit = jax_memory()
    row = dict(seq_per_s=work.batch / per_step, step_ms=1e3 * per_step, compile_s=max(first - per_step, 0.0),
               peak_gib=gib(peak), flops_per_seq=flops_per_sequence(config, work.seq_length, work.predictions))
    if work.kind != "pretrain":
        return row
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])

    def try_batch(rows):
        if any(x.is_deleted() for x in jax.tree.leaves(holder["state"])):  # donated to a step that failed
            holder["state"] = new_state()
        run(sharding.global_batch(tiled(batch, rows), mesh, rows))
        jax.block_until_ready(holder)

    doublings = settings["search_doublings"] if work.search else 0
    row["max_batch"], row["search"] = largest_batch(try_batch, work.batch, doublings, settings["search_seconds"],
                                                    fit_factor(peak, limit, doublings))
    return row


def embed_tokenizer(directory: str, words: int = 2000) -> WordPieceTokenizer:
    """A WordPiece vocabulary of [PAD] [UNK] [CLS] [SEP] [MASK] and `words` whole words w0, w1, ..."""
    path = os.path.join(directory, "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(words)]) + "\n")
    return WordPieceTokenizer(path)


def measure_embed(work: Workload, settings: dict) -> dict:
    """inference.embed's texts/s at one length bucket (texts of seq_length - 2 words fill it exactly)."""
    config = bert_config(work.size, settings["vocab_size"], settings["dtype"])
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = embed_tokenizer(scratch, min(2000, config.vocab_size - 5))
    rng = np.random.default_rng(0)
    words = len(tokenizer.inv_vocab) - 5
    texts = [" ".join(f"w{i}" for i in rng.integers(0, words, size=work.seq_length - 2))
             for _ in range(4 * work.batch)]
    params = {"bert": jax.device_get(init_params(BertModel(config), jax.random.PRNGKey(0)))}
    model = Pretrained(config, params, tokenizer)
    start = time.perf_counter()
    embed(model, texts[:work.batch], batch_size=work.batch)  # compiles the one (rows, bucket) shape
    first = time.perf_counter() - start
    start = time.perf_counter()
    vectors = embed(model, texts, batch_size=work.batch)
    seconds = time.perf_counter() - start
    assert vectors.shape == (len(texts), config.hidden_size) and np.isfinite(vectors).all()
    start = time.perf_counter()
    for text in texts:
        tokenizer.encode(text)
    tokenize, per_batch = time.perf_counter() - start, seconds / 4
    return dict(seq_per_s=len(texts) / seconds, step_ms=1e3 * per_batch, compile_s=max(first - per_batch, 0.0),
                peak_gib=gib(jax_memory()[0]), flops_per_seq=flops_per_sequence(config, work.seq_length, 0) / 3,
                note=f"tokenizing is {100 * tokenize / seconds:.0f}% of the time")


ATTENTION_IMPLS = ("explicit", "xla", "cudnn")


def attention_rows(work: Workload, impls=ATTENTION_IMPLS, steps: int = 0, warmup: int = 1, seed: int = 0) -> list:
    """Per attention_impl: bf16 SelfAttention's forward against the float32 explicit path (padding at the end of each
    row) and, with steps > 0, the ms of one jitted forward + backward. Rows: {impl, dtype, max_abs_err, rel_err, note,
    ms, compile_s}, {impl, dtype, skipped} where the backend has no such path, or {impl, dtype, error}."""
    base = bert_config(work.size, 128, "float32", attention_dropout=0.0, hidden_dropout=0.0,
                       attention_impl="explicit")
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    x = jax.random.normal(keys[0], (work.batch, work.seq_length, base.hidden_size), jnp.float32)
    lengths = jax.random.randint(keys[1], (work.batch,), work.seq_length // 2, work.seq_length + 1)
    mask = (jnp.arange(work.seq_length)[None] < lengths[:, None]).astype(jnp.int32)  # [B, S]
    cotangent = jax.random.normal(keys[2], x.shape, jnp.float32)
    params = nn.meta.unbox(SelfAttention(base).init(keys[3], x, mask, True)["params"])

    def forward(config):
        return jax.jit(lambda p, x, m: SelfAttention(config).apply({"params": p}, x, m, True))

    with jax.default_matmul_precision("highest"):  # the reference also where float32 matmuls default to TF32
        reference = np.asarray(forward(base)(params, x, mask), np.float64)
    rows = []
    for impl, dtype in [("explicit", "float32")] + [(impl, "bfloat16") for impl in impls]:
        if impl == "cudnn" and jax.default_backend() != "gpu":
            rows.append(dict(impl=impl, dtype=dtype, skipped=f"backend is {jax.default_backend()}: the cuDNN fused "
                                                               "kernel needs a CUDA GPU"))
            continue
        config, row_mask, note = base.replace(dtype=dtype, attention_impl=impl), mask, ""
        try:
            try:
                out = forward(config)(params, x, row_mask)
            except ValueError as e:
                if impl != "cudnn":
                    raise
                # JAX's cuDNN path takes a mask only as a [B, 1, T, S] bias: say so, and time the dense mask.
                row_mask = jnp.broadcast_to(mask[:, None, :] > 0, (work.batch, work.seq_length, work.seq_length))
                note = f"[B, S] mask fails ({str(e).splitlines()[0][:70]}); timed with [B, T, S]"
                out = forward(config)(params, x, row_mask)
            out = np.asarray(out.astype(jnp.float32), np.float64)
            row = dict(impl=impl, dtype=dtype, max_abs_err=float(np.abs(out - reference).max()),
                       rel_err=float(np.linalg.norm(out - reference) / np.linalg.norm(reference)), note=note)
            if steps:
                module = SelfAttention(config)
                grad = jax.jit(jax.grad(lambda p, x, m: jnp.vdot(
                    module.apply({"params": p}, x, m, True).astype(jnp.float32), cotangent), argnums=(0, 1)))
                holder = {}
                first, seconds = time_steps(lambda: holder.update(g=grad(params, x, row_mask)),
                                            lambda: jax.block_until_ready(holder), steps, warmup)
                row.update(ms=1e3 * seconds, compile_s=max(first - seconds, 0.0))
        except Exception as e:  # noqa: BLE001 - one path failing must not hide the others
            row = dict(impl=impl, dtype=dtype, error=f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------
# Hugging Face (PyTorch)
# ----------------------------------------------------------------------------------------------------


def hf_model(config: BertConfig, state_dict=None, device=None):
    """transformers.BertForPreTraining with `config`, sdpa attention, optionally loaded with a state dict of numpy
    arrays (convert.hf_state_dict_from_params(..., tied=True))."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.BertForPreTraining._from_config(transformers.BertConfig(**config_to_hf(config)),
                                                         attn_implementation="sdpa")
    if state_dict is not None:
        model.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in state_dict.items()}, strict=True)
    return model.to(device or "cpu")


def measure_hf_pretraining(work: Workload, settings: dict) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    config = bert_config(work.size, settings["vocab_size"], attention_dropout=work.attention_dropout)
    model = hf_model(config, device=device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                            fused=cuda)
    batch = pretraining_batch(work.batch, work.seq_length, work.predictions, config.vocab_size)

    def run(inputs=hf_pretraining_inputs(batch, device)):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):  # float32 on a CPU
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    first, per_step = time_steps(run, sync, settings["steps"], settings["warmup"])
    peak = torch.cuda.max_memory_allocated() if cuda else None
    row = dict(seq_per_s=work.batch / per_step, step_ms=1e3 * per_step, compile_s=max(first - per_step, 0.0),
               peak_gib=gib(peak), flops_per_seq=flops_per_sequence(config, work.seq_length, work.predictions),
               note="bf16 autocast, fused AdamW" if cuda else "float32, AdamW (CPU)")

    def try_batch(rows):
        opt.zero_grad(set_to_none=True)  # what a failed candidate left: its gradients, cached blocks
        if cuda:
            torch.cuda.empty_cache()
        run(hf_pretraining_inputs(tiled(batch, rows), device))
        sync()

    doublings = settings["search_doublings"] if work.search else 0
    limit = torch.cuda.mem_get_info()[1] if cuda else None
    row["max_batch"], row["search"] = largest_batch(try_batch, work.batch, doublings, settings["search_seconds"],
                                                    fit_factor(peak, limit, doublings))
    return row


# ----------------------------------------------------------------------------------------------------
# Processes: one per (implementation, rows), so that device memory starts empty
# ----------------------------------------------------------------------------------------------------


def environment(peer: str) -> dict:
    if peer == "hf":
        import torch
        import transformers

        return dict(torch=torch.__version__, transformers=transformers.__version__,
                    torch_device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    device = jax.devices()[0]
    return dict(jax=jax.__version__, backend=jax.default_backend(), device_kind=device.device_kind,
                device_count=jax.device_count(), peak_flops=peak_flops_per_device(device),
                mem_fraction=os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "default"))


def run_worker(spec: dict) -> dict:
    peer, settings = spec["peer"], spec["settings"]
    result = dict(env=environment(peer), rows=[])
    for work in (Workload(**{**w, "peers": tuple(w["peers"])}) for w in spec["workloads"]):
        began = time.perf_counter()
        log(f"{work.name} ({peer}): {work.size}, seq {work.seq_length}, batch {work.batch}")
        base = dict(row=work.name, impl=peer, model=work.size, seq=work.seq_length, batch=work.batch)
        try:
            if work.kind == "attention":
                rows = attention_rows(work, steps=settings["steps"], warmup=settings["warmup"])
            else:
                measure = {"pretrain": measure_hf_pretraining if peer == "hf" else measure_jax_training,
                           "finetune": measure_jax_training, "embed": measure_embed}[work.kind]
                rows = [measure(work, settings)]
            result["rows"] += [{**base, **row} for row in rows]
        except Exception as e:  # noqa: BLE001 - one failed row must not hide the others
            result["rows"].append({**base, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
            log(f"{work.name} ({peer}) failed: {e!r}"[:2000])
        log(f"{work.name} ({peer}) took {time.perf_counter() - began:.1f}s")
    return result


def run_in_process(peer: str, works: list, settings: dict, timeout: float) -> dict:
    """A worker's result from a fresh interpreter (its own device memory and allocator)."""
    with tempfile.TemporaryDirectory() as scratch:
        spec_path, out_path = os.path.join(scratch, "spec.json"), os.path.join(scratch, "result.json")
        with open(spec_path, "w") as f:
            json.dump(dict(peer=peer, settings=settings, workloads=[dataclasses.asdict(w) for w in works],
                           out=out_path), f)
        env = dict(os.environ)
        if peer == "bert_jax":  # JAX preallocates 75% of a GPU by default; HF may use all of it, so JAX gets most
            env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", str(settings["jax_mem_fraction"]))
        else:  # nothing in an HF process runs JAX: keep it off the GPU (and its preallocation) for sure
            env["JAX_PLATFORMS"] = "cpu"
        try:  # the worker's stdout goes to our stderr: our stdout is the table alone
            done = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", spec_path], env=env,
                                  stdout=sys.stderr.fileno(), timeout=timeout)
            failure = f"worker exited with status {done.returncode}" if done.returncode else None
        except subprocess.TimeoutExpired:
            failure = f"worker timed out after {timeout:.0f}s"
        if failure is None and os.path.exists(out_path):
            with open(out_path) as f:
                return json.load(f)
    return failed_rows(peer, works, failure or "no result")


def failed_rows(peer: str, works: list, why: str) -> dict:
    return dict(env={}, rows=[dict(row=w.name, impl=peer, model=w.size, seq=w.seq_length, batch=w.batch, error=why)
                              for w in works])


# ----------------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------------

STEP_COLUMNS = ("row", "impl", "model", "seq", "batch", "seq/s", "MFU %", "peak GiB", "compile s", "step ms",
                "max batch", "search", "note")
ATTENTION_COLUMNS = ("row", "impl", "dtype", "ms fwd+bwd", "compile s", "max abs err", "rel err", "note")


def cell(value, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if value == 0 or abs(value) >= 10 ** -digits else f"{value:.2e}"
    return str(value)


def format_table(columns, rows) -> list:
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(), "-+-".join("-" * w for w in widths)]
    return lines + [" | ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]


def report(results: list, settings: dict, elapsed: float) -> tuple:
    """(the lines to print, whether any row failed)."""
    env = {k: v for r in results for k, v in r["env"].items()}
    rows = [row for r in results for row in r["rows"]]
    peak = env.get("peak_flops") or 0.0
    lines = [f"bert_jax accelerator benchmark{' (--smoke: tiny sizes, figures mean nothing)' * settings['smoke']}",
             f"jax {env.get('jax', '?')} | backend {env.get('backend', '?')} | device {env.get('device_kind', '?')} "
             f"x{env.get('device_count', '?')} | peak {peak / 1e12:.1f} TFLOP/s per device "
             f"{'(CPU estimate)' if env.get('backend') == 'cpu' else '(dense bf16)'} | compute {settings['dtype']} "
             f"| JAX memory fraction {env.get('mem_fraction', '?')}",
             f"torch {env.get('torch', '?')} on {env.get('torch_device', '?')} | transformers "
             f"{env.get('transformers', '?')} | vocab {settings['vocab_size']} | {settings['steps']} timed steps "
             f"after {settings['warmup']} warm-up | total {elapsed:.0f}s", ""]
    steps, attention = [], []
    for row in rows:
        head = [row["row"], row["impl"]]
        if row["row"].startswith("attention/") and "dtype" in row:
            if "skipped" in row or "error" in row:
                why = f"skipped: {row['skipped']}" if "skipped" in row else f"error: {row['error']}"
                attention.append(head + [row["dtype"]] + ["-"] * 4 + [why])
            else:
                attention.append(head + [row["dtype"], cell(row.get("ms"), 3), cell(row.get("compile_s")),
                                         cell(row["max_abs_err"], 4), cell(row["rel_err"], 4), row["note"]])
            continue
        head += [row["model"], str(row["seq"]), str(row["batch"])]
        if "error" in row:
            steps.append(head + ["-"] * 7 + [f"error: {row['error']}"])
            continue
        mfu = 100 * row["seq_per_s"] * row["flops_per_seq"] / peak if peak else None
        steps.append(head + [cell(row["seq_per_s"]), cell(mfu, 2), cell(row["peak_gib"], 2), cell(row["compile_s"]),
                             cell(row["step_ms"], 2), cell(row.get("max_batch", "-")), row.get("search", "-"),
                             row.get("note", "")])
    lines += format_table(STEP_COLUMNS, steps)
    if attention:
        lines += ["", *format_table(ATTENTION_COLUMNS, attention)]
    by_key = {(r["row"], r["impl"]): r for r in rows if "seq_per_s" in r}
    ratios = [f"ratio {name} seq/s bert_jax/hf = {by_key[(name, 'bert_jax')]['seq_per_s'] / r['seq_per_s']:.2f}x"
              for (name, impl), r in by_key.items() if impl == "hf" and (name, "bert_jax") in by_key]
    lines += ["", *ratios] if ratios else []
    return lines, any("error" in row for row in rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and a few steps, for a CPU (< 1 minute)")
    parser.add_argument("--only", default="", help=f"comma-separated rows (default: {', '.join(DEFAULT_ROWS)}; "
                                                   f"all: {', '.join(ROWS)})")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per row (default 20; --smoke 2)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps after the compiling one (default 3; "
                                                              "--smoke 1)")
    parser.add_argument("--no-hf", action="store_true", help="skip the Hugging Face rows")
    parser.add_argument("--no-search", action="store_true", help="skip the largest-batch search")
    parser.add_argument("--search-doublings", type=int, default=5, help="search up to batch x 2^N (--smoke: 1)")
    parser.add_argument("--search-seconds", type=float, default=45.0,
                        help="time budget of one row's search (each bert_jax candidate compiles anew)")
    parser.add_argument("--vocab-size", type=int, default=0, help="default 30522 (--smoke 512)")
    parser.add_argument("--dtype", default="bfloat16", help="bert_jax compute dtype (parameters stay float32)")
    parser.add_argument("--scan-layers", action="store_true", help="bert_jax layers under nn.scan (faster compile)")
    parser.add_argument("--jax-mem-fraction", type=float, default=0.92,
                        help="XLA_PYTHON_CLIENT_MEM_FRACTION of the bert_jax processes, unless it is set")
    parser.add_argument("--budget-seconds", type=float, default=0,
                        help="start no process after this many seconds (default 450; --smoke 300)")
    parser.add_argument("--json", default="", help="also write every figure to this JSON file")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)  # internal: one process's rows
    args = parser.parse_args(argv)
    if args.worker:
        with open(args.worker) as f:
            spec = json.load(f)
        result = run_worker(spec)
        with open(spec["out"], "w") as f:
            json.dump(result, f)
        return 0

    smoke = args.smoke
    settings = dict(smoke=smoke, steps=args.steps or (2 if smoke else 20), warmup=args.warmup or (1 if smoke else 3),
                    vocab_size=args.vocab_size or (512 if smoke else 30522), dtype=args.dtype,
                    search_doublings=0 if args.no_search else (1 if smoke else args.search_doublings),
                    search_seconds=args.search_seconds, scan_layers=args.scan_layers,
                    jax_mem_fraction=args.jax_mem_fraction)
    budget = args.budget_seconds or (300 if smoke else 450)
    plan = []  # (implementation, its rows) per process; --smoke: one process per implementation
    for work in workloads([k for k in args.only.split(",") if k] or list(DEFAULT_ROWS), smoke):
        for peer in work.peers:
            if peer == "hf" and args.no_hf:
                continue
            same = [group for p, group in plan if p == peer]
            if smoke and same:
                same[0].append(work)
            else:
                plan.append((peer, [work]))
    start, results = time.perf_counter(), []
    for peer, group in plan:
        left = budget - (time.perf_counter() - start)
        results.append(run_in_process(peer, group, settings, timeout=max(left, 60.0)) if left > 0 else
                       failed_rows(peer, group, f"not started: past --budget-seconds {budget:.0f}"))
    lines, failed = report(results, settings, time.perf_counter() - start)
    print("\n".join(lines), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(settings=settings, results=results), f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
