"""Instance generation of bert_jax.data.instances against SPEC.md §1.

References: a literal transcription of Google's create_pretraining_data.py written here (on token
strings, with its own random.Random), closed-form counts, and statistics on the shared Wikipedia dump.
"""

import collections
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import first_documents, wiki_corpus

from bert_jax.data import text_reader
from bert_jax.data.instances import (
    GenerationStats,
    InstanceConfig,
    TrainingInstance,
    VocabInfo,
    create_instances_from_document,
    create_masked_lm_predictions,
    create_training_instances,
    truncate_seq_pair,
)
from bert_jax.data.masking import mask_batch_tf, num_to_predict_table
from bert_jax.data.offline_writer import prepare_pretraining_data, unit_seed
from bert_jax.data.tfrecord import crc32c, feature_spec, read_metadata, serialize_instance, write_tfrecords
from bert_jax.tokenizer import load_tokenizer

WIKI = "../shared/data/wikipedia"
VOCAB = "../shared/data/vocab/bert-base-uncased-vocab.txt"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(VOCAB)


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return VocabInfo.from_tokenizer(tokenizer)


@pytest.fixture(scope="module")
def wiki_docs(tokenizer):
    """The first 250 documents of wiki_05, tokenized by the Python tokenizer (sentences without tokens
    dropped, as the original reader does)."""
    docs = []
    for doc in text_reader.iter_file_documents(os.path.join(WIKI, "wiki_05")):
        sentences = [tokenizer.token_ids(s) for s in doc.sentences]
        sentences = [s for s in sentences if s]
        if sentences:
            docs.append(sentences)
        if len(docs) == 250:
            break
    return docs


# ----------------------------------------------------------------------------------------------------
# A literal reference: the original script's functions, on token strings
# ----------------------------------------------------------------------------------------------------


def ref_truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng):
    while True:
        total_length = len(tokens_a) + len(tokens_b)
        if total_length <= max_num_tokens:
            break
        trunc_tokens = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        if rng.random() < 0.5:
            del trunc_tokens[0]
        else:
            trunc_tokens.pop()


def ref_masked_lm(tokens, masked_lm_prob, max_predictions_per_seq, vocab_words, rng, whole_word):
    cand_indexes = []
    for i, token in enumerate(tokens):
        if token == "[CLS]" or token == "[SEP]":
            continue
        # bert_jax's one deviation: a '##' piece right after [CLS]/[SEP] starts its own word.
        if whole_word and len(cand_indexes) >= 1 and token.startswith("##") and tokens[i - 1] not in ("[CLS]", "[SEP]"):
            cand_indexes[-1].append(i)
        else:
            cand_indexes.append([i])
    rng.shuffle(cand_indexes)
    output_tokens = list(tokens)
    num_to_predict = min(max_predictions_per_seq, max(1, int(round(len(tokens) * masked_lm_prob))))
    masked_lms = []
    covered_indexes = set()
    for index_set in cand_indexes:
        if len(masked_lms) >= num_to_predict:
            break
        if len(masked_lms) + len(index_set) > num_to_predict:
            continue
        if any(index in covered_indexes for index in index_set):
            continue
        for index in index_set:
            covered_indexes.add(index)
            if rng.random() < 0.8:
                masked_token = "[MASK]"
            else:
                if rng.random() < 0.5:
                    masked_token = tokens[index]
                else:
                    masked_token = vocab_words[rng.randint(0, len(vocab_words) - 1)]
            output_tokens[index] = masked_token
            masked_lms.append((index, tokens[index]))
    masked_lms.sort(key=lambda x: x[0])
    return output_tokens, [p for p, _ in masked_lms], [label for _, label in masked_lms]


def ref_instances_from_document(all_documents, document_index, max_seq_length, short_seq_prob, masked_lm_prob,
                                max_predictions_per_seq, vocab_words, rng, whole_word):
    document = all_documents[document_index]
    max_num_tokens = max_seq_length - 3
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)
    instances = []
    current_chunk = []
    current_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            if current_chunk:
                a_end = 1
                if len(current_chunk) >= 2:
                    a_end = rng.randint(1, len(current_chunk) - 1)
                tokens_a = []
                for j in range(a_end):
                    tokens_a.extend(current_chunk[j])
                tokens_b = []
                if len(current_chunk) == 1 or rng.random() < 0.5:
                    is_random_next = True
                    target_b_length = target_seq_length - len(tokens_a)
                    for _ in range(10):
                        random_document_index = rng.randint(0, len(all_documents) - 1)
                        if random_document_index != document_index:
                            break
                    random_document = all_documents[random_document_index]
                    random_start = rng.randint(0, len(random_document) - 1)
                    for j in range(random_start, len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    num_unused_segments = len(current_chunk) - a_end
                    i -= num_unused_segments
                else:
                    is_random_next = False
                    for j in range(a_end, len(current_chunk)):
                        tokens_b.extend(current_chunk[j])
                ref_truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
                tokens = ["[CLS]"] + tokens_a + ["[SEP]"] + tokens_b + ["[SEP]"]
                segment_ids = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
                tokens, positions, labels = ref_masked_lm(tokens, masked_lm_prob, max_predictions_per_seq,
                                                          vocab_words, rng, whole_word)
                instances.append((tokens, segment_ids, is_random_next, positions, labels))
            current_chunk = []
            current_length = 0
        i += 1
    return instances


def ref_training_instances(all_documents, dupe_factor, rng, vocab_words, whole_word, max_seq_length=128):
    all_documents = [x for x in all_documents if x]
    rng.shuffle(all_documents)
    instances = []
    for _ in range(dupe_factor):
        for document_index in range(len(all_documents)):
            instances.extend(ref_instances_from_document(all_documents, document_index, max_seq_length, 0.1, 0.15,
                                                         20, vocab_words, rng, whole_word))
    rng.shuffle(instances)
    return instances


@pytest.mark.parametrize("whole_word", [False, True])
def test_instances_equal_the_original_algorithm(tokenizer, vocab, wiki_docs, whole_word):
    """Same documents, same random.Random seed: the same instances, token for token."""
    docs = wiki_docs[:120]
    as_strings = [[tokenizer.convert_ids_to_tokens(s) for s in d] for d in docs]
    expected = ref_training_instances(as_strings, 2, random.Random(7), tokenizer.inv_vocab, whole_word)
    config = InstanceConfig(whole_word_masking=whole_word)
    got = create_training_instances(docs, config, vocab, random.Random(7), dupe_factor=2)
    assert len(got) == len(expected) > 200
    for instance, (tokens, segment_ids, is_random_next, positions, labels) in zip(got, expected):
        assert tokenizer.convert_ids_to_tokens(instance.tokens) == tokens
        assert instance.segment_ids == segment_ids
        assert instance.is_random_next == is_random_next
        assert instance.masked_lm_positions == positions
        assert tokenizer.convert_ids_to_tokens(instance.masked_lm_labels) == labels


# ----------------------------------------------------------------------------------------------------
# truncate_seq_pair
# ----------------------------------------------------------------------------------------------------


def expected_truncated_lengths(len_a, len_b, max_num_tokens):
    """Closed form of 'drop from the longer side, B on ties': the longer side alone shrinks until the
    two are level, then they shrink in turn (A keeps the odd token)."""
    excess = len_a + len_b - max_num_tokens
    if excess <= 0:
        return len_a, len_b
    long_, short = max(len_a, len_b), min(len_a, len_b)
    if long_ - excess >= short:
        kept_long = long_ - excess
        return (kept_long, short) if len_a > len_b else (short, kept_long)
    return (max_num_tokens + 1) // 2, max_num_tokens // 2


def test_truncate_seq_pair_follows_the_rule():
    rng = random.Random(0)
    fronts = backs = 0
    for _ in range(3000):
        len_a, len_b, budget = rng.randint(1, 90), rng.randint(1, 90), rng.randint(2, 125)
        a, b = list(range(len_a)), list(range(1000, 1000 + len_b))
        removed = truncate_seq_pair(a, b, budget, rng)
        assert (len(a), len(b)) == expected_truncated_lengths(len_a, len_b, budget)
        assert removed == len_a + len_b - len(a) - len(b)
        # Only the ends are cut: what is left is a contiguous run of the original.
        for kept, first in ((a, 0), (b, 1000)):
            if kept:
                assert kept == list(range(kept[0], kept[0] + len(kept)))
        fronts += (a[:1] != [0] if len(a) < len_a else 0) + (b[:1] != [1000] if len(b) < len_b else 0)
        backs += (a[-1:] != [len_a - 1] if len(a) < len_a else 0) + (b[-1:] != [999 + len_b] if len(b) < len_b else 0)
    assert abs(fronts - backs) < 0.1 * (fronts + backs)  # front and back equally often


# ----------------------------------------------------------------------------------------------------
# Pairing: structure of the pairs on documents of unique token ids
# ----------------------------------------------------------------------------------------------------


def unique_id_documents(num_docs=40, seed=0):
    """Documents whose every token id is unique, so each token says where it came from."""
    rng = random.Random(seed)
    next_id, docs, origin = 1000, [], {}
    for d in range(num_docs):
        doc = []
        for s in range(rng.choice([1, 1, 2, 3, 5, 8, 12])):
            sentence = list(range(next_id, next_id + rng.randint(1, 40)))
            for position, token in enumerate(sentence):
                origin[token] = (d, s, position)
            next_id += len(sentence)
            doc.append(sentence)
        docs.append(doc)
    return docs, origin


def test_pairs_come_from_the_right_places(vocab):
    docs, origin = unique_id_documents()
    config = InstanceConfig(max_seq_length=64)
    stats = GenerationStats()
    rng = random.Random(3)
    labels = collections.Counter()
    for index in range(len(docs)):
        for instance in create_instances_from_document(docs, index, config, vocab, rng, mask=False, stats=stats):
            tokens = instance.tokens
            first_sep = tokens.index(vocab.sep_id)
            a, b = tokens[1:first_sep], tokens[first_sep + 1 : -1]
            assert tokens[0] == vocab.cls_id and tokens[-1] == vocab.sep_id and a and b
            assert len(tokens) <= config.max_seq_length
            # Segment ids: 0 through the first [SEP], 1 after it.
            assert instance.segment_ids == [0] * (first_sep + 1) + [1] * (len(tokens) - first_sep - 1)
            a_docs = {origin[t][0] for t in a}
            b_docs = {origin[t][0] for t in b}
            assert a_docs == {index}
            labels[instance.is_random_next] += 1
            if instance.is_random_next:
                assert len(b_docs) == 1 and b_docs != {index}  # B from one other document
            else:
                assert b_docs == {index}
                # B continues A: it starts after A ends, with only truncated tokens between them.
                assert max(a) < min(b)
                a_sentences = {origin[t][1] for t in a}
                b_sentences = {origin[t][1] for t in b}
                assert max(a_sentences) < min(b_sentences)
                assert min(b_sentences) - max(a_sentences) == 1 or b[0] != docs[index][min(b_sentences)][0]
    assert stats.instances == sum(labels.values()) and stats.random_next == labels[True]
    assert stats.random_next_from_same_document == 0


def test_unused_sentences_are_put_back(vocab):
    """Every sentence of a document lands in some A segment (the chunk's unused sentences go back),
    when nothing is truncated away."""
    docs, origin = unique_id_documents(num_docs=30, seed=5)
    config = InstanceConfig(max_seq_length=512, short_seq_prob=0.0)
    rng = random.Random(1)
    for index in range(len(docs)):
        seen = set()
        for instance in create_instances_from_document(docs, index, config, vocab, rng, mask=False):
            first_sep = instance.tokens.index(vocab.sep_id)
            seen.update(origin[t][1] for t in instance.tokens[1:first_sep])
            if not instance.is_random_next:
                seen.update(origin[t][1] for t in instance.tokens[first_sep + 1 : -1])
        assert seen == set(range(len(docs[index])))


# ----------------------------------------------------------------------------------------------------
# Masking (the original, in Python)
# ----------------------------------------------------------------------------------------------------


def _mask_statistics(instances, originals, vocab):
    kinds = collections.Counter()
    for instance, original in zip(instances, originals):
        for position, label in zip(instance.masked_lm_positions, instance.masked_lm_labels):
            assert original[position] == label
            out = instance.tokens[position]
            kinds["mask" if out == vocab.mask_id else "same" if out == label else "random"] += 1
    total = sum(kinds.values())
    return {k: v / total for k, v in kinds.items()}, total


def test_masking_counts_and_80_10_10(vocab, wiki_docs):
    config = InstanceConfig()
    unmasked = create_training_instances(wiki_docs, config, vocab, random.Random(11), dupe_factor=3, mask=False)
    rng = random.Random(12)
    masked = []
    for instance in unmasked:
        tokens, positions, labels = create_masked_lm_predictions(instance.tokens, config, vocab, rng)
        masked.append(TrainingInstance(tokens, instance.segment_ids, instance.is_random_next, positions, labels))
        special = {i for i, t in enumerate(instance.tokens) if t in (vocab.cls_id, vocab.sep_id)}
        # The count formula of SPEC §1 (length counts [CLS]/[SEP]); special tokens never masked.
        assert len(positions) == config.num_to_predict(len(instance.tokens))
        assert positions == sorted(set(positions)) and not special & set(positions)
        # Unmasked positions keep their token.
        assert all(tokens[i] == instance.tokens[i] for i in range(len(tokens)) if i not in positions)
    shares, total = _mask_statistics(masked, [i.tokens for i in unmasked], vocab)
    assert total > 20_000
    assert abs(shares["mask"] - 0.8) < 0.015
    assert abs(shares["same"] - 0.1) < 0.015
    assert abs(shares["random"] - 0.1) < 0.015


def test_num_to_predict_formula():
    config = InstanceConfig()
    assert [config.num_to_predict(n) for n in (0, 3, 6, 10, 30, 100, 128, 200)] == [1, 1, 1, 2, 4, 15, 19, 20]
    assert num_to_predict_table(config).tolist() == [config.num_to_predict(n) for n in range(129)]


def _words(tokens, vocab):
    """Word spans (start, end) over the candidate positions, '##' pieces joined to their word."""
    words = []
    for i, t in enumerate(tokens):
        if t in (vocab.cls_id, vocab.sep_id):
            continue
        if words and words[-1][1] == i and vocab.is_continuation[t]:
            words[-1] = (words[-1][0], i + 1)
        else:
            words.append((i, i + 1))
    return words


def test_whole_word_masking_masks_whole_words(vocab, wiki_docs):
    config = InstanceConfig(whole_word_masking=True)
    unmasked = create_training_instances(wiki_docs, config, vocab, random.Random(2), mask=False)
    rng = random.Random(3)
    multi_piece_words_masked = 0
    for instance in unmasked:
        _, positions, _ = create_masked_lm_predictions(instance.tokens, config, vocab, rng)
        chosen = set(positions)
        budget = config.num_to_predict(len(instance.tokens))
        assert len(chosen) <= budget
        for start, end in _words(instance.tokens, vocab):
            pieces = set(range(start, end))
            assert pieces <= chosen or not pieces & chosen  # all of a word or none of it
            multi_piece_words_masked += end - start > 1 and pieces <= chosen
        # Greedy: no unchosen word would still fit in the budget... unless it was skipped before the
        # budget filled up; at least, a one-piece word always fits when the count is short.
        if len(chosen) < budget:
            singles = [s for s, e in _words(instance.tokens, vocab) if e - s == 1 and s not in chosen]
            assert not singles
    assert multi_piece_words_masked > 100


def test_whole_word_budget_skips_words_that_do_not_fit(vocab):
    """A word longer than the remaining budget is skipped, not cut (here: every word has 3 pieces)."""
    word = [2000, vocab.is_continuation.nonzero()[0][5], vocab.is_continuation.nonzero()[0][9]]
    tokens = [vocab.cls_id] + word * 4 + [vocab.sep_id] + word * 2 + [vocab.sep_id]  # 21 tokens -> 3 to mask
    config = InstanceConfig(whole_word_masking=True, max_predictions_per_seq=2)  # budget 2 < 3 pieces
    for seed in range(20):
        out, positions, labels = create_masked_lm_predictions(tokens, config, vocab, random.Random(seed))
        assert positions == [] and out == tokens
    config = InstanceConfig(whole_word_masking=True)
    for seed in range(20):
        _, positions, _ = create_masked_lm_predictions(tokens, config, vocab, random.Random(seed))
        assert len(positions) == 3 and positions[2] - positions[0] == 2  # exactly one whole word


# ----------------------------------------------------------------------------------------------------
# Instances on real text: NSP share, lengths
# ----------------------------------------------------------------------------------------------------


def test_nsp_share_and_lengths_on_wikipedia(vocab, wiki_docs):
    config = InstanceConfig()
    stats = GenerationStats()
    instances = create_training_instances(wiki_docs, config, vocab, random.Random(5), dupe_factor=4, stats=stats)
    share = np.mean([i.is_random_next for i in instances])
    # 50% by the coin, plus the one-sentence chunks that must take a random B: a bit above one half.
    assert 0.5 < share < 0.62
    lengths = np.array([len(i.tokens) for i in instances])
    assert lengths.max() <= config.max_seq_length
    # Most sequences fill the target; about short_seq_prob of the documents get a shorter target.
    assert np.mean(lengths >= 100) > 0.5
    assert stats.instances == len(instances) and stats.random_next == sum(i.is_random_next for i in instances)


# ----------------------------------------------------------------------------------------------------
# Features and TFRecords
# ----------------------------------------------------------------------------------------------------


def test_serialized_instance_parses_back_with_tensorflow(vocab, wiki_docs):
    config = InstanceConfig(max_seq_length=64, max_predictions_per_seq=10)
    instances = create_training_instances(wiki_docs[:20], config, vocab, random.Random(1))
    spec = feature_spec(config)
    for instance in instances[:50]:
        parsed = tf.io.parse_single_example(serialize_instance(instance, config), spec)
        n, m = len(instance.tokens), len(instance.masked_lm_positions)
        assert parsed["input_ids"].numpy().tolist() == instance.tokens + [0] * (64 - n)
        assert parsed["input_mask"].numpy().tolist() == [1] * n + [0] * (64 - n)
        assert parsed["segment_ids"].numpy().tolist() == instance.segment_ids + [0] * (64 - n)
        assert parsed["masked_lm_positions"].numpy().tolist() == instance.masked_lm_positions + [0] * (10 - m)
        assert parsed["masked_lm_ids"].numpy().tolist() == instance.masked_lm_labels + [0] * (10 - m)
        assert parsed["masked_lm_weights"].numpy().tolist() == [1.0] * m + [0.0] * (10 - m)
        assert parsed["next_sentence_labels"].numpy().tolist() == [int(instance.is_random_next)]
    # Large ids (beyond the precomputed varint table) encode too.
    big = TrainingInstance([2, 5_000_000, 3, 200_000, 3], [0, 0, 0, 1, 1], False, [1], [5_000_000])
    parsed = tf.io.parse_single_example(serialize_instance(big, config), spec)
    assert parsed["input_ids"].numpy()[:5].tolist() == big.tokens
    assert parsed["masked_lm_ids"].numpy()[:1].tolist() == [5_000_000]


# ----------------------------------------------------------------------------------------------------
# Dynamic masking as a TensorFlow op: eager and inside tf.data
# ----------------------------------------------------------------------------------------------------


def _unmasked_batch(instances, seq):
    ids = np.zeros([len(instances), seq], np.int32)
    lengths = np.zeros([len(instances)], np.int32)
    for i, instance in enumerate(instances):
        ids[i, : len(instance.tokens)] = instance.tokens
        lengths[i] = len(instance.tokens)
    return ids, lengths


@pytest.mark.parametrize("whole_word", [False, True])
def test_mask_op_eager_equals_tf_data_and_follows_the_rules(vocab, wiki_docs, whole_word):
    config = InstanceConfig(whole_word_masking=whole_word)
    instances = create_training_instances(wiki_docs, config, vocab, random.Random(4), mask=False)
    ids, lengths = _unmasked_batch(instances, config.max_seq_length)
    keys = np.arange(len(ids), dtype=np.int64) * 7 + 3
    eager = mask_batch_tf(ids, lengths, keys, config=config, vocab=vocab, seed=99)
    eager = {k: v.numpy() for k, v in eager.items()}

    ds = tf.data.Dataset.from_tensor_slices({"ids": ids, "lengths": lengths, "keys": keys}).batch(37)
    ds = ds.map(lambda b: mask_batch_tf(b["ids"], b["lengths"], b["keys"], config=config, vocab=vocab, seed=99))
    batches = list(ds.as_numpy_iterator())
    in_data = {k: np.concatenate([b[k] for b in batches]) for k in eager}
    for name in eager:  # the same masks whatever the batching: they depend on (seed, key) only
        np.testing.assert_array_equal(eager[name], in_data[name])

    weights, positions = eager["masked_lm_weights"], eager["masked_lm_positions"]
    real = weights > 0
    counts = real.sum(1)
    rows = np.arange(len(ids))[:, None]
    # Weights 1 then 0; positions increasing, within the sequence, 0 in the padding.
    assert (real == (np.arange(config.max_predictions_per_seq)[None, :] < counts[:, None])).all()
    assert (np.diff(positions, axis=1)[real[:, 1:]] > 0).all()
    assert (positions[real] < np.broadcast_to(lengths[:, None], positions.shape)[real]).all()
    assert (positions[~real] == 0).all() and (eager["masked_lm_ids"][~real] == 0).all()
    # Labels are the original ids; nothing special is masked; nothing else changes.
    np.testing.assert_array_equal(eager["masked_lm_ids"][real], np.broadcast_to(ids[rows, positions], real.shape)[real])
    assert not np.isin(ids[rows, positions][real], [vocab.cls_id, vocab.sep_id, vocab.pad_id]).any()
    chosen = np.zeros_like(ids, bool)
    chosen[np.broadcast_to(rows, positions.shape)[real], positions[real]] = True
    np.testing.assert_array_equal(eager["input_ids"][~chosen], ids[~chosen])
    budgets = num_to_predict_table(config)[lengths]
    if whole_word:
        assert (counts <= budgets).all()
        for row, instance in enumerate(instances):
            picked = set(positions[row][real[row]].tolist())
            words = _words(instance.tokens, vocab)
            for start, end in words:
                pieces = set(range(start, end))
                assert pieces <= picked or not pieces & picked
            if len(picked) < budgets[row]:  # a greedy pass leaves no one-piece word unchosen when short
                assert not [s for s, e in words if e - s == 1 and s not in picked]
    else:
        np.testing.assert_array_equal(counts, budgets)
    out = eager["input_ids"][chosen]
    original = ids[chosen]
    total = len(out)
    assert total > 10_000
    assert abs(np.mean(out == vocab.mask_id) - 0.8) < 0.015
    assert abs(np.mean((out == original) & (out != vocab.mask_id)) - 0.1) < 0.015
    assert abs(np.mean((out != original) & (out != vocab.mask_id)) - 0.1) < 0.015


def test_mask_op_matches_python_masking_in_distribution(vocab, wiki_docs):
    """Where masks land (relative position in the sequence) has the same distribution in both."""
    config = InstanceConfig()
    instances = create_training_instances(wiki_docs, config, vocab, random.Random(8), dupe_factor=2, mask=False)
    ids, lengths = _unmasked_batch(instances, config.max_seq_length)
    out = mask_batch_tf(ids, lengths, np.arange(len(ids)), config=config, vocab=vocab, seed=5)
    tf_relative = [p / lengths[r] for r, (pos, w) in enumerate(zip(out["masked_lm_positions"].numpy(),
                                                                   out["masked_lm_weights"].numpy()))
                   for p in pos[w > 0]]
    rng = random.Random(9)
    py_relative = [p / len(i.tokens) for i in instances
                   for p in create_masked_lm_predictions(i.tokens, config, vocab, rng)[1]]
    assert len(tf_relative) == len(py_relative)  # the same counts, sequence by sequence
    hist_tf = np.histogram(tf_relative, bins=10, range=(0, 1))[0] / len(tf_relative)
    hist_py = np.histogram(py_relative, bins=10, range=(0, 1))[0] / len(py_relative)
    assert np.abs(hist_tf - hist_py).max() < 0.01


def test_mask_op_whole_word_budget_skip(vocab):
    cont = vocab.is_continuation.nonzero()[0]
    word = [2000, cont[5], cont[9]]
    tokens = [vocab.cls_id] + word * 4 + [vocab.sep_id] + word * 2 + [vocab.sep_id]
    ids, lengths = _unmasked_batch([TrainingInstance(tokens, [], False)] * 8, 32)
    config = InstanceConfig(max_seq_length=32, whole_word_masking=True, max_predictions_per_seq=2)
    out = mask_batch_tf(ids, lengths, np.arange(8), config=config, vocab=vocab, seed=1)
    assert out["masked_lm_weights"].numpy().sum() == 0
    config = InstanceConfig(max_seq_length=32, whole_word_masking=True)
    out = mask_batch_tf(ids, lengths, np.arange(8), config=config, vocab=vocab, seed=1)
    positions = out["masked_lm_positions"].numpy()[:, :3]
    assert (out["masked_lm_weights"].numpy().sum(1) == 3).all()
    assert (positions[:, 2] - positions[:, 0] == 2).all() and (ids[np.arange(8), positions[:, 0]] == 2000).all()


# ----------------------------------------------------------------------------------------------------
# The offline writer and its command
# ----------------------------------------------------------------------------------------------------


def _read_records(directory):
    records = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".tfrecord"):
            records.extend(r.numpy() for r in tf.data.TFRecordDataset(os.path.join(directory, name)))
    return records


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    return wiki_corpus(tmp_path_factory.mktemp("corpus"), ("wiki_06", "wiki_07"), 300)


def test_writer_summary_and_records(tmp_path, small_corpus, tokenizer):
    config = InstanceConfig()
    summary = prepare_pretraining_data(str(small_corpus), VOCAB, str(tmp_path / "a"), config, dupe_factor=2, seed=3)
    records = _read_records(tmp_path / "a")
    assert len(records) == summary["instances"] > 500
    # Independent counts of the input: documents with text, and empty ones.
    stats = text_reader.ReadStats()
    docs = list(text_reader.iter_documents(str(small_corpus), stats=stats))
    assert summary["documents"] == len(docs)
    assert summary["skipped"] == {"empty documents": stats.skipped["empty documents"]}
    assert summary["sentences"] == sum(len([s for s in d.sentences if tokenizer.token_ids(s)]) for d in docs)
    metadata = read_metadata(str(tmp_path / "a"))
    assert metadata["config"]["max_seq_length"] == 128 and metadata["summary"]["instances"] == summary["instances"]
    # Reproducible for a seed; another seed gives other instances.
    prepare_pretraining_data(str(small_corpus), VOCAB, str(tmp_path / "b"), config, dupe_factor=2, seed=3)
    assert _read_records(tmp_path / "b") == records
    prepare_pretraining_data(str(small_corpus), VOCAB, str(tmp_path / "c"), config, dupe_factor=2, seed=4)
    assert _read_records(tmp_path / "c") != records
    # The records parse with the original feature spec and satisfy the layout rules.
    parsed = tf.io.parse_example(records, feature_spec(config))
    ids, seg, mask = (parsed[k].numpy() for k in ("input_ids", "segment_ids", "input_mask"))
    for row in range(len(records)):
        n = int(mask[row].sum())
        seps = np.nonzero(ids[row][:n] == tokenizer.sep_id)[0]
        assert ids[row][0] == tokenizer.cls_id and seps[-1] == n - 1
        assert seg[row][:n].tolist() == [0] * (seps[0] + 1) + [1] * (n - seps[0] - 1)
    labels = parsed["next_sentence_labels"].numpy()[:, 0]
    assert 0.5 < labels.mean() < 0.65


def test_tfrecord_framing_is_what_tensorflow_reads(tmp_path):
    """CRC-32C against its published check value; records written without TensorFlow read back with
    tf.data, which verifies both CRCs of every record (a flipped byte is caught)."""
    assert crc32c([b"123456789", b""]).tolist() == [0xE3069283, 0]
    rng = random.Random(0)
    records = [rng.randbytes(rng.choice([0, 1, 127, 128, 300, 5000])) for _ in range(300)]
    path = tmp_path / "r.tfrecord"
    with open(path, "wb") as f:
        write_tfrecords(f, records[:100])
        write_tfrecords(f, records[100:])
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path))] == records
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0x10
    (tmp_path / "bad.tfrecord").write_bytes(bytes(damaged))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(str(tmp_path / "bad.tfrecord")))


def test_writer_one_file_equals_the_original(tmp_path, tokenizer, vocab):
    """A file smaller than one block: exactly the original algorithm run on it with the file's seed."""
    path = first_documents(os.path.join(WIKI, "wiki_08"), tmp_path / "one", 120)
    config = InstanceConfig(max_seq_length=64, max_predictions_per_seq=10)
    prepare_pretraining_data(path, VOCAB, str(tmp_path / "out"), config, dupe_factor=2, seed=21)
    docs = [[tokenizer.token_ids(s) for s in d.sentences] for d in text_reader.iter_file_documents(path)]
    docs = [[s for s in d if s] for d in docs]
    rng = random.Random(unit_seed(21, 0))
    expected = [serialize_instance(i, config)
                for i in create_training_instances(docs, config, vocab, rng, dupe_factor=2)]
    assert _read_records(tmp_path / "out") == expected


def test_writer_bad_input_is_counted(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "empty.txt").write_bytes(b"")
    (corpus / "mixed.txt").write_bytes(
        b"A normal sentence here.\nAnother normal sentence.\n\n"
        b"Only one sentence in this document.\n\n"
        b"word\n\n"
        b"\xff\xfe\xfd not utf-8 at all\nbut this line is fine.\n\n"
        + b" ".join([b"long"] * 400) + b"\nshort tail.\n\n"
        b"\x01\x02\n\n"  # control characters only: no tokens
    )
    config = InstanceConfig(max_seq_length=64, max_predictions_per_seq=10)
    summary = prepare_pretraining_data(str(corpus), VOCAB, str(tmp_path / "out"), config, dupe_factor=1, seed=0)
    gen = summary["generation"]
    assert summary["skipped"] == {"files without any document": 1, "non-UTF-8 lines": 1,
                                  "sentences without tokens": 1, "documents without tokens": 1,
                                  "input files without output": 1}
    assert summary["read"]["skipped_examples"]["non-UTF-8 lines"][0].startswith(f"{corpus / 'mixed.txt'}:8 ")
    assert summary["documents"] == 5
    assert gen["one_sentence_documents"] == 3 and gen["one_token_documents"] == 1 and gen["long_sentences"] == 1
    assert summary["instances"] == len(_read_records(tmp_path / "out")) >= 5


def test_writer_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        prepare_pretraining_data(str(tmp_path / "no_such_dir"), VOCAB, str(tmp_path / "o"))
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="blank.txt"):
        prepare_pretraining_data(str(tmp_path / "blank.txt"), VOCAB, str(tmp_path / "o"))
    bad_vocab = tmp_path / "vocab.txt"
    bad_vocab.write_text("hello\nworld\n[UNK]\n")
    (tmp_path / "t.txt").write_text("Some text.\nMore text.\n")
    with pytest.raises(ValueError, match=r"vocab\.txt.*\[PAD\]"):
        prepare_pretraining_data(str(tmp_path / "t.txt"), str(bad_vocab), str(tmp_path / "o"))


def test_command_with_workers_prints_json_and_matches_one_worker(tmp_path):
    """The CLI end to end, two worker processes: the same shards as one worker, and a JSON summary line."""
    corpus = wiki_corpus(tmp_path / "corpus", ("wiki_10", "wiki_11"), 60)
    in_process = prepare_pretraining_data(str(corpus), VOCAB, str(tmp_path / "one"),
                                                InstanceConfig(), dupe_factor=1, seed=9)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "bert_jax", "prepare-pretraining-data", f"--input={corpus}/wiki_*",
         f"--vocab={VOCAB}", f"--output={tmp_path / 'two'}", "--dupe-factor=1", "--seed=9", "--num-workers=2"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = [l for l in result.stdout.splitlines() if l.startswith("SUMMARY_JSON ")][-1]
    summary = json.loads(line[len("SUMMARY_JSON "):])
    for key in ("documents", "sentences", "instances", "skipped"):
        assert summary[key] == in_process[key]
    assert "empty documents" in result.stdout
    assert _read_records(tmp_path / "two") == _read_records(tmp_path / "one")
    bad = subprocess.run([sys.executable, "-m", "bert_jax", "prepare-pretraining-data", "--input=/no/such/file",
                          f"--vocab={VOCAB}", f"--output={tmp_path / 'x'}"], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "/no/such/file" in bad.stderr
