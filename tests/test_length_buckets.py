"""Length buckets (bert_jax/length_buckets.py) and their use in fine-tuning, evaluation and predict.

The claim to check is SPEC §5's: cutting a batch to its bucket changes nothing but speed. Every head's outputs on
bucketed batches equal those of the same examples padded to max_seq_length (float32, 1e-5), the losses of a batch
are equal too, and the number of shapes the model is compiled for is bounded by the buckets. The grouped training
order is checked as a sampler: each epoch a permutation, batches of similar lengths, the batch order random.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

from bert_jax import finetune, heads, length_buckets, predict, sharding
from bert_jax.model import BertConfig

MAX_LEN = 64
BUCKETS = (16, 32, 64)


# ----------------------------------------------------------------------------------------------------------------------
# The bucket arithmetic
# ----------------------------------------------------------------------------------------------------------------------


def test_default_buckets_double_up_to_the_maximum():
    assert length_buckets.default_buckets(128) == (32, 64, 128)
    assert length_buckets.default_buckets(384) == (32, 64, 128, 256, 384)
    assert length_buckets.default_buckets(32) == (32,)
    assert length_buckets.default_buckets(20) == (20,)


def test_bucket_lists_are_checked_naming_the_key():
    assert length_buckets.resolve_buckets((), 128) == (32, 64, 128)
    assert length_buckets.resolve_buckets((48, 128), 128) == (48, 128)
    with pytest.raises(ValueError, match=r"data.bucket_lengths=\[32, 64\]: the last bucket must be "
                                         r"data.max_seq_length=128"):
        length_buckets.resolve_buckets((32, 64), 128)
    with pytest.raises(ValueError, match="strictly increasing"):
        length_buckets.resolve_buckets((64, 32, 128), 128)
    with pytest.raises(ValueError, match="strictly increasing"):
        length_buckets.resolve_buckets((0, 128), 128)


def test_a_bad_bucket_list_is_a_config_error_before_anything_is_read(tmp_path):
    config = finetune.default_config()
    config.task.name = "sst2"
    config.init_checkpoint = str(tmp_path)
    config.data.source = str(tmp_path)
    config.data.bucket_lengths = (32, 64)
    with pytest.raises(ValueError, match=r"^config.data.bucket_lengths=\[32, 64\]: the last bucket must be"):
        finetune.validate_config(config)


def test_example_lengths_and_bucket_choice_by_hand():
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(length_buckets.example_lengths(mask), [3, 1, 6, 0])
    choices = np.array([[[1, 1, 0, 0], [1, 1, 1, 0]], [[1, 0, 0, 0], [1, 0, 0, 0]]])  # [N=2, C=2, T=4]
    np.testing.assert_array_equal(length_buckets.example_lengths(choices), [3, 1])
    assert [length_buckets.bucket_for(n, BUCKETS) for n in (1, 16, 17, 32, 33, 64)] == [16, 16, 32, 32, 64, 64]
    with pytest.raises(ValueError, match="longer than the largest bucket 64"):
        length_buckets.bucket_for(65, BUCKETS)


def test_grouped_order_is_a_permutation_of_similar_length_batches_in_random_order():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 129, size=5000)
    order = length_buckets.grouped_order(lengths, 32, np.random.default_rng(1), first_batch=7)
    np.testing.assert_array_equal(np.sort(order), np.arange(5000))
    body = order[7:7 + 155 * 32].reshape(155, 32)
    spread = np.ptp(lengths[body], axis=1).mean()
    shuffled = np.ptp(lengths[rng.permutation(5000)[:155 * 32].reshape(155, 32)], axis=1).mean()
    assert spread < 0.25 * shuffled, (spread, shuffled)  # sorted within windows of 50 batches
    # Batches come in random order, not longest first: their maxima are not monotone over the epoch.
    maxima = lengths[body].max(axis=1)
    assert np.mean(np.diff(maxima) < 0) < 0.75
    # Two seeds give different orders of batches.
    other = length_buckets.grouped_order(lengths, 32, np.random.default_rng(2), first_batch=7)
    assert not np.array_equal(order, other)


def features_of(lengths, max_len=MAX_LEN, seed=0, vocab=100, choices=None):
    rng = np.random.default_rng(seed)
    n = len(lengths)
    shape = (n, max_len) if choices is None else (n, choices, max_len)
    positions = np.arange(max_len)
    lengths = np.asarray(lengths)
    per_row = lengths[:, None] if choices is None else (lengths[:, None] - rng.integers(0, 3, (n, choices))
                                                       ).clip(2)[..., None]
    mask = (positions < per_row).astype(np.int32) * np.ones(shape, np.int32)
    ids = rng.integers(5, vocab, shape).astype(np.int32) * mask
    types = ((positions >= per_row // 2) * mask).astype(np.int32)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def test_train_batches_see_every_example_once_per_epoch_cut_to_their_bucket():
    lengths = np.random.default_rng(3).integers(3, MAX_LEN + 1, size=100)
    features = features_of(lengths)
    features["labels"] = np.arange(100)
    batches = finetune.TrainBatches(features, ("input_ids", "attention_mask", "token_type_ids", "labels"), 16,
                                    seed=0, buckets=BUCKETS)
    seen, shapes = [], set()
    for _ in range(25):  # 400 rows: four epochs of 100, batch boundaries not on epoch boundaries
        batch = next(batches)
        width = batch["input_ids"].shape[1]
        shapes.add(width)
        assert width == length_buckets.bucket_for(int(lengths[batch["labels"]].max()), BUCKETS)
        np.testing.assert_array_equal(batch["input_ids"], features["input_ids"][batch["labels"], :width])
        assert features["attention_mask"][batch["labels"], width:].sum() == 0  # nothing real was cut
        seen.extend(batch["labels"])
    for epoch in range(4):
        assert sorted(seen[epoch * 100:(epoch + 1) * 100]) == list(range(100))
    assert shapes <= set(BUCKETS)
    # Resume: a new iterator set to a position gives the same batches as the one that went on.
    again = finetune.TrainBatches(features, ("input_ids", "attention_mask", "token_type_ids", "labels"), 16,
                                  seed=0, buckets=BUCKETS)
    again.set_state({"position": 16 * 20})
    np.testing.assert_array_equal(next(again)["labels"], seen[16 * 20:16 * 21])


def test_processes_cut_their_rows_of_a_global_batch_alike():
    lengths = np.random.default_rng(4).integers(3, MAX_LEN + 1, size=64)
    features = features_of(lengths)
    keys = ("input_ids", "attention_mask", "token_type_ids")
    whole = finetune.TrainBatches(features, keys, 16, seed=1, buckets=BUCKETS)
    halves = [finetune.TrainBatches(features, keys, 16, seed=1, rows=rows, buckets=BUCKETS)
              for rows in (slice(0, 8), slice(8, 16))]
    for _ in range(6):
        full = next(whole)
        parts = [next(h) for h in halves]
        for key in keys:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), full[key])


# ----------------------------------------------------------------------------------------------------------------------
# The heads: bucketed outputs and losses equal padded ones
# ----------------------------------------------------------------------------------------------------------------------

TINY = BertConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                  max_position_embeddings=MAX_LEN)


class CountingForward:
    """make_forward's function, recording the batch shapes it is called with (one compilation each)."""

    def __init__(self, forward):
        self.forward, self.shapes = forward, set()

    def __call__(self, params, batch):
        self.shapes.add(tuple(batch["input_ids"].shape))
        return self.forward(params, batch)


def targets_for(kind, features, lengths, rng):
    n = len(lengths)
    if kind == "tagging":
        labels = rng.integers(0, 3, features["input_ids"].shape)
        return {"labels": np.where(features["attention_mask"] == 1, labels, -100).astype(np.int32)}
    if kind == "span":
        starts = rng.integers(1, lengths)
        return {"start_positions": starts.astype(np.int32),
                "end_positions": np.minimum(starts + 2, lengths - 1).astype(np.int32)}
    if kind == "regression":
        return {"labels": rng.normal(size=n).astype(np.float32)}
    return {"labels": rng.integers(0, 2 if kind != "multiple_choice" else 3, n).astype(np.int32)}


@pytest.mark.parametrize("kind,num_labels,choices", [("classification", 3, None), ("regression", 1, None),
                                                     ("tagging", 3, None), ("span", 2, None),
                                                     ("multiple_choice", 1, 3)])
def test_bucketed_outputs_and_losses_equal_padding_to_max_seq_length(kind, num_labels, choices):
    rng = np.random.default_rng(5)
    lengths = np.concatenate([rng.integers(4, 16, 20), rng.integers(17, 33, 15), rng.integers(40, MAX_LEN + 1, 5)])
    features = features_of(lengths, choices=choices)
    objective = heads.FinetuneObjective(kind, TINY, num_labels, num_choices=choices or 4)
    params = jax.device_get(nn.meta.unbox(objective.init_params(jax.random.PRNGKey(0))))
    mesh = sharding.make_mesh({"data": -1})
    shardings = sharding.logical_shardings(jax.eval_shape(objective.init_params, jax.random.PRNGKey(0)), mesh)
    forward = CountingForward(predict.make_forward(objective, mesh, shardings))
    placed = jax.device_put(params, shardings)

    padded = predict.run_model(forward, placed, features, 8, mesh)
    assert forward.shapes == {(8, MAX_LEN) if choices is None else (8, choices, MAX_LEN)}
    forward.shapes.clear()
    per_token = heads.KINDS[kind].per_token
    bucketed = predict.run_model(forward, placed, features, 8, mesh, BUCKETS, per_token)
    widths = {shape[-1] for shape in forward.shapes}
    assert widths == set(BUCKETS)  # each bucket compiled once, none other
    assert padded.keys() == bucketed.keys()
    for key in padded:
        assert padded[key].shape == bucketed[key].shape, key
        if key in per_token:  # compare the real tokens; padding positions are PADDING_LOGIT when bucketed
            real = np.arange(MAX_LEN)[None, :] < lengths[:, None]
            np.testing.assert_allclose(bucketed[key][real], padded[key][real], atol=1e-5, rtol=1e-5)
            beyond = np.zeros_like(real)  # positions past the bucket of the batch each row was run in
            for chosen, width in length_buckets.batches_by_length(length_buckets.example_lengths(
                    features["attention_mask"]), 8, BUCKETS):
                beyond[chosen, width:] = True
            assert beyond.any()
            assert (bucketed[key][beyond] == length_buckets.PADDING_LOGIT).all()
            assert np.isfinite(bucketed[key][~beyond]).all() and (bucketed[key][~beyond] > -1e8).all()
        else:
            np.testing.assert_allclose(bucketed[key], padded[key], atol=1e-5, rtol=1e-5)

    # The loss of one batch, cut to its bucket, equals the loss of the same batch at max_seq_length.
    batch = {**features, **targets_for(kind, features, lengths, rng)}
    chosen = np.flatnonzero(lengths <= 32)[:8]
    full = {k: v[chosen] for k, v in batch.items()}
    cut = length_buckets.trim(full, 32, heads.KINDS[kind].sequence_keys)
    assert cut["input_ids"].shape[-1] == 32
    losses = [objective.loss(params, b, None, objective.normalizers(b), train=False) for b in (full, cut)]
    np.testing.assert_allclose(losses[1][0], losses[0][0], rtol=1e-5, atol=1e-6)
    for name in losses[0][1]:
        np.testing.assert_allclose(losses[1][1][name], losses[0][1][name], rtol=1e-5, atol=1e-6)
