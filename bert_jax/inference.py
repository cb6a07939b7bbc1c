"""Inference with a bert_jax model directory: fill-mask and text embeddings, on whatever backend JAX has.

    fill_mask(pretrained, ["Paris is the [MASK] of France."], top_k=5)
        -> per text, like Hugging Face's fill-mask pipeline: a list of {score, token, token_str, sequence}
           (a list of such lists, one per [MASK], when the text has several)
    embed(pretrained, texts, pooling="mean") -> float32 [N, H]

Shapes are padded to a few bucket lengths (and full batches) so jit compiles once per bucket, not per batch.
Texts are sorted by length before batching (less padding) and the results put back in input order.
"""

from __future__ import annotations

import functools
import logging
from typing import Sequence

import numpy as np

from bert_jax.model import BertConfig

log = logging.getLogger(__name__)

POOLINGS = ("cls", "mean", "pooler")
MIN_BUCKET = 16


def bucket_lengths(max_length: int) -> list:
    """16, 32, 64, ... up to max_length (always included)."""
    buckets, length = [], MIN_BUCKET
    while length < max_length:
        buckets.append(length)
        length *= 2
    return [*buckets, max_length]


def _bucket(length: int, buckets: Sequence[int]) -> int:
    return next(b for b in buckets if b >= length)


def _batch_rows(n: int, batch_size: int) -> int:
    """Rows to pad a batch of n to: a power of two up to batch_size, so a short last batch (or a single text)
    costs little and compiles once."""
    rows = 1
    while rows < n:
        rows *= 2
    return min(rows, batch_size)


def _batches(lengths: Sequence[int], batch_size: int):
    """Indices grouped into batches of similar length (sorted, stable)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def _pad(rows: Sequence[Sequence[int]], length: int, batch_size: int, pad_id: int = 0) -> np.ndarray:
    """Rows padded to [batch_size, length] (missing rows are all padding)."""
    out = np.full((batch_size, length), pad_id, np.int32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def _inputs(rows: Sequence[Sequence[int]], length: int, batch_size: int, pad_id: int):
    """(input_ids, attention_mask) [batch_size, length]. Filler rows attend to their first position only, so no
    row is fully masked (its softmax would be over nothing); their outputs are dropped."""
    input_ids = _pad(rows, length, batch_size, pad_id)
    attention_mask = _pad([[1] * len(row) for row in rows], length, batch_size)
    attention_mask[:, 0] = 1
    return input_ids, attention_mask


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size={batch_size!r}: must be a positive integer")


# ----------------------------------------------------------------------------------------------------
# fill-mask
# ----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _mlm_top_k_fn(config: BertConfig, top_k: int):
    import jax

    from bert_jax.model import BertForPreTraining

    model = BertForPreTraining(config)

    @jax.jit
    def predict(params, input_ids, attention_mask, positions):
        out = model.apply({"params": params}, input_ids, attention_mask, None, positions)
        probs = jax.nn.softmax(out["mlm_logits"].astype("float32"), axis=-1)  # [B, P, V]
        return jax.lax.top_k(probs, top_k)  # ([B, P, k] scores, [B, P, k] ids)

    return predict


def fill_mask(pretrained, texts: Sequence[str], top_k: int = 5, batch_size: int = 8) -> list:
    """Top-k predictions for every [MASK] of every text, in the Hugging Face fill-mask pipeline's layout."""
    config, params, tokenizer = pretrained.config, pretrained.params, pretrained.tokenizer
    _check_batch_size(batch_size)
    if "cls" not in params or "predictions" not in params["cls"]:
        raise ValueError("this checkpoint has no MLM head (cls/predictions); fill-mask needs one")
    if not 1 <= top_k <= config.vocab_size:
        raise ValueError(f"top_k={top_k}: must be between 1 and the vocabulary size {config.vocab_size}")
    mask_token = tokenizer.inv_vocab[tokenizer.mask_id]

    encoded, masks = [], []
    for number, text in enumerate(texts, 1):
        ids = tokenizer.encode(text).input_ids
        positions = [i for i, t in enumerate(ids) if t == tokenizer.mask_id]
        if not positions:
            raise ValueError(f"text {number} has no {mask_token}: {_preview(text)}")
        if len(ids) > config.max_position_embeddings:
            raise ValueError(f"text {number} is {len(ids)} tokens long with [CLS]/[SEP]; the model takes at most "
                             f"{config.max_position_embeddings} (max_position_embeddings): {_preview(text)}")
        encoded.append(ids)
        masks.append(positions)

    import jax

    predict = _mlm_top_k_fn(config, top_k)
    params = jax.device_put(params)  # once, not per batch
    buckets = bucket_lengths(config.max_position_embeddings)
    results = [None] * len(encoded)
    for batch in _batches([len(ids) for ids in encoded], batch_size):
        length = _bucket(max(len(encoded[i]) for i in batch), buckets)
        num_masks = _batch_rows(max(len(masks[i]) for i in batch), length)  # [MASK]s per row, padded
        rows = _batch_rows(len(batch), batch_size)
        input_ids, attention_mask = _inputs([encoded[i] for i in batch], length, rows, tokenizer.pad_id)
        positions = _pad([masks[i] for i in batch], num_masks, rows)
        scores, ids = (np.asarray(x) for x in predict(params, input_ids, attention_mask, positions))
        for row, i in enumerate(batch):
            results[i] = _fill_mask_entries(tokenizer, encoded[i], masks[i], scores[row], ids[row])
    return results


def _fill_mask_entries(tokenizer, ids, positions, scores, predicted) -> list:
    """One text's output: like the pipeline, the sequence skips special tokens when there is a single [MASK]
    and keeps them (so the other [MASK]s stay visible) when there are several."""
    single = len(positions) == 1
    per_mask = []
    for m, position in enumerate(positions):
        row = []
        for score, token in zip(scores[m], predicted[m]):
            filled = list(ids)
            filled[position] = int(token)
            row.append(dict(score=float(score), token=int(token),
                            token_str=tokenizer.decode([int(token)], skip_special_tokens=False),
                            sequence=tokenizer.decode(filled, skip_special_tokens=single)))
        per_mask.append(row)
    return per_mask[0] if single else per_mask


def _preview(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


# ----------------------------------------------------------------------------------------------------
# embed
# ----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _embed_fn(config: BertConfig, pooling: str):
    import jax
    import jax.numpy as jnp

    from bert_jax.model import BertModel

    model = BertModel(config)

    @jax.jit
    def run(params, input_ids, attention_mask):
        sequence, pooled = model.apply({"params": params}, input_ids, attention_mask)  # [B, T, H], [B, H]
        sequence = sequence.astype(jnp.float32)
        if pooling == "cls":
            return sequence[:, 0]
        if pooling == "pooler":
            return pooled.astype(jnp.float32)
        mask = attention_mask[..., None].astype(jnp.float32)  # [B, T, 1]: padding contributes nothing
        return (sequence * mask).sum(1) / jnp.maximum(mask.sum(1), 1e-9)

    return run


def embed(pretrained, texts: Sequence[str], pooling: str = "cls", batch_size: int = 32,
          max_length: int | None = None) -> np.ndarray:
    """One vector per text, float32 [N, H].

    pooling: 'cls' = the final hidden state of [CLS]; 'mean' = the mean over the text's tokens ([CLS]/[SEP]
    included, padding excluded; sentence-transformers' mean pooling); 'pooler' = BERT's pooler, tanh(dense(CLS)).
    Texts longer than max_length tokens (default: the model's max_position_embeddings) are truncated at the end,
    keeping the final [SEP], and a warning says how many.
    """
    config, params, tokenizer = pretrained.config, pretrained.params, pretrained.tokenizer
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r}: must be one of {', '.join(POOLINGS)}")
    _check_batch_size(batch_size)
    max_length = config.max_position_embeddings if max_length is None else max_length
    if not 2 <= max_length <= config.max_position_embeddings:
        raise ValueError(f"max_length={max_length}: must be between 2 and the model's max_position_embeddings "
                         f"({config.max_position_embeddings})")

    encoded, truncated = [], 0
    for text in texts:
        ids = tokenizer.encode(text).input_ids
        if len(ids) > max_length:
            ids = [*ids[:max_length - 1], tokenizer.sep_id]
            truncated += 1
        encoded.append(ids)
    if truncated:
        log.warning("embed: truncated %d of %d texts to max_length=%d tokens", truncated, len(encoded), max_length)

    import jax

    run = _embed_fn(config, pooling)
    params = jax.device_put(params)  # once, not per batch
    buckets = bucket_lengths(max_length)
    out = np.zeros((len(encoded), config.hidden_size), np.float32)
    for batch in _batches([len(ids) for ids in encoded], batch_size):
        length = _bucket(max(len(encoded[i]) for i in batch), buckets)
        rows = _batch_rows(len(batch), batch_size)
        input_ids, attention_mask = _inputs([encoded[i] for i in batch], length, rows, tokenizer.pad_id)
        vectors = np.asarray(run(params["bert"], input_ids, attention_mask))  # [rows, H]
        out[batch] = vectors[:len(batch)]
    return out
