"""Sequence packing for pretraining (SPEC §5): several whole instances per row instead of one padded instance.

The original generator makes many instances short (short_seq_prob, document ends): more than half of the tokens
of a 512-token Wikipedia batch are padding. Packing puts instances back to back in rows of `row_length`:

    per token     input_ids, input_mask, segment_ids (each instance's own token types), as unpacked;
                  instance_ids   1, 2, ... for the row's instances, 0 for padding: attention is block-diagonal
                                 (bert_jax/model.py BertModel), a token attends only to its own instance;
                  position_ids   restarting at 0 at each instance;
    per row       masked_lm_positions / _ids / _weights: every instance's masked positions, offset into the row;
                  cls_positions [K]  each instance's [CLS] in the row, which NSP reads (nsp_weights 1, empty 0);
                  next_sentence_labels [K].

The losses are those of the same instances unpacked: MLM sums w * CE over all masked positions of the batch and
divides by sum(w) + 1e-5, NSP averages over the instances (sum of nsp_weights), and no attention, position or
token type crosses an instance boundary.

A step still holds the phase's `batch_size` instances, so the recipe's batch size and learning rate keep their
meaning; packing only changes how many rows carry them. The rows per global batch are fixed for the phase (one
compiled shape): `rows` when given, else found from the first batch (the rows it needs plus 15%, rounded up to
what the mesh divides), and recorded in the iterator state so that a resumed run packs exactly alike. A batch
that does not fit is carried in `batch_size` rows instead (a second shape, compiled once); the iterator counts
such batches. The instances' order and content come from the source iterator unchanged, so exact resume of the
source is exact resume of the packed run.
"""

from __future__ import annotations

import math
from typing import Iterator, Mapping, Optional

import numpy as np

from bert_jax.data.features import FEATURES

ROWS_MARGIN = 1.15  # spare rows over what the first batch needs: later batches vary in their instances' lengths


def default_max_predictions(max_predictions: int, max_instances: int) -> int:
    """Masked positions a packed row can hold: an instance of n tokens has at most min(max_predictions,
    max(1, round(0.15 n))), so a full row of short instances needs a few more than one long instance."""
    return max_predictions + max_instances


def check_instances(batch: Mapping[str, np.ndarray], row_length: int, key: str = "data.packing") -> None:
    """The instances carry every feature packing needs and fit a row (a ValueError naming `key` otherwise)."""
    missing = [name for name in FEATURES if name not in batch]
    if missing:
        raise ValueError(f"config.{key}: the instances have no {', '.join(missing)} "
                         f"(packing needs {', '.join(FEATURES)})")
    length = np.shape(batch["input_ids"])[1]
    if length > row_length:
        raise ValueError(f"config.data.packing_row_length={row_length}: shorter than the instances ({length} tokens); "
                         f"a row must hold at least one whole instance")


def pack(batch: Mapping[str, np.ndarray], *, rows: int, row_length: int, max_instances: int,
         max_predictions: int) -> Optional[dict]:
    """Packs a batch of instances (numpy [N, L] features) into `rows` rows of `row_length`, longest instances first,
    each into the first row with room for its tokens, an instance slot and its masked positions. Returns None when
    they do not fit in `rows` rows."""
    lengths = np.asarray(batch["input_mask"]).sum(axis=1).astype(np.int64)
    weights = np.asarray(batch["masked_lm_weights"])
    masked_counts = (weights > 0).sum(axis=1)
    used_tokens = np.zeros(rows, np.int64)
    used_slots = np.zeros(rows, np.int64)
    used_predictions = np.zeros(rows, np.int64)
    placement = []  # (instance, row, slot, token offset, prediction offset)
    for i in np.argsort(-lengths, kind="stable"):
        fits = ((used_tokens + lengths[i] <= row_length) & (used_slots < max_instances)
                & (used_predictions + masked_counts[i] <= max_predictions))
        if not fits.any():
            return None
        r = int(np.argmax(fits))
        placement.append((int(i), r, int(used_slots[r]), int(used_tokens[r]), int(used_predictions[r])))
        used_tokens[r] += lengths[i]
        used_slots[r] += 1
        used_predictions[r] += masked_counts[i]

    out = {name: np.zeros((rows, row_length), np.int32)
           for name in ("input_ids", "input_mask", "segment_ids", "instance_ids", "position_ids")}
    out.update(masked_lm_positions=np.zeros((rows, max_predictions), np.int32),
               masked_lm_ids=np.zeros((rows, max_predictions), np.int32),
               masked_lm_weights=np.zeros((rows, max_predictions), np.float32),
               cls_positions=np.zeros((rows, max_instances), np.int32),
               next_sentence_labels=np.zeros((rows, max_instances), np.int32),
               nsp_weights=np.zeros((rows, max_instances), np.float32))
    labels = np.asarray(batch["next_sentence_labels"]).reshape(len(lengths))
    for i, r, slot, start, p in placement:
        n, stop = int(lengths[i]), start + int(lengths[i])
        for name in ("input_ids", "input_mask", "segment_ids"):
            out[name][r, start:stop] = batch[name][i, :n]
        out["instance_ids"][r, start:stop] = slot + 1
        out["position_ids"][r, start:stop] = np.arange(n)
        real = weights[i] > 0
        m = int(real.sum())
        out["masked_lm_positions"][r, p:p + m] = np.asarray(batch["masked_lm_positions"][i])[real] + start
        out["masked_lm_ids"][r, p:p + m] = np.asarray(batch["masked_lm_ids"][i])[real]
        out["masked_lm_weights"][r, p:p + m] = weights[i][real]
        out["cls_positions"][r, slot] = start
        out["next_sentence_labels"][r, slot] = labels[i]
        out["nsp_weights"][r, slot] = 1.0
    return out


def rows_needed(batch: Mapping[str, np.ndarray], *, row_length: int, max_instances: int, max_predictions: int) -> int:
    """The fewest rows `pack` fits the batch into (its greedy placement, with as many rows as instances)."""
    n = len(batch["input_ids"])
    packed = pack(batch, rows=n, row_length=row_length, max_instances=max_instances, max_predictions=max_predictions)
    return int((packed["instance_ids"] > 0).any(axis=1).sum())


class PackedBatches:
    """This process's packed rows of each global batch, from a source iterator of its unpacked instances.

    `rows` is the global number of rows per batch (0: from the first batch); `row_multiple` what a global batch's
    rows must divide by (data-parallel devices x micro-batches). State: the source's, plus the rows in use.
    """

    def __init__(self, source: Iterator[Mapping[str, np.ndarray]], *, batch_size: int, row_length: int,
                 max_instances: int, max_predictions: int, rows: int = 0, row_multiple: int = 1,
                 process_count: int = 1):
        self.source, self.batch_size, self.row_length = source, batch_size, row_length
        self.max_instances, self.max_predictions = max_instances, max_predictions
        self.rows, self.row_multiple, self.process_count = rows, row_multiple, process_count
        self.overflow_batches = 0  # batches that did not fit `rows` and were carried in batch_size rows
        self.checked = False

    # The trainer checkpoints get_state() and hands it to set_state() on resume (and to the next phase).
    def get_state(self) -> dict:
        return {**self.source.get_state(), "packing_rows": self.rows, "packing_row_length": self.row_length}

    def set_state(self, state: Mapping, **kwargs) -> None:
        state = dict(state)
        rows, row_length = state.pop("packing_rows", 0), state.pop("packing_row_length", 0)
        if rows and row_length == self.row_length:  # another phase's rows are for another length
            self.rows = int(rows)
        self.source.set_state(state, **kwargs)

    def __getattr__(self, name):
        """What else the source tells (its spec, its reader's counts for the run's report) passes through."""
        if name == "source":  # not set yet (during unpickling or a failed __init__)
            raise AttributeError(name)
        return getattr(self.source, name)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self.source)
        if not self.checked:
            check_instances(batch, self.row_length)
            self.checked = True
        options = dict(row_length=self.row_length, max_instances=self.max_instances,
                       max_predictions=self.max_predictions)
        local = len(batch["input_ids"])
        if not self.rows:
            needed = self._agree(rows_needed(batch, **options)) * self.process_count
            self.rows = min(self._round_up(math.ceil(needed * ROWS_MARGIN)), self.batch_size)
        packed = pack(batch, rows=self.rows // self.process_count, **options)
        if self._agree(int(packed is None)):  # some process's instances did not fit: all take the wide shape
            self.overflow_batches += 1
            packed = pack(batch, rows=local, **options)
        return packed

    def _round_up(self, rows: int) -> int:
        return -(-rows // self.row_multiple) * self.row_multiple

    def _agree(self, value: int) -> int:
        """The maximum of `value` over processes (each packs its own instances; shapes must agree)."""
        if self.process_count == 1:
            return value
        from jax.experimental import multihost_utils

        return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int32))))

