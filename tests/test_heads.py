"""The table of fine-tuning kinds (bert_jax/heads.py KINDS): it covers every kind a task can have, each kind's
model has the head, width and outputs its entry says, and each kind's loss equals the value computed by hand on a
tiny batch (cross-entropy written out with math.log, not with the library's softmax)."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax import heads
from bert_jax.model import BertConfig
from bert_jax.tasks import KINDS as TASK_KINDS
from bert_jax.tasks import TASK_NAMES, get_task

TINY = BertConfig(vocab_size=100, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                  max_position_embeddings=16)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_the_table_covers_every_kind_every_task_declares():
    assert set(heads.KINDS) == set(TASK_KINDS)
    tasks = [get_task(name) for name in TASK_NAMES] + [get_task("classify", kind="regression")]
    assert {task.kind for task in tasks} == set(heads.KINDS)  # and every kind has a task
    for task in tasks:
        kind = heads.KINDS[task.kind]
        assert set(kind.per_token) <= set(kind.outputs)
        assert set(kind.sequence_keys) >= set(heads.INPUT_KEYS)
    with pytest.raises(ValueError, match="unknown task kind 'ranking'"):
        heads.FinetuneObjective("ranking", TINY, 2)


@pytest.mark.parametrize("name,num_labels", [("classification", 3), ("regression", 1), ("tagging", 5),
                                             ("span", 1), ("multiple_choice", 1)])
def test_each_kind_builds_the_head_and_outputs_its_entry_names(name, num_labels):
    kind = heads.KINDS[name]
    objective = heads.FinetuneObjective(name, TINY, num_labels, num_choices=3)
    shapes = nn.meta.unbox(jax.eval_shape(objective.init_params, jax.random.PRNGKey(0)))
    assert set(shapes) == {"bert", kind.head}
    width = kind.width(num_labels)
    assert shapes[kind.head]["bias"].shape == (width,)
    head = objective.init_head(jax.random.PRNGKey(1))
    assert list(head) == [kind.head] and head[kind.head]["bias"].shape == (width,)

    shape = (2, 3, 8) if kind.choices else (2, 8)
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32) for k in heads.INPUT_KEYS}
    outputs = jax.eval_shape(objective.named_outputs, shapes, batch)
    assert set(outputs) == set(kind.outputs)
    for key, out in outputs.items():
        has_token_axis = len(out.shape) > 1 and out.shape[1] == 8
        assert has_token_axis == (key in kind.per_token), key


def test_classification_loss_is_the_mean_cross_entropy():
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    batch = {"input_ids": jnp.zeros((3, 4), jnp.int32), "labels": jnp.array([0, 1, 1])}
    kind = heads.KINDS["classification"]
    loss, metrics = kind.loss(logits, batch, kind.normalizers(batch))
    # -log softmax: log(1 + e^(other - own)) for two classes
    expected = (softplus(-2.0) + softplus(-1.0) + softplus(3.0)) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(metrics["accuracy"]) == pytest.approx(2 / 3)


def test_multiple_choice_loss_is_the_cross_entropy_over_choices():
    logits = jnp.array([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]])  # [B, C]
    batch = {"input_ids": jnp.zeros((2, 3, 4), jnp.int32), "labels": jnp.array([1, 2])}
    kind = heads.KINDS["multiple_choice"]
    loss, _ = kind.loss(logits, batch, kind.normalizers(batch))
    expected = (math.log(2 + math.e) - 1.0 + math.log(math.exp(2.0) + 2) - 0.0) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_regression_loss_is_the_mean_squared_error():
    logits = jnp.array([[1.5], [0.0]])  # [B, 1]
    batch = {"input_ids": jnp.zeros((2, 4), jnp.int32), "labels": jnp.array([1.0, 2.0])}
    kind = heads.KINDS["regression"]
    loss, metrics = kind.loss(logits, batch, kind.normalizers(batch))
    assert float(loss) == pytest.approx((0.5 ** 2 + 2.0 ** 2) / 2)
    assert metrics == {}


def test_tagging_loss_averages_over_the_labeled_pieces_only():
    logits = jnp.array([[[1.0, 0.0], [9.0, -9.0], [0.0, 2.0], [0.0, 0.0]]])  # [B=1, T=4, L=2]
    labels = jnp.array([[0, heads.IGNORE, 1, heads.IGNORE]])  # the ignored pieces would cost ~18 and log 2
    batch = {"input_ids": jnp.zeros((1, 4), jnp.int32), "labels": labels}
    kind = heads.KINDS["tagging"]
    normalizers = kind.normalizers(batch)
    assert float(normalizers["tokens"]) == 2 and float(normalizers["count"]) == 1
    loss, metrics = kind.loss(logits, batch, normalizers)
    assert float(loss) == pytest.approx((softplus(-1.0) + softplus(-2.0)) / 2, rel=1e-6)
    assert float(metrics["accuracy"]) == 1.0


def test_span_loss_leaves_the_padding_out_of_the_softmax():
    start = jnp.array([[0.0, 1.0, 50.0, 50.0]])  # padding positions carry large logits: they must not count
    end = jnp.array([[2.0, 0.0, 50.0, 50.0]])
    batch = {"input_ids": jnp.zeros((1, 4), jnp.int32), "attention_mask": jnp.array([[1, 1, 0, 0]]),
             "start_positions": jnp.array([1]), "end_positions": jnp.array([0])}
    kind = heads.KINDS["span"]
    loss, metrics = kind.loss((start, end), batch, kind.normalizers(batch))
    start_ce = math.log(1 + math.e) - 1.0  # softmax over the two real tokens [0, 1], gold 1
    end_ce = math.log(math.exp(2.0) + 1) - 2.0  # [2, 0], gold 0
    assert float(loss) == pytest.approx((start_ce + end_ce) / 2, rel=1e-6)
    assert float(metrics["span_accuracy"]) == 1.0
    np.testing.assert_array_equal(kind.targets, ("start_positions", "end_positions"))
