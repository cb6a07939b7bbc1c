"""Import/export against the independent reference, Hugging Face transformers (PyTorch, CPU):

- random HF models of several sizes, erf and tanh GELU, saved with save_pretrained -> our convert -> the same
  MLM/NSP logits, sequence and pooled outputs (padding and both token types in the batch);
- our export -> transformers' from_pretrained loads every tensor (no missing keys) and computes the same;
- a Google-format TF checkpoint with the original variable names (written here with tf.compat.v1.train.Saver)
  imports and matches the HF model holding the same weights;
- the real pretrained all-MiniLM-L6-v2 (a plain BertModel) imports with fresh MLM/NSP heads and matches;
- bad input fails with errors that name the file, key or tensor.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import REPO, assert_close, random_inputs

from bert_jax import convert, heads
from bert_jax.model import BertConfig, BertForPreTraining, BertModel
from bert_jax.pretrained import load_pretrained, read_manifest


def hf_model(directory, model_class="BertForPreTraining"):
    return getattr(transformers, model_class).from_pretrained(directory, attn_implementation="eager").eval()


def torch_inputs(ids, mask, types):
    return dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))


def jax_inputs(ids, mask, types):
    return dict(input_ids=jnp.asarray(ids, jnp.int32), attention_mask=jnp.asarray(mask, jnp.int32),
                token_type_ids=jnp.asarray(types, jnp.int32))


def assert_pretraining_outputs_match(params, config, hf, length=24):
    ids, mask, types = random_inputs(3, length, config.vocab_size)
    ours = BertForPreTraining(config).apply({"params": params}, **jax_inputs(ids, mask, types))
    with torch.no_grad():
        theirs = hf(**torch_inputs(ids, mask, types))
        base = hf.bert(**torch_inputs(ids, mask, types))
    assert_close(ours["mlm_logits"], theirs.prediction_logits, what="MLM logits (full sequence)")
    assert_close(ours["nsp_logits"], theirs.seq_relationship_logits, what="NSP logits")
    assert_close(ours["sequence_output"], base.last_hidden_state, what="sequence output")
    assert_close(ours["pooled_output"], base.pooler_output, what="pooled output")


def hf_state_dict(directory):
    return {k: v.numpy() for k, v in hf_model(directory).state_dict().items()}


# ------------------------------------------------------------------------------------------------------------------
# Hugging Face directory -> bert_jax
# ------------------------------------------------------------------------------------------------------------------

SIZES = {
    "L2_H128_erf": dict(num_layers=2, hidden_size=128, num_heads=2, hidden_act="gelu"),
    "L2_H128_tanh": dict(num_layers=2, hidden_size=128, num_heads=2, hidden_act="gelu_new"),
    "L4_H256_tanh": dict(num_layers=4, hidden_size=256, num_heads=4, hidden_act="gelu_pytorch_tanh"),
    "L3_H96_A3_I200_erf": dict(num_layers=3, hidden_size=96, num_heads=3, intermediate_size=200, hidden_act="gelu"),
}


@pytest.mark.parametrize("size", list(SIZES))
def test_hf_directory_import_matches_hugging_face(size, make_hf_bert, tmp_path):
    source = make_hf_bert(**SIZES[size])
    manifest = convert.convert_checkpoint(source, tmp_path / "model")
    assert manifest["parts"] == ["encoder", "pooler", "mlm", "nsp"] and manifest["fresh"] == []
    assert manifest["source"]["format"] == "huggingface"

    pretrained = load_pretrained(tmp_path / "model")
    expected_gelu = "erf" if SIZES[size]["hidden_act"] == "gelu" else "tanh"
    assert pretrained.config.gelu == expected_gelu
    assert pretrained.config.num_layers == SIZES[size]["num_layers"]
    assert_pretraining_outputs_match(pretrained.params, pretrained.config, hf_model(source))


def test_export_loads_in_transformers_without_missing_keys(hf_bert_dir, tmp_path):
    convert.convert_checkpoint(hf_bert_dir, tmp_path / "model")
    out = convert.export_hf(tmp_path / "model", tmp_path / "hf")
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "vocab.txt",
                                               "tokenizer_config.json", "special_tokens_map.json"}

    reloaded, info = transformers.BertForPreTraining.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    original = hf_model(hf_bert_dir)
    for key, value in original.state_dict().items():  # a float32 copy: bit-identical
        assert torch.equal(reloaded.state_dict()[key], value), key
    assert reloaded.config.hidden_act == original.config.hidden_act

    for model_class in ("BertModel", "BertForMaskedLM"):  # the parts they need are all there
        _, info = getattr(transformers, model_class).from_pretrained(out, output_loading_info=True)
        assert not info["missing_keys"], (model_class, info)

    # The exported tokenizer files give transformers' tokenizer the same ids as ours.
    ours = load_pretrained(tmp_path / "model").tokenizer
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    for text in ("The cat sat on the mat.", "Charming, often AFFECTING journeys!"):
        assert theirs(text)["input_ids"] == ours.encode(text).input_ids


HEADS = {
    "sequence_classification": ("BertForSequenceClassification",
                                dict(num_labels=3, id2label={0: "neg", 1: "neutral", 2: "pos"}),
                                lambda c: heads.BertForSequenceClassification(c, num_labels=3)),
    "token_classification": ("BertForTokenClassification", dict(num_labels=5),
                             lambda c: heads.BertForTokenClassification(c, num_labels=5)),
    "question_answering": ("BertForQuestionAnswering", {}, lambda c: heads.BertForQuestionAnswering(c)),
    "multiple_choice": ("BertForMultipleChoice", {}, lambda c: heads.BertForMultipleChoice(c)),
}


def hf_head_outputs(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return (out.start_logits, out.end_logits) if hasattr(out, "start_logits") else (out.logits,)


@pytest.mark.parametrize("task", list(HEADS))
def test_finetuning_heads_import_and_export(task, make_hf_bert, tmp_path):
    model_class, hf_kw, ours_fn = HEADS[task]
    source = make_hf_bert(model_class=model_class, **hf_kw)
    manifest = convert.convert_checkpoint(source, tmp_path / "model")
    head = "qa_outputs" if task == "question_answering" else "classifier"
    assert head in manifest["parts"] and manifest["task"] == task
    assert {"mlm", "nsp"} <= set(manifest["fresh"])
    if task == "sequence_classification":
        assert manifest["labels"] == ["neg", "neutral", "pos"]

    pretrained = load_pretrained(tmp_path / "model")
    ids, mask, types = random_inputs(6, 12, pretrained.config.vocab_size)
    if task == "multiple_choice":
        ids, mask, types = (x.reshape(2, 3, 12) for x in (ids, mask, types))
    ours = ours_fn(pretrained.config).apply({"params": pretrained.params}, **jax_inputs(ids, mask, types))
    ours = ours if isinstance(ours, tuple) else (ours,)
    original = hf_model(source, model_class)
    for o, t in zip(ours, hf_head_outputs(original, torch_inputs(ids, mask, types))):
        assert_close(o, t, what=task)

    out = convert.export_hf(tmp_path / "model", tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == [model_class]
    reloaded, info = getattr(transformers, model_class).from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    for o, t in zip(hf_head_outputs(reloaded.eval(), torch_inputs(ids, mask, types)),
                    hf_head_outputs(original, torch_inputs(ids, mask, types))):
        assert_close(o, t, tol=1e-6, what=f"{task} after export")
    if task == "sequence_classification":
        assert reloaded.config.id2label == {0: "neg", 1: "neutral", 2: "pos"}


def test_bfloat16_safetensors_and_pytorch_bin_are_read(make_hf_bert):
    bf16 = make_hf_bert(dtype="bfloat16", seed=3)
    stored = {k: v.float().numpy() for k, v in hf_model(bf16).to(torch.bfloat16).state_dict().items()}
    read = convert.read_hf_state_dict(bf16)
    assert read["bert.pooler.dense.weight"].dtype == np.float32
    for key, value in read.items():
        np.testing.assert_array_equal(value, stored[key], err_msg=key)

    torch_bin = make_hf_bert(weights="bin", seed=4)
    assert not (torch_bin / "model.safetensors").exists()
    read = convert.read_hf_state_dict(torch_bin)
    for key, value in hf_model(torch_bin).state_dict().items():
        if key in read:
            np.testing.assert_array_equal(read[key], value.numpy(), err_msg=key)


def test_tokenizer_json_stands_in_for_a_missing_vocab_txt(hf_bert_dir, small_vocab_file, tmp_path):
    source = tmp_path / "hf"
    shutil.copytree(hf_bert_dir, source)
    (source / "vocab.txt").unlink()  # what transformers 5 save_pretrained leaves: tokenizer.json only
    convert.convert_checkpoint(source, tmp_path / "model")
    assert (tmp_path / "model" / "vocab.txt").read_text() == small_vocab_file.read_text()
    assert load_pretrained(tmp_path / "model").tokenizer.lower_case is True


def test_lower_case_comes_from_the_source_then_the_flag_then_the_vocab(tmp_path, caplog):
    assert convert.resolve_lower_case(tmp_path, None) is None  # None: the tokenizer infers it from the vocab
    assert convert.resolve_lower_case(tmp_path, False) is False  # --cased
    (tmp_path / "tokenizer.json").write_text(json.dumps({"normalizer": {"type": "BertNormalizer", "lowercase": False}}))
    assert convert.resolve_lower_case(tmp_path, None) is False
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    with caplog.at_level(logging.WARNING, logger="bert_jax.convert"):
        assert convert.resolve_lower_case(tmp_path, False) is True
    assert "ignoring the requested lower_case=False" in caplog.text


# ------------------------------------------------------------------------------------------------------------------
# Google TF checkpoints
# ------------------------------------------------------------------------------------------------------------------


def google_variables(sd: dict, num_layers: int) -> dict:
    """The variables of google-research/bert modeling.py (+ run_pretraining.py heads) holding the weights of a HF
    BertForPreTraining state dict: written out name by name from the original code, TF kernels [in, out]."""
    v = {
        "bert/embeddings/word_embeddings": sd["bert.embeddings.word_embeddings.weight"],
        "bert/embeddings/token_type_embeddings": sd["bert.embeddings.token_type_embeddings.weight"],
        "bert/embeddings/position_embeddings": sd["bert.embeddings.position_embeddings.weight"],
        "bert/embeddings/LayerNorm/gamma": sd["bert.embeddings.LayerNorm.weight"],
        "bert/embeddings/LayerNorm/beta": sd["bert.embeddings.LayerNorm.bias"],
    }
    if "bert.pooler.dense.weight" in sd:  # HF's token classification / QA models have no pooler
        v["bert/pooler/dense/kernel"] = sd["bert.pooler.dense.weight"].T
        v["bert/pooler/dense/bias"] = sd["bert.pooler.dense.bias"]
    if "cls.predictions.bias" in sd:
        v["cls/predictions/transform/dense/kernel"] = sd["cls.predictions.transform.dense.weight"].T
        v["cls/predictions/transform/dense/bias"] = sd["cls.predictions.transform.dense.bias"]
        v["cls/predictions/transform/LayerNorm/gamma"] = sd["cls.predictions.transform.LayerNorm.weight"]
        v["cls/predictions/transform/LayerNorm/beta"] = sd["cls.predictions.transform.LayerNorm.bias"]
        v["cls/predictions/output_bias"] = sd["cls.predictions.bias"]
        v["cls/seq_relationship/output_weights"] = sd["cls.seq_relationship.weight"]  # [2, H] in both
        v["cls/seq_relationship/output_bias"] = sd["cls.seq_relationship.bias"]
    for i in range(num_layers):
        tf_layer, hf_layer = f"bert/encoder/layer_{i}", f"bert.encoder.layer.{i}"
        for tf_dense, hf_dense in (("attention/self/query", "attention.self.query"),
                                   ("attention/self/key", "attention.self.key"),
                                   ("attention/self/value", "attention.self.value"),
                                   ("attention/output/dense", "attention.output.dense"),
                                   ("intermediate/dense", "intermediate.dense"),
                                   ("output/dense", "output.dense")):
            v[f"{tf_layer}/{tf_dense}/kernel"] = sd[f"{hf_layer}.{hf_dense}.weight"].T
            v[f"{tf_layer}/{tf_dense}/bias"] = sd[f"{hf_layer}.{hf_dense}.bias"]
        for tf_norm, hf_norm in (("attention/output/LayerNorm", "attention.output.LayerNorm"),
                                 ("output/LayerNorm", "output.LayerNorm")):
            v[f"{tf_layer}/{tf_norm}/gamma"] = sd[f"{hf_layer}.{hf_norm}.weight"]
            v[f"{tf_layer}/{tf_norm}/beta"] = sd[f"{hf_layer}.{hf_norm}.bias"]
    return v


def write_google_checkpoint(directory: Path, variables: dict, bert_config: dict, vocab_file: Path,
                            with_optimizer: bool = True) -> Path:
    """bert_model.ckpt.{index,data-*} + bert_config.json + vocab.txt, as in Google's release zips; with Adam slots
    and global_step as a run_pretraining.py checkpoint has them."""
    import tensorflow as tf

    directory.mkdir(parents=True)
    tf_vars = {name: tf.Variable(np.ascontiguousarray(value), name=name) for name, value in variables.items()}
    if with_optimizer:
        for name, value in variables.items():
            tf_vars[f"{name}/adam_m"] = tf.Variable(np.zeros_like(value))
            tf_vars[f"{name}/adam_v"] = tf.Variable(np.ones_like(value))
        tf_vars["global_step"] = tf.Variable(np.int64(1000))
    tf.compat.v1.train.Saver(var_list=tf_vars).save(None, str(directory / "bert_model.ckpt"), write_meta_graph=False)
    (directory / "checkpoint").unlink()  # Google's zips ship without it
    (directory / "bert_config.json").write_text(json.dumps(bert_config))
    shutil.copy(vocab_file, directory / "vocab.txt")
    return directory


def google_bert_config(hf_config) -> dict:
    """bert_config.json as Google's releases write it (no model_type, no layer_norm_eps)."""
    return dict(attention_probs_dropout_prob=0.1, hidden_act="gelu", hidden_dropout_prob=0.1,
                hidden_size=hf_config.hidden_size, initializer_range=0.02,
                intermediate_size=hf_config.intermediate_size,
                max_position_embeddings=hf_config.max_position_embeddings,
                num_attention_heads=hf_config.num_attention_heads, num_hidden_layers=hf_config.num_hidden_layers,
                type_vocab_size=2, vocab_size=hf_config.vocab_size)


def test_google_tf_checkpoint_imports_and_matches_hugging_face(make_hf_bert, small_vocab_file, tmp_path):
    import tensorflow as tf

    source = make_hf_bert(num_layers=3, hidden_size=64, num_heads=4, seed=5)
    original = hf_model(source)
    sd = {k: v.numpy() for k, v in original.state_dict().items()}
    variables = google_variables(sd, num_layers=3)
    google = write_google_checkpoint(tmp_path / "uncased_L-3_H-64_A-4", variables,
                                     google_bert_config(original.config), small_vocab_file)
    listed = tf.train.load_checkpoint(str(google / "bert_model.ckpt")).get_variable_to_shape_map()
    assert set(listed) == set(variables) | {f"{n}/adam_{s}" for n in variables for s in "mv"} | {"global_step"}

    manifest = convert.convert_checkpoint(google, tmp_path / "model")
    assert manifest["source"]["format"] == "tf" and manifest["fresh"] == []
    assert any(f"skipped {2 * len(variables) + 1} optimizer variables" in w for w in manifest["warnings"])
    pretrained = load_pretrained(tmp_path / "model")
    assert pretrained.tokenizer.lower_case is True  # an all-lower-case vocab: uncased
    assert_pretraining_outputs_match(pretrained.params, pretrained.config, original)

    # The prefix path works as well as the directory (run_classifier.py's --init_checkpoint style).
    by_prefix = convert.params_from_tf_checkpoint(str(google / "bert_model.ckpt"), pretrained.config)
    np.testing.assert_array_equal(by_prefix["bert"]["encoder"]["layer_2"]["output"]["dense"]["kernel"],
                                  sd["bert.encoder.layer.2.output.dense.weight"].T)


def test_google_classifier_and_squad_heads_import(make_hf_bert, small_vocab_file, tmp_path):
    """run_classifier.py saves its layer unscoped as output_weights [n, H] / output_bias; run_squad.py as
    cls/squad/output_weights [2, H]."""
    for model_class, tf_head, hf_head in (("BertForSequenceClassification", "", "classifier"),
                                          ("BertForQuestionAnswering", "cls/squad/", "qa_outputs")):
        source = make_hf_bert(model_class=model_class, num_labels=4) if hf_head == "classifier" else \
            make_hf_bert(model_class=model_class)
        original = hf_model(source, model_class)
        sd = {k: v.numpy() for k, v in original.state_dict().items()}
        variables = google_variables(sd, 2)
        variables[f"{tf_head}output_weights"] = sd[f"{hf_head}.weight"]
        variables[f"{tf_head}output_bias"] = sd[f"{hf_head}.bias"]
        config = convert.config_from_hf(original.config.to_dict())
        google = write_google_checkpoint(tmp_path / model_class, variables, google_bert_config(original.config),
                                         small_vocab_file, with_optimizer=False)
        imported = convert.import_tf_checkpoint(str(google), config)
        has_pooler = hf_head == "classifier"  # HF's QA model has none
        assert imported.parts == ["encoder", *(["pooler"] if has_pooler else []), hf_head]
        np.testing.assert_array_equal(imported.params[hf_head]["kernel"], sd[f"{hf_head}.weight"].T)
        np.testing.assert_array_equal(imported.params[hf_head]["bias"], sd[f"{hf_head}.bias"])


# ------------------------------------------------------------------------------------------------------------------
# The real pretrained model
# ------------------------------------------------------------------------------------------------------------------


def test_minilm_imports_with_fresh_heads_and_matches_hugging_face(minilm_converted, minilm_dir, sst2_sentences):
    directory, manifest = minilm_converted
    assert manifest["parts"] == ["encoder", "pooler", "mlm", "nsp"] and manifest["fresh"] == ["mlm", "nsp"]
    assert any("mlm/nsp" in w and "initialised fresh" in w for w in manifest["warnings"])
    assert read_manifest(directory)["fresh"] == ["mlm", "nsp"]

    pretrained = load_pretrained(directory)
    assert (pretrained.config.num_layers, pretrained.config.hidden_size, pretrained.config.num_heads) == (6, 384, 12)
    assert "cls" in pretrained.params  # fresh heads, so the tree runs in BertForPreTraining too

    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    batch = hf_tokenizer(sst2_sentences, padding=True, return_tensors="np")
    for i, sentence in enumerate(sst2_sentences):  # our tokenizer, from the converted directory, agrees
        length = int(batch["attention_mask"][i].sum())
        assert pretrained.tokenizer.encode(sentence).input_ids == batch["input_ids"][i, :length].tolist()

    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    sequence, pooled = BertModel(pretrained.config).apply({"params": pretrained.params["bert"]},
                                                          **jax_inputs(ids, mask, types))
    with torch.no_grad():
        theirs = hf_model(minilm_dir, "BertModel")(**torch_inputs(ids, mask, types))
    real = mask.astype(bool)  # padded positions are not outputs anyone uses
    assert_close(np.asarray(sequence)[real], theirs.last_hidden_state.numpy()[real], what="MiniLM sequence output")
    assert_close(pooled, theirs.pooler_output, what="MiniLM pooled output")


# ------------------------------------------------------------------------------------------------------------------
# Configs and in-memory conversion
# ------------------------------------------------------------------------------------------------------------------


def test_config_round_trips_through_hugging_face_keys():
    for gelu, act in (("erf", "gelu"), ("tanh", "gelu_new")):
        config = BertConfig(vocab_size=300, hidden_size=96, num_layers=3, num_heads=3, intermediate_size=200,
                            max_position_embeddings=64, gelu=gelu, hidden_dropout_rate=0.05)
        hf = convert.config_to_hf(config)
        assert hf["hidden_act"] == act
        assert transformers.BertConfig(**hf).num_hidden_layers == 3
        assert convert.config_from_hf(hf) == config
    assert convert.config_from_hf({**hf, "hidden_act": "gelu_pytorch_tanh"}).gelu == "tanh"


@pytest.mark.parametrize("change,message", [
    ({"hidden_act": "relu"}, "config.json: hidden_act='relu' is not supported"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key' is not supported"),
    ({"model_type": "roberta"}, "model_type='roberta'; only 'bert'"),
    ({"is_decoder": True}, "is_decoder=true is not supported"),
    ({"vocab_size": None}, "config.json: missing key 'vocab_size'"),
    ({"num_attention_heads": 5}, "config.json: BertConfig.hidden_size=64: must be divisible by num_heads=5"),
])
def test_config_from_hf_rejects_what_bert_jax_cannot_run(change, message):
    base = dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu")
    with pytest.raises(ValueError, match=_literal(message)):
        convert.config_from_hf({**base, **change})


def _literal(text):
    import re

    return re.escape(text)


@pytest.fixture(scope="module")
def tiny_state_dict(hf_bert_dir):
    return hf_state_dict(hf_bert_dir), convert.config_from_hf(json.loads((hf_bert_dir / "config.json").read_text()))


@pytest.mark.parametrize("field,value,message", [
    ("vocab_size", 300, "bert/embeddings/word_embeddings: expected shape (300, 64) (from vocab_size=300), "
                        "found ({V}, 64)"),
    ("hidden_size", 128, "bert/embeddings/word_embeddings: expected shape ({V}, 128) (from hidden_size=128), "
                         "found ({V}, 64)"),
    ("num_layers", 3, "the config says num_layers=3 but the checkpoint has 2 encoder layers"),
])
def test_state_dict_that_does_not_fit_the_config_is_named(tiny_state_dict, field, value, message):
    sd, config = tiny_state_dict
    with pytest.raises(ValueError, match=_literal(message.replace("{V}", str(config.vocab_size)))):
        convert.params_from_hf_state_dict(sd, config.replace(**{field: value}))


def test_missing_unexpected_and_untied_tensors_are_named(tiny_state_dict):
    sd, config = tiny_state_dict
    missing = {k: v for k, v in sd.items() if k != "bert.encoder.layer.1.output.dense.bias"}
    with pytest.raises(ValueError, match=r"missing tensors: bert\.encoder\.layer\.1\.output\.dense\.bias"):
        convert.params_from_hf_state_dict(missing, config)
    extra = {**sd, "bert.encoder.layer.0.attention.self.rotary.weight": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match=r"unexpected tensors: bert\.encoder\.layer\.0\.attention\.self\.rotary"):
        convert.params_from_hf_state_dict(extra, config)
    untied = {**sd, "cls.predictions.decoder.weight": sd["cls.predictions.decoder.weight"] + 1}
    with pytest.raises(ValueError, match="cls.predictions.decoder.weight differs"):
        convert.params_from_hf_state_dict(untied, config)


def test_bert_model_keys_without_prefix_get_fresh_heads_with_a_warning(tiny_state_dict, caplog):
    sd, config = tiny_state_dict
    # A BertModel checkpoint: no `bert.` prefix, no heads, the position_ids buffer, and old gamma/beta names.
    bare = {k[len("bert."):]: v for k, v in sd.items() if k.startswith("bert.")}
    bare["embeddings.position_ids"] = np.arange(config.max_position_embeddings)[None]
    bare["embeddings.LayerNorm.gamma"] = bare.pop("embeddings.LayerNorm.weight")
    bare["embeddings.LayerNorm.beta"] = bare.pop("embeddings.LayerNorm.bias")
    imported = convert.import_hf_state_dict(bare, config)
    assert imported.parts == ["encoder", "pooler"] and "embeddings.position_ids" in imported.skipped

    with caplog.at_level(logging.WARNING, logger="bert_jax.convert"):
        params = convert.params_from_hf_state_dict(bare, config)
    assert "has no mlm/nsp parameters: initialised fresh" in caplog.text
    np.testing.assert_array_equal(params["bert"]["embeddings"]["LayerNorm"]["scale"],
                                  sd["bert.embeddings.LayerNorm.weight"])
    assert params["cls"]["predictions"]["output_bias"].shape == (config.vocab_size,)
    assert np.all(params["cls"]["predictions"]["transform"]["LayerNorm"]["scale"] == 1)  # model.py init
    # Export writes exactly HF's keys back (decoder copies only on request).
    back = convert.hf_state_dict_from_params(params, config, tied=True)
    assert set(back) == set(sd)
    for key in sd:
        if not key.startswith("cls."):
            np.testing.assert_array_equal(back[key], sd[key], err_msg=key)


# ------------------------------------------------------------------------------------------------------------------
# Directories and the command line
# ------------------------------------------------------------------------------------------------------------------


def test_convert_errors_name_the_file(hf_bert_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_dir: no such file or directory"):
        convert.convert_checkpoint(tmp_path / "no_such_dir", tmp_path / "out1")

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("")
    with pytest.raises(FileNotFoundError, match="neither a Google TF checkpoint .* it holds notes.txt"):
        convert.convert_checkpoint(empty, tmp_path / "out2")

    no_vocab = tmp_path / "no_vocab"
    shutil.copytree(hf_bert_dir, no_vocab)
    for name in ("vocab.txt", "tokenizer.json"):
        (no_vocab / name).unlink()
    with pytest.raises(FileNotFoundError, match=r"no_vocab/vocab\.txt: missing"):
        convert.convert_checkpoint(no_vocab, tmp_path / "out3")

    bad_config = tmp_path / "bad_config"
    shutil.copytree(hf_bert_dir, bad_config)
    config = json.loads((bad_config / "config.json").read_text())
    (bad_config / "config.json").write_text(json.dumps({**config, "hidden_act": "silu"}))
    with pytest.raises(ValueError, match=r"bad_config/config\.json: hidden_act='silu' is not supported"):
        convert.convert_checkpoint(bad_config, tmp_path / "out4")

    used = tmp_path / "used"
    used.mkdir()
    (used / "something").write_text("")
    with pytest.raises(ValueError, match="output directory is not empty"):
        convert.convert_checkpoint(hf_bert_dir, used)


def run_cli(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "bert_jax", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_convert_and_export_commands(hf_bert_dir, tmp_path):
    result = run_cli("convert", "--source", hf_bert_dir, "--output", tmp_path / "model")
    assert result.returncode == 0, result.stderr
    assert "parts: encoder, pooler, mlm, nsp" in result.stdout
    result = run_cli("export-hf", "--checkpoint", tmp_path / "model", "--output", tmp_path / "hf")
    assert result.returncode == 0, result.stderr
    _, info = transformers.BertForPreTraining.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    # (The one-line errors of the commands are checked in test_inference.py; the messages in the tests above.)
