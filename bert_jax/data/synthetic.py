"""Learnable synthetic pretraining batches: no files, no tokenizer, no TensorFlow.

Used by tests, the benchmarks (benchmarks/pretrain_step.py) and pretraining with `data.source='synthetic'`.
This module must stay importable without TensorFlow (the accelerator benchmarks import it alone).
"""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from bert_jax.data.features import FEATURES


class SyntheticPretrainingData:
    """Learnable synthetic batches with the 7 pretraining features, deterministic per (seed, batch index).

    Each sequence is [CLS] A [SEP] B [SEP] over an arithmetic progression of token ids (start skewed
    towards small ids, stride random per row); B continues A (label 0) or starts elsewhere (label 1, half
    the rows). Masking is the original 80/10/10 on ~15% of the positions. Both tasks are learnable (slowly:
    the strides need attention). The global batch is generated and this process's `rows` of it are
    returned, so any number of processes sees the same global batches.
    """

    FIRST_ID = 5  # ids 0-4 stand for [PAD] [UNK] [CLS] [SEP] [MASK]
    CLS, SEP, MASK = 2, 3, 4

    def __init__(self, global_batch_size: int, seq_length: int, max_predictions: int, vocab_size: int,
                 seed: int = 0, rows: Optional[slice] = None):
        if vocab_size <= self.FIRST_ID + 8:
            raise ValueError(f"synthetic data needs vocab_size > {self.FIRST_ID + 8}, got {vocab_size}")
        self.batch, self.length, self.predictions = global_batch_size, seq_length, max_predictions
        self.vocab_size, self.seed = vocab_size, seed
        self.rows = rows or slice(0, global_batch_size)
        self.index = 0

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: Mapping) -> None:
        self.index = int(state["index"])

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = self.global_batch(self.index)
        self.index += 1
        return {k: v[self.rows] for k, v in batch.items()}

    def global_batch(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        b, t, p = self.batch, self.length, self.predictions
        content = self.vocab_size - self.FIRST_ID
        out = {name: np.zeros((b, p if name.startswith("masked") else t), np.int32) for name in FEATURES[:5]}
        out["masked_lm_weights"] = np.zeros((b, p), np.float32)
        out["next_sentence_labels"] = rng.integers(0, 2, size=(b,)).astype(np.int32)
        for row in range(b):
            used = int(rng.integers(max(8, t // 2), t + 1))  # real tokens incl. [CLS] and two [SEP]
            len_a = int(rng.integers(1, used - 4))
            len_b = used - 3 - len_a
            # Skewed starts make the unigram distribution learnable in a few steps; strides need attention.
            start, stride = int(content * rng.random() ** 4), int(rng.integers(1, 4))
            a = start + stride * np.arange(len_a)
            b_start = start + stride * len_a if out["next_sentence_labels"][row] == 0 else int(rng.integers(content))
            seq_b = b_start + stride * np.arange(len_b)
            tokens = np.concatenate([[self.CLS], self.FIRST_ID + a % content, [self.SEP],
                                     self.FIRST_ID + seq_b % content, [self.SEP]])
            segment = np.concatenate([np.zeros(len_a + 2), np.ones(len_b + 1)])
            candidates = np.concatenate([np.arange(1, len_a + 1), np.arange(len_a + 2, used - 1)])
            count = min(p, max(1, int(round(used * 0.15))))
            positions = np.sort(rng.choice(candidates, size=count, replace=False))
            masked = tokens.copy()
            for pos in positions:
                roll = rng.random()
                masked[pos] = self.MASK if roll < 0.8 else masked[pos] if roll < 0.9 else \
                    self.FIRST_ID + int(rng.integers(content))
            out["input_ids"][row, :used] = masked
            out["input_mask"][row, :used] = 1
            out["segment_ids"][row, :used] = segment
            out["masked_lm_positions"][row, :count] = positions
            out["masked_lm_ids"][row, :count] = tokens[positions]
            out["masked_lm_weights"][row, :count] = 1.0
        return out
