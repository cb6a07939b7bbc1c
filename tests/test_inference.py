"""fill-mask and embed against Hugging Face: `transformers.pipeline("fill-mask")` on our exported model, BertModel
with the same pooling (and sentence-transformers' mean pooling on the real all-MiniLM-L6-v2); the commands print
the same and fail with one clean line on bad input."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from conftest import REPO, assert_close

from bert_jax import convert
from bert_jax.inference import bucket_lengths, embed, fill_mask
from bert_jax.pretrained import load_pretrained


@pytest.fixture(scope="module")
def model_dirs(hf_bert_dir, tmp_path_factory):
    """(bert_jax directory converted from the random HF model, that directory exported back to HF)."""
    root = tmp_path_factory.mktemp("inference")
    convert.convert_checkpoint(hf_bert_dir, root / "model")
    convert.export_hf(root / "model", root / "hf")
    return root / "model", root / "hf"


@pytest.fixture(scope="module")
def pretrained(model_dirs):
    return load_pretrained(model_dirs[0])


TEXTS = [
    "the cat sat on the [MASK] .",
    "Paris is the [MASK] of France, and london is a city.",  # cased input, commas
    "[MASK] film",
    "the [MASK] of the story was [MASK] , but the actors were charming !",  # two masks: a list per mask
    "a smart , funny and often affecting journey ; the director 's [MASK] playing ( twelve minutes ) ...",
]


def test_fill_mask_matches_the_hugging_face_pipeline(pretrained, model_dirs):
    ours = fill_mask(pretrained, TEXTS, top_k=5, batch_size=2)  # several batches and length buckets
    pipe = transformers.pipeline("fill-mask", model=str(model_dirs[1]), device="cpu")
    theirs = [pipe(text, top_k=5) for text in TEXTS]
    for text, o, t in zip(TEXTS, ours, theirs):
        masks_o, masks_t = (o, t) if text.count("[MASK]") > 1 else ([o], [t])
        assert len(masks_o) == len(masks_t) == text.count("[MASK]")
        for mo, mt in zip(masks_o, masks_t):
            assert [p["token"] for p in mo] == [p["token"] for p in mt], text
            assert [p["token_str"] for p in mo] == [p["token_str"] for p in mt], text
            assert [p["sequence"] for p in mo] == [p["sequence"] for p in mt], text
            assert_close([p["score"] for p in mo], [p["score"] for p in mt], what=text)


def hf_embeddings(directory, texts, pooling, max_length=None):
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    model = transformers.BertModel.from_pretrained(directory, attn_implementation="eager").eval()
    batch = tokenizer(texts, padding=True, truncation=max_length is not None, max_length=max_length,
                      return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    if pooling == "cls":
        return out.last_hidden_state[:, 0].numpy()
    if pooling == "pooler":
        return out.pooler_output.numpy()
    # sentence-transformers' mean pooling
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return ((out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).numpy()


SENTENCES = ["the cat sat on the mat .", "a", "", "charming , funny and often affecting : the best film of the year",
             "dull", "the director made a long film about people , music and the city of paris ."]


@pytest.mark.parametrize("pooling", ["cls", "mean", "pooler"])
def test_embed_matches_hugging_face_bert_model(pretrained, model_dirs, pooling):
    ours = embed(pretrained, SENTENCES, pooling=pooling, batch_size=4)
    assert ours.shape == (len(SENTENCES), pretrained.config.hidden_size) and ours.dtype == np.float32
    assert_close(ours, hf_embeddings(model_dirs[1], SENTENCES, pooling), what=f"{pooling} pooling")


def test_embed_truncates_long_texts_with_a_warning(pretrained, model_dirs, caplog):
    with caplog.at_level(logging.WARNING, logger="bert_jax.inference"):
        ours = embed(pretrained, SENTENCES, pooling="mean", max_length=8)
    assert "truncated 3 of 6 texts to max_length=8 tokens" in caplog.text
    assert_close(ours, hf_embeddings(model_dirs[1], SENTENCES, "mean", max_length=8), what="truncated")


def test_bucket_lengths():
    assert bucket_lengths(512) == [16, 32, 64, 128, 256, 512]
    assert bucket_lengths(100) == [16, 32, 64, 100]
    assert bucket_lengths(10) == [10]


def test_bad_input_is_named(pretrained):
    with pytest.raises(ValueError, match=r"text 2 has no \[MASK\]: 'no mask here'"):
        fill_mask(pretrained, ["a [MASK]", "no mask here"])
    too_long = "the [MASK] " + "cat " * 70
    with pytest.raises(ValueError, match=r"text 1 is 74 tokens long with \[CLS\]/\[SEP\]; the model takes at most "
                                         r"64 \(max_position_embeddings\)"):
        fill_mask(pretrained, [too_long])
    with pytest.raises(ValueError, match="top_k=0"):
        fill_mask(pretrained, ["a [MASK]"], top_k=0)
    with pytest.raises(ValueError, match="pooling='max': must be one of cls, mean, pooler"):
        embed(pretrained, ["a"], pooling="max")
    with pytest.raises(ValueError, match=r"max_length=100: must be between 2 and the model's max_position_embeddings"):
        embed(pretrained, ["a"], max_length=100)


def test_minilm_mean_embeddings_match_sentence_transformers_pooling(minilm_converted, minilm_dir, sst2_sentences):
    ours = embed(load_pretrained(minilm_converted[0]), sst2_sentences, pooling="mean", batch_size=8)
    assert_close(ours, hf_embeddings(minilm_dir, sst2_sentences, "mean"), what="MiniLM mean pooling")


# ------------------------------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------------------------------


def run_cli(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "bert_jax", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_fill_mask_command(pretrained, model_dirs):
    result = run_cli("fill-mask", "--checkpoint", model_dirs[0], "--top-k", 3, *TEXTS[:4])
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    expected = fill_mask(pretrained, TEXTS[:4], top_k=3)
    assert len(printed) == 4
    for p, e in zip(printed, expected):
        flat_p, flat_e = np.ravel(p), np.ravel(e)  # one level per mask for multi-mask texts
        assert [x["sequence"] for x in flat_p] == [x["sequence"] for x in flat_e]
        assert_close([x["score"] for x in flat_p], [x["score"] for x in flat_e], tol=1e-6)

    result = run_cli("fill-mask", "--checkpoint", model_dirs[0], "a [MASK]", "no mask here")
    assert result.returncode == 1
    assert result.stderr.strip() == "fill-mask: error: text 2 has no [MASK]: 'no mask here'"


def test_embed_command(pretrained, model_dirs, tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    result = run_cli("embed", "--checkpoint", model_dirs[0], "--input", lines, "--output", tmp_path / "out.npy",
                     "--pooling", "mean", "--batch-size", 4)
    assert result.returncode == 0, result.stderr
    assert_close(np.load(tmp_path / "out.npy"), embed(pretrained, SENTENCES, pooling="mean"), tol=1e-6)

    broken = tmp_path / "broken"  # a model directory that lost its config: the error names the file
    broken.mkdir()
    for f in model_dirs[0].iterdir():
        if f.name != "model_config.json":
            os.symlink(f, broken / f.name)
    result = run_cli("embed", "--checkpoint", broken, "--input", lines, "--output", tmp_path / "x.npy")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith(f"embed: error: {broken / 'model_config.json'}: missing")
    assert len(result.stderr.strip().splitlines()) == 1
