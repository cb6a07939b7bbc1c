"""Sequence packing (bert_jax/data/packing.py, SPEC §5): a packed batch is the same instances, only in fewer rows.

Checked here: the row layout by hand (positions restart, [CLS] and masked positions point at the right tokens);
a packed batch's MLM and NSP losses and gradients equal those of the same instances unpacked (float32, 1e-5); no
attention crosses an instance boundary (perturbing one instance moves no other's outputs); a packed pretraining
run on real text resumes exactly after SIGTERM, and the same run on 8 devices gives the same losses; bad configs
are errors naming the key before anything compiles.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config, logged

from bert_jax import pretrain
from bert_jax.data import packing
from bert_jax.model import BertConfig, BertForPreTraining
from bert_jax.trainer import Preempted

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIKI = os.path.join(REPO, "..", "shared", "data", "wikipedia", "wiki_00")
VOCAB = os.path.join(REPO, "..", "shared", "data", "vocab", "bert-base-uncased-vocab.txt")
CLS, SEP, MASK = 101, 102, 103


def make_instances(lengths, seq_length=32, max_predictions=5, seed=0, vocab=1000):
    """SPEC §1-shaped instances: [CLS] A [SEP] B [SEP], zero-padded, with sorted masked positions (not specials)."""
    rng = np.random.default_rng(seed)
    n = len(lengths)
    out = {k: np.zeros((n, seq_length), np.int32) for k in ("input_ids", "input_mask", "segment_ids")}
    out.update(masked_lm_positions=np.zeros((n, max_predictions), np.int32),
               masked_lm_ids=np.zeros((n, max_predictions), np.int32),
               masked_lm_weights=np.zeros((n, max_predictions), np.float32),
               next_sentence_labels=rng.integers(0, 2, n).astype(np.int32))
    for i, length in enumerate(lengths):
        a = int(rng.integers(1, length - 3)) if length > 4 else 1
        tokens = [CLS, *rng.integers(1000, 1000 + vocab, a), SEP, *rng.integers(1000, 1000 + vocab, length - a - 3),
                  SEP]
        out["input_ids"][i, :length] = tokens
        out["input_mask"][i, :length] = 1
        out["segment_ids"][i, a + 2:length] = 1
        candidates = [p for p in range(length) if tokens[p] not in (CLS, SEP)]
        count = min(max_predictions, max(1, round(length * 0.15)), len(candidates))
        chosen = np.sort(rng.choice(candidates, count, replace=False))
        out["masked_lm_positions"][i, :count] = chosen
        out["masked_lm_ids"][i, :count] = [tokens[p] for p in chosen]
        out["masked_lm_weights"][i, :count] = 1.0
        out["input_ids"][i, chosen] = MASK
    return out


def test_rows_by_hand():
    batch = make_instances([30, 10, 12, 20, 6, 32])
    packed = packing.pack(batch, rows=4, row_length=32, max_instances=3, max_predictions=9)
    # Longest first, each into the first row with room: 32 | 30 | 20+12 | 10+6.
    expected_rows = [[5], [0], [3, 2], [1, 4]]
    lengths = batch["input_mask"].sum(1)
    for r, members in enumerate(expected_rows):
        start = 0
        for slot, i in enumerate(members):
            n = lengths[i]
            span = slice(start, start + n)
            np.testing.assert_array_equal(packed["input_ids"][r, span], batch["input_ids"][i, :n])
            np.testing.assert_array_equal(packed["segment_ids"][r, span], batch["segment_ids"][i, :n])
            np.testing.assert_array_equal(packed["position_ids"][r, span], np.arange(n))
            assert (packed["instance_ids"][r, span] == slot + 1).all()
            assert packed["cls_positions"][r, slot] == start and packed["input_ids"][r, start] == CLS
            assert packed["next_sentence_labels"][r, slot] == batch["next_sentence_labels"][i]
            assert packed["nsp_weights"][r, slot] == 1.0
            start += n
        assert (packed["instance_ids"][r, start:] == 0).all() and (packed["input_mask"][r, start:] == 0).all()
        assert packed["nsp_weights"][r, len(members):].sum() == 0
    # Every masked position points at a [MASK]ed (or kept/replaced) token of the right instance, its label intact.
    real = packed["masked_lm_weights"] > 0
    assert real.sum() == (batch["masked_lm_weights"] > 0).sum()
    for r in range(4):
        positions = packed["masked_lm_positions"][r][real[r]]
        slots = packed["instance_ids"][r, positions] - 1
        for p, slot, label in zip(positions, slots, packed["masked_lm_ids"][r][real[r]]):
            i = expected_rows[r][slot]
            offset = packed["cls_positions"][r, slot]
            k = list(batch["masked_lm_positions"][i]).index(p - offset)
            assert batch["masked_lm_ids"][i, k] == label and packed["input_ids"][r, p] == MASK
    # Three rows cannot hold them; rows_needed finds four.
    assert packing.pack(batch, rows=3, row_length=32, max_instances=3, max_predictions=9) is None
    assert packing.rows_needed(batch, row_length=32, max_instances=3, max_predictions=9) == 4


TINY = BertConfig(vocab_size=2100, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                  max_position_embeddings=64, hidden_dropout_rate=0.0, attention_dropout_rate=0.0)


def losses_and_grads(batch):
    objective = pretrain.PretrainingObjective(TINY)
    params = jax.device_get(nn.meta.unbox(objective.init_params(jax.random.PRNGKey(0))))
    batch = {k: jnp.asarray(v) for k, v in batch.items()}

    def loss(p):
        value, metrics = objective.loss(p, batch, jax.random.PRNGKey(1), objective.normalizers(batch), train=False)
        return value, metrics

    (value, metrics), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return float(value), jax.device_get(metrics), jax.device_get(grads)


def test_packed_losses_and_gradients_equal_unpacked():
    rng = np.random.default_rng(1)
    lengths = np.concatenate([rng.integers(5, 15, 10), rng.integers(15, 33, 6)])
    batch = make_instances(lengths, vocab=1000)
    packed = packing.pack(batch, rows=8, row_length=48, max_instances=4, max_predictions=12)
    assert packed is not None and (packed["nsp_weights"].sum(1) > 1).any()  # really several per row
    ours, our_metrics, our_grads = losses_and_grads(packed)
    theirs, their_metrics, their_grads = losses_and_grads(batch)
    assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6)
    for name in ("mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy"):
        assert float(our_metrics[name]) == pytest.approx(float(their_metrics[name]), rel=1e-5, abs=1e-6), name
    flat_ours = jax.tree_util.tree_leaves_with_path(our_grads)
    flat_theirs = dict(jax.tree_util.tree_leaves_with_path(their_grads))
    for path, g in flat_ours:
        np.testing.assert_allclose(g, flat_theirs[path], rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_no_attention_crosses_an_instance_boundary():
    batch = make_instances([12, 9, 20, 7], vocab=1000, seed=3)
    packed = packing.pack(batch, rows=1, row_length=64, max_instances=4, max_predictions=20)
    model = BertForPreTraining(TINY)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]

    def outputs(row):
        out = model.apply({"params": params}, row["input_ids"], row["input_mask"], row["segment_ids"],
                          row["masked_lm_positions"], instance_ids=row["instance_ids"],
                          position_ids=row["position_ids"], cls_positions=row["cls_positions"])
        return np.asarray(out["sequence_output"][0]), np.asarray(out["nsp_logits"][0])

    sequence, nsp = outputs(packed)
    changed = {k: v.copy() for k, v in packed.items()}
    victim = changed["instance_ids"][0] == 2
    changed["input_ids"][0, victim] = (changed["input_ids"][0, victim] + 7) % 2000 + 100
    sequence2, nsp2 = outputs(changed)
    others = (packed["instance_ids"][0] > 0) & ~victim
    np.testing.assert_allclose(sequence2[others], sequence[others], rtol=0, atol=1e-6)
    assert np.abs(sequence2[victim] - sequence[victim]).max() > 1e-3
    np.testing.assert_allclose(nsp2[[0, 2, 3]], nsp[[0, 2, 3]], rtol=0, atol=1e-6)
    assert np.abs(nsp2[1] - nsp[1]).max() > 1e-6
    # Each instance alone, unpacked, gives the same outputs as inside the row.
    for slot in range(4):
        start = int(packed["cls_positions"][0, slot])
        n = int((packed["instance_ids"][0] == slot + 1).sum())
        alone = model.apply({"params": params}, packed["input_ids"][:, start:start + n], None,
                            packed["segment_ids"][:, start:start + n])
        np.testing.assert_allclose(np.asarray(alone["sequence_output"][0]), sequence[start:start + n],
                                   rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# A packed pretraining run on real text: exact resume, 8 devices = 1
# ----------------------------------------------------------------------------------------------------------------------


def text_config(corpus, **train):
    c = load_config("configs/pretrain.py:base,tiny")
    c.model.dtype = "float32"
    c.data.input_files = str(corpus)
    c.data.vocab_file = VOCAB
    c.data.short_seq_prob = 0.9  # mostly short instances: something to pack
    c.data.packing = True
    c.phases = (dict(fraction=1.0, seq_length=64, batch_size=16, max_predictions=10),)
    c.optimizer.learning_rate = 1e-3
    c.train.update(dict(num_steps=10, eval_every=0, checkpoint_every=5, tensorboard=False, async_checkpoints=False,
                        **train))
    return c


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Real Wikipedia text (the start of wiki_00), one sentence per line as the original generator expects, so
    that its chunks end at sentence boundaries and short_seq_prob gives short instances."""
    path = tmp_path_factory.mktemp("corpus") / "wiki.txt"
    with open(WIKI, encoding="utf-8") as f:
        lines = [next(f) for _ in range(300)]
    sentences = [part.strip() + ("." if not part.rstrip().endswith(".") else "")
                 for line in lines for part in line.split(". ") if part.strip()]
    path.write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def packed_run(corpus, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("packed"))
    pretrain.train_and_evaluate(text_config(corpus), workdir)
    return workdir, logged(workdir)


def test_a_packed_run_carries_its_batches_in_fewer_rows_and_resumes_exactly(corpus, packed_run, tmp_path):
    _, straight = packed_run
    assert sorted(straight) == list(range(1, 11)) and all(np.isfinite(list(straight.values())))

    def sigterm_at_4(step, state):
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    workdir = str(tmp_path / "resumed")
    with pytest.raises(Preempted):
        pretrain.train_and_evaluate(text_config(corpus), workdir, hooks=[sigterm_at_4])
    pretrain.train_and_evaluate(text_config(corpus), workdir)
    resumed = logged(workdir)
    for step in range(1, 11):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-6, abs=1e-6), step


def test_packed_batches_hold_the_phase_batch_in_fewer_rows(corpus):
    config = pretrain.validate_config(text_config(corpus))
    from bert_jax import sharding
    from bert_jax.tokenizer import load_tokenizer

    mesh = sharding.make_mesh({"data": -1})
    data = pretrain.make_input(config, config.phases[0], tokenizer=load_tokenizer(VOCAB), files=[str(corpus)],
                               mesh=mesh, seed=1, train=True)
    batches = [next(data) for _ in range(4)]
    for batch in batches:
        assert batch["nsp_weights"].sum() == 16  # the phase's 16 instances, every step
        assert batch["input_ids"].shape[0] <= 12  # in fewer rows
    assert data.get_state()["packing_rows"] == batches[0]["input_ids"].shape[0]


EIGHT_DEVICES = """
import sys
import jax
sys.path.insert(0, sys.argv[3])
from bert_jax import pretrain
from test_packing import text_config
assert jax.device_count() == 8
config = text_config(sys.argv[1], micro_batches=1)
config.mesh.update(dict(data=4, fsdp=2, tensor=1))
pretrain.train_and_evaluate(config, sys.argv[2])
"""


def test_a_packed_run_on_eight_devices_equals_one(corpus, packed_run, tmp_path):
    _, one = packed_run
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    workdir = str(tmp_path / "eight")
    run = subprocess.run([sys.executable, "-c", EIGHT_DEVICES, str(corpus), workdir, os.path.dirname(__file__)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    eight = logged(workdir)
    for step in range(1, 11):
        assert eight[step] == pytest.approx(one[step], rel=1e-5, abs=1e-5), step


@pytest.mark.parametrize("change,message", [
    (dict(packing_row_length=32), r"config.data.packing_row_length=32: shorter than config.phases\[0\].seq_length=64"),
    (dict(packing_rows=32), r"config.data.packing_rows=32: more rows than config.phases\[0\].batch_size=16"),
    (dict(packing=False, packing_rows=4), r"config.data.packing_rows=4: only with config.data.packing=True"),
    (dict(source="synthetic"), r"config.data.packing: data.source='synthetic' makes every instance full-length"),
    (dict(packing_row_length=128), r"config.data.packing_row_length=128: beyond config.model.max_position_embed"),
])
def test_bad_packing_configs_name_the_key(corpus, change, message):
    config = text_config(corpus)
    config.model.vocab_size = 30522
    config.data.update(change)
    with pytest.raises(ValueError, match=message):
        pretrain.validate_config(config)


def test_instances_without_the_features_packing_needs_are_an_error_naming_the_key():
    batch = make_instances([10, 12])
    del batch["masked_lm_weights"]
    with pytest.raises(ValueError, match=r"config.data.packing: the instances have no masked_lm_weights"):
        packing.check_instances(batch, 32)
    with pytest.raises(ValueError, match=r"config.data.packing_row_length=16: shorter than the instances"):
        packing.check_instances(make_instances([10, 12]), 16)
