"""Length buckets: batches padded to the smallest of a few lengths instead of always to `max_seq_length`.

Fine-tuning features are stored padded to `max_seq_length` (SST-2's sentences fill about a fifth of a 128-token
row). A batch is cut down to the smallest bucket length that holds its longest example, so the model runs on far
fewer padding tokens, and jit compiles once per bucket, not once per batch. Padding is masked exactly as before,
so every example's outputs equal those of the example padded to `max_seq_length` (SPEC §5).

Training batches come from `grouped_order`: Hugging Face's `group_by_length` recipe (a shuffled order, sorted by
length within windows of `WINDOW_BATCHES` batches, cut into batches, the batches shuffled), so an epoch still sees
every example once, in a random order of batches whose examples have similar lengths.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

SMALLEST_BUCKET = 32
WINDOW_BATCHES = 50  # Hugging Face's LengthGroupedSampler sorts megabatches of 50 batches
# Per-token outputs beyond a batch's bucket length are padding: filled with a logit no argmax or top-k picks.
PADDING_LOGIT = np.float32(-1e9)


def default_buckets(max_seq_length: int) -> tuple[int, ...]:
    """32, 64, 128, ... below `max_seq_length`, then `max_seq_length` itself (384 for SQuAD: 32 ... 256, 384)."""
    buckets, length = [], SMALLEST_BUCKET
    while length < max_seq_length:
        buckets.append(length)
        length *= 2
    return (*buckets, max_seq_length)


def resolve_buckets(bucket_lengths: Sequence[int], max_seq_length: int, key: str = "data.bucket_lengths"
                    ) -> tuple[int, ...]:
    """The bucket lengths of a config: () = default_buckets; else strictly increasing positive lengths that end
    at max_seq_length (a ValueError naming `key` otherwise)."""
    if not bucket_lengths:
        return default_buckets(max_seq_length)
    buckets = tuple(int(b) for b in bucket_lengths)
    if any(b <= 0 for b in buckets) or any(a >= b for a, b in zip(buckets, buckets[1:])):
        raise ValueError(f"{key}={list(buckets)}: must be strictly increasing positive lengths")
    if buckets[-1] != max_seq_length:
        raise ValueError(f"{key}={list(buckets)}: the last bucket must be data.max_seq_length={max_seq_length}, "
                         f"so that every example fits one")
    return buckets


def example_lengths(attention_mask: np.ndarray) -> np.ndarray:
    """Per example, one past its last attended position: [N, T] -> [N]; multiple choice [N, C, T] -> the longest
    choice."""
    attended = np.asarray(attention_mask) != 0
    t = attended.shape[-1]
    # The last True along T, found from the reversed mask; rows with no attended token get 0.
    last = t - np.argmax(attended[..., ::-1], axis=-1)
    lengths = np.where(attended.any(axis=-1), last, 0)
    return lengths.reshape(len(lengths), -1).max(axis=1)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `length` tokens."""
    index = int(np.searchsorted(np.asarray(buckets), length, side="left"))
    if index == len(buckets):
        raise ValueError(f"an example of {length} tokens is longer than the largest bucket {buckets[-1]}")
    return int(buckets[index])


def trim(batch: Mapping[str, np.ndarray], length: int, sequence_keys: Sequence[str]) -> dict:
    """The batch with the last (token) axis of `sequence_keys` cut to `length`; other arrays unchanged."""
    return {k: (v[..., :length] if k in sequence_keys else v) for k, v in batch.items()}


def grouped_order(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, first_batch: int = 0
                  ) -> np.ndarray:
    """A permutation of range(len(lengths)) whose consecutive batches hold examples of similar lengths.

    `first_batch` is how many rows the first batch takes (0 = a whole batch): when an epoch does not start on a
    batch boundary (the stream of epochs is cut into batches regardless of epochs), the first `first_batch`
    positions complete the previous epoch's last batch. Those, and a last partial batch, stay at the ends; the
    whole batches in between are shuffled.
    """
    n = len(lengths)
    order = rng.permutation(n)
    window = WINDOW_BATCHES * batch_size
    # Longest first within each window of the shuffled order (stable, so equal lengths keep the random order).
    order = np.concatenate([chunk[np.argsort(-lengths[chunk], kind="stable")]
                            for chunk in np.split(order, range(window, n, window))]) if n else order
    head = min(first_batch, n)
    whole = (n - head) // batch_size
    body = order[head:head + whole * batch_size].reshape(whole, batch_size)
    body = body[rng.permutation(whole)]
    return np.concatenate([order[:head], body.reshape(-1), order[head + whole * batch_size:]])


def batches_by_length(lengths: np.ndarray, batch_size: int, buckets: Sequence[int]) -> list[tuple[np.ndarray, int]]:
    """Evaluation and prediction: (indices, bucket length) of batches over the examples sorted by length, so
    that each batch is padded to little more than its own longest example. Order is deterministic (the same on
    every process); the caller puts the outputs back in the examples' order."""
    order = np.argsort(lengths, kind="stable")
    return [(chosen, bucket_for(int(lengths[chosen].max()), buckets))
            for chosen in (order[i:i + batch_size] for i in range(0, len(order), batch_size))]
