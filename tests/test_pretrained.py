"""The bert_jax model directory: save/load round trip, and the errors for directories that are incomplete or whose
config does not fit the weights (each naming the file or tensor)."""

import json
import re
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest

from bert_jax import heads
from bert_jax.convert import head_shapes, pretraining_shapes, unflatten
from bert_jax.model import BertConfig, abstract_params, is_scanned, scan_params
from bert_jax.pretrained import load_pretrained, read_manifest, save_pretrained
from bert_jax.tokenizer import WordPieceTokenizer


@pytest.fixture(scope="module")
def tokenizer(small_vocab_file):
    return WordPieceTokenizer(str(small_vocab_file), lower_case=True)


@pytest.fixture(scope="module")
def config(tokenizer):
    return BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=2,
                      intermediate_size=64, max_position_embeddings=40)


def random_params(config, extra_shapes=None, seed=0):
    """Random float32 values in the shapes of BertForPreTraining (+ extra paths): no model init needed to test
    storage, and no value is its initial constant."""
    rng = np.random.default_rng(seed)
    shapes = {**pretraining_shapes(config), **(extra_shapes or {})}
    return unflatten({path: rng.standard_normal(shape).astype(np.float32) for path, shape in shapes.items()})


@pytest.fixture(scope="module")
def params(config):
    return random_params(config)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, config, params, tokenizer):
    directory = tmp_path_factory.mktemp("saved") / "model"
    save_pretrained(directory, config, params, tokenizer, source={"format": "test"})
    return directory


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip(saved, config, params, tokenizer):
    assert {p.name for p in saved.iterdir()} == {"model_config.json", "params", "vocab.txt",
                                                 "tokenizer_config.json", "bert_jax.json"}
    pretrained = load_pretrained(saved)
    assert pretrained.config == config
    assert_trees_equal(pretrained.params, params)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(pretrained.params))
    assert pretrained.tokenizer.inv_vocab == tokenizer.inv_vocab
    assert pretrained.tokenizer.lower_case is True
    manifest = read_manifest(saved)
    assert manifest["format"] == "bert_jax" and manifest["format_version"] == 1
    assert manifest["parts"] == ["encoder", "pooler", "mlm", "nsp"] and manifest["fresh"] == []
    assert manifest["source"] == {"format": "test"}
    config_file = json.loads((saved / "model_config.json").read_text())
    assert BertConfig.from_dict(config_file) == config


def test_overrides_and_layouts(saved, config, params, tokenizer, tmp_path):
    bf16 = load_pretrained(saved, config_overrides={"dtype": "bfloat16"})
    assert bf16.config.dtype == "bfloat16" and bf16.params["bert"]["pooler"]["dense"]["kernel"].dtype == np.float32
    scanned = load_pretrained(saved, config_overrides={"scan_layers": True})  # params follow the config's layout
    assert is_scanned(scanned.params)
    with pytest.raises(ValueError, match=r"config_overrides: unknown BertConfig keys \['hidden'\]"):
        load_pretrained(saved, config_overrides={"hidden": 3})

    # Scanned params (a trainer's layout) are stored canonical; a scan_layers config is stored as False.
    save_pretrained(tmp_path / "from_scanned", config.replace(scan_layers=True), scan_params(params), tokenizer)
    reloaded = load_pretrained(tmp_path / "from_scanned")
    assert not reloaded.config.scan_layers and not is_scanned(reloaded.params)
    assert_trees_equal(reloaded.params, params)


def test_finetuning_head_with_task_and_labels(config, tokenizer, tmp_path):
    head_params = random_params(config, head_shapes(config, "classifier", 3), seed=1)
    del head_params["cls"]  # a fine-tuned classifier: encoder + head
    abstract = abstract_params(heads.BertForSequenceClassification(config, num_labels=3))
    assert jax.tree.structure(nn.meta.unbox(abstract)) == jax.tree.structure(head_params)  # heads.py's layout
    manifest = save_pretrained(tmp_path / "clf", config, head_params, tokenizer, task="sequence_classification",
                               labels=["a", "b", "c"], fresh=["mlm", "nsp"])
    assert manifest["parts"] == ["encoder", "pooler", "classifier"]
    assert (manifest["task"], manifest["labels"]) == ("sequence_classification", ["a", "b", "c"])
    assert_trees_equal(load_pretrained(tmp_path / "clf").params, head_params)


def test_save_refuses_mismatched_params_and_used_directories(saved, config, params, tokenizer, tmp_path):
    with pytest.raises(ValueError, match=re.escape(
            "save_pretrained: weights do not fit the config: bert/embeddings/word_embeddings: expected shape "
            f"({config.vocab_size + 1}, 32) (from vocab_size={config.vocab_size + 1}), "
            f"found ({config.vocab_size}, 32)")):
        save_pretrained(tmp_path / "x", config.replace(vocab_size=config.vocab_size + 1), params, tokenizer)
    with pytest.raises(ValueError, match="params already exists; save to a new directory"):
        save_pretrained(saved, config, params, tokenizer)


@pytest.mark.parametrize("missing", ["model_config.json", "bert_jax.json", "params", "vocab.txt"])
def test_missing_files_are_named(saved, tmp_path, missing):
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    target = broken / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        load_pretrained(broken)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such model directory"):
        load_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize("field,value,message", [
    ("vocab_size", 99, "bert/embeddings/word_embeddings: expected shape (99, 32) (from vocab_size=99), "
                       "found ({V}, 32)"),
    ("hidden_size", 64, "bert/embeddings/word_embeddings: expected shape ({V}, 64) (from hidden_size=64), "
                        "found ({V}, 32)"),
    ("num_layers", 3, "the config says num_layers=3 but the weights have 2 encoder layers"),
])
def test_config_that_does_not_fit_the_weights(saved, config, tmp_path, field, value, message):
    expected = re.escape(message.replace("{V}", str(config.vocab_size)))
    with pytest.raises(ValueError, match=expected):  # through an override...
        load_pretrained(saved, config_overrides={field: value})

    edited = tmp_path / "edited"  # ... and through an edited model_config.json, which the error names
    shutil.copytree(saved, edited)
    config_file = edited / "model_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), field: value}))
    with pytest.raises(ValueError, match=re.escape(str(config_file)) + ".*" + expected):
        load_pretrained(edited)


def test_unreadable_config_is_named(saved, tmp_path):
    edited = tmp_path / "edited"
    shutil.copytree(saved, edited)
    (edited / "model_config.json").write_text('{"vocab_size": 10, "hidden": 3}')
    with pytest.raises(ValueError, match=r"model_config\.json: unknown BertConfig keys \['hidden'\]"):
        load_pretrained(edited)
    (edited / "model_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"model_config\.json: not valid JSON"):
        load_pretrained(edited)
