"""Dynamic (RoBERTa-style) masking as a TensorFlow op, for masks drawn anew inside tf.data.

`mask_batch_tf` applies the original masking (bert_jax.data.instances.create_masked_lm_predictions: the same
candidates, counts, whole-word rule and 80/10/10 split) vectorised over a batch. Its randomness is drawn
from a counter-based hash of (seed, example key, position) -- SplitMix64 on uint64 tensors -- so an
example's mask depends on the seed and its key only, not on batching, threads or how many examples were
read before. TensorFlow is imported inside the functions, when a pipeline builds its graph.
"""

from __future__ import annotations

import numpy as np

from bert_jax.data.instances import InstanceConfig, VocabInfo

# Streams of the counter-based hash: one independent uniform per (example, position, purpose).
_PRIORITY, _KEEP_OR_MASK, _KEEP_OR_RANDOM, _RANDOM_TOKEN = range(4)
_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93)


def _splitmix64_tf(x):
    """SplitMix64's finaliser on uint64 tensors: a bijection that scrambles all bits."""
    import tensorflow as tf

    u64 = tf.uint64
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(30, u64))) * tf.constant(_MIX[1], u64)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(27, u64))) * tf.constant(_MIX[2], u64)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(31, u64)))


def _hash_uniform_tf(seed, keys, length: int, stream: int):
    """Uniform floats in [0, 1) of shape [B, length], a hash of (seed, key, position, stream).

    Counter-based and elementwise, so an example's draws depend on (seed, key) only.
    """
    import tensorflow as tf

    u64 = tf.uint64
    seed = tf.bitcast(tf.cast(seed, tf.int64), u64)
    key = tf.bitcast(tf.cast(keys, tf.int64), u64)
    example = _splitmix64_tf(seed * tf.constant(_MIX[0], u64) + _splitmix64_tf(key + tf.constant(_MIX[3], u64)))
    counter = tf.cast(tf.range(length, dtype=tf.int64), u64) * tf.constant(4, u64) + tf.constant(stream, u64)  # [L]
    x = _splitmix64_tf(example[:, None] + counter[None, :] * tf.constant(_MIX[0], u64))  # [B, L]
    top24 = tf.cast(tf.bitwise.right_shift(x, tf.constant(40, u64)), tf.int32)
    return tf.cast(top24, tf.float32) * (1.0 / (1 << 24))


def num_to_predict_table(config: InstanceConfig) -> np.ndarray:
    """num_to_predict for every sequence length 0..max_seq_length, computed with Python's round."""
    return np.array([config.num_to_predict(n) for n in range(config.max_seq_length + 1)], np.int32)


def mask_batch_tf(input_ids, lengths, keys, *, config: InstanceConfig, vocab: VocabInfo, seed):
    """Dynamic masking of a batch, as the original does it per sequence.

    Args:
      input_ids: int32 [B, L], [CLS] A [SEP] B [SEP] then padding.
      lengths: int32 [B], the number of real tokens (special tokens included).
      keys: int64 [B], a unique key per example (its index in the stream); with `seed` it fixes the mask.
    Returns dict: input_ids (masked), masked_lm_positions, masked_lm_ids (int32 [B, P]),
      masked_lm_weights (float32 [B, P]).

    Candidates are the real tokens other than [CLS]/[SEP]; whole words (a start plus its '##' pieces)
    are taken in a random order while they fit in num_to_predict(length) (a word that would pass it is
    skipped, not cut); chosen pieces become [MASK] 80%, stay 10%, a uniform vocabulary id 10%.
    """
    import tensorflow as tf

    input_ids = tf.convert_to_tensor(input_ids, tf.int32)
    lengths = tf.cast(lengths, tf.int32)
    batch, length = tf.shape(input_ids)[0], input_ids.shape[1]
    preds = config.max_predictions_per_seq

    positions = tf.range(length)[None, :]  # [1, L]
    candidate = (
        (positions < lengths[:, None]) & tf.not_equal(input_ids, vocab.cls_id) & tf.not_equal(input_ids, vocab.sep_id)
    )  # [B, L]
    if config.whole_word_masking:
        continuation = tf.gather(tf.constant(vocab.is_continuation), input_ids)
        previous_candidate = tf.pad(candidate[:, :-1], [[0, 0], [1, 0]])
        word_start = candidate & ~(continuation & previous_candidate)
    else:
        word_start = candidate
    # Each candidate position belongs to the word that starts at or before it: word number along the row.
    word_number = tf.cumsum(tf.cast(word_start, tf.int32), axis=1) - 1  # [B, L]

    # A random order of the words: sort word starts by a uniform priority (non-starts last).
    priority = _hash_uniform_tf(seed, keys, length, _PRIORITY)
    priority = tf.where(word_start, priority, 2.0)
    order = tf.argsort(priority, axis=1, stable=True)  # [B, L] positions, shuffled words first
    word_sizes = tf.math.unsorted_segment_sum(
        tf.cast(candidate, tf.int32),
        tf.where(candidate, word_number, length) + tf.range(batch)[:, None] * (length + 1),
        batch * (length + 1),
    )
    word_sizes = tf.reshape(word_sizes, [batch, length + 1])[:, :length]  # [B, L] size of word k
    size_at_start = tf.where(word_start, tf.gather(word_sizes, tf.maximum(word_number, 0), batch_dims=1), 0)
    sizes_in_order = tf.gather(size_at_start, order, batch_dims=1)  # [B, L], 0 past the last word
    budget = tf.gather(tf.constant(num_to_predict_table(config)), lengths)  # [B]

    if config.whole_word_masking:
        # Greedy over the shuffled words: take a word if it still fits (original loop, vectorised over B).
        def take_next(count, size):
            taken = (size > 0) & (count + size <= budget)
            return tf.where(taken, count + size, count)

        counts_after = tf.scan(take_next, tf.transpose(sizes_in_order), initializer=tf.zeros([batch], tf.int32))
        counts_before = tf.concat([tf.zeros([1, batch], tf.int32), counts_after[:-1]], axis=0)
        taken_in_order = tf.transpose(counts_after > counts_before)  # [B, L]
    else:
        rank = tf.range(length)[None, :]
        taken_in_order = (sizes_in_order > 0) & (rank < budget[:, None])
    # Back from shuffled order to positions, then from word starts to all pieces of the word.
    taken_start = tf.scatter_nd(
        tf.stack([tf.repeat(tf.range(batch), length), tf.reshape(order, [-1])], axis=1),
        tf.reshape(tf.cast(taken_in_order, tf.int32), [-1]),
        [batch, length],
    )  # [B, L] 1 at the start of each chosen word
    start_positions = tf.where(word_start, positions, 0)
    start_of_word = tf.gather(
        tf.math.unsorted_segment_max(  # position of each word's start, indexed by word number
            tf.reshape(start_positions, [-1]),
            tf.reshape(tf.where(candidate, word_number, length) + tf.range(batch)[:, None] * (length + 1), [-1]),
            batch * (length + 1),
        ),
        tf.range(batch)[:, None] * (length + 1) + tf.maximum(word_number, 0),
    )  # [B, L]
    chosen = candidate & (tf.gather(taken_start, start_of_word, batch_dims=1) > 0)  # [B, L]

    # 80% [MASK], 10% unchanged, 10% a random id.
    u_mask = _hash_uniform_tf(seed, keys, length, _KEEP_OR_MASK)
    u_keep = _hash_uniform_tf(seed, keys, length, _KEEP_OR_RANDOM)
    u_token = _hash_uniform_tf(seed, keys, length, _RANDOM_TOKEN)
    random_ids = tf.minimum(tf.cast(u_token * vocab.vocab_size, tf.int32), vocab.vocab_size - 1)
    replacement = tf.where(u_mask < 0.8, vocab.mask_id, tf.where(u_keep < 0.5, input_ids, random_ids))
    masked_ids = tf.where(chosen, replacement, input_ids)

    # The chosen positions in increasing order, padded with 0 (weight 0) to max_predictions_per_seq.
    sort_key = tf.where(chosen, positions, length + positions)
    first = tf.sort(sort_key, axis=1)[:, :preds]  # [B, min(L, P)]
    if first.shape[1] < preds:
        first = tf.pad(first, [[0, 0], [0, preds - first.shape[1]]], constant_values=2 * length)
    real = first < length
    masked_positions = tf.where(real, first, 0)
    masked_labels = tf.where(real, tf.gather(input_ids, masked_positions, batch_dims=1), 0)
    return {
        "input_ids": masked_ids,
        "masked_lm_positions": masked_positions,
        "masked_lm_ids": masked_labels,
        "masked_lm_weights": tf.cast(real, tf.float32),
    }
