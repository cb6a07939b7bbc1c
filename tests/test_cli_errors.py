"""User errors through `python -m bert_jax`: one line `<command>: error: <message>` naming the key or file, no
traceback (unless --verbosity asks), and nothing left behind. Each subprocess costs seconds of imports: the cases
are grouped, and what needs no subprocess is checked in-process."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*args, **env):
    environment = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), **env}
    environment.pop("BERT_JAX_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", "bert_jax", *map(str, args)], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=300)


def error_line(result, status: int) -> str:
    """The one error line of a failed command (asserting there is exactly one, last, and no traceback)."""
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr[-3000:]
    return errors[0]


# ----------------------------------------------------------------------------------------------------------------
# Typo'd config keys
# ----------------------------------------------------------------------------------------------------------------


def test_typod_config_keys_are_one_line_with_the_suggestion(tmp_path):
    # The default config file (parsed, with the overrides, when the command module is imported) ...
    result = run("pretrain", f"--workdir={tmp_path / 'a'}", "--config.trian.num_steps=3")
    assert error_line(result, 2) == ("pretrain: error: unknown config key 'trian.num_steps' "
                                     "(did you mean 'train.num_steps'?)")
    # ... a --config file (parsed with the other flags), ...
    result = run("finetune", "--config", "configs/glue.py:sst2", f"--workdir={tmp_path / 'b'}",
                 "--config.trian.batch_size=3")
    assert error_line(result, 2) == ("finetune: error: unknown config key 'trian.batch_size' "
                                     "(did you mean 'train.batch_size'?)")
    # ... and a key set inside a config file's dict (found by validate_config).
    config_file = tmp_path / "typo.py"
    config_file.write_text("from configs.pretrain import get_config as base\n\n\n"
                           "def get_config(arg=None):\n"
                           "    config = base('tiny')\n"
                           "    config.update({'trian': {'num_steps': 3}})\n"
                           "    return config\n")
    result = run("pretrain", "--config", config_file, f"--workdir={tmp_path / 'c'}")
    assert error_line(result, 1) == ("pretrain: error: unknown config key 'trian.num_steps' "
                                     "(did you mean 'train.num_steps'?)")
    assert not any((tmp_path / d).exists() for d in "abc")  # rejected before any workdir was made


def test_verbosity_shows_the_traceback(tmp_path):
    result = run("pretrain", f"--workdir={tmp_path}", "-v", "1", "--config.trian.num_steps=3")
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].endswith(
        "unknown config key 'trian.num_steps' (did you mean 'train.num_steps'?)")


def test_only_user_errors_lose_their_traceback(monkeypatch, capsys):
    """In-process: a ValueError/OSError becomes one line; any other exception type (a bug) propagates."""
    from bert_jax import __main__ as cli

    def failing(error):
        def _run(command, module_name, rest):
            raise error
        return _run

    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    monkeypatch.setattr(cli, "_run", failing(FileNotFoundError("data/x.txt: no such file")))
    assert cli.main(["embed", "--input=x"]) == 1
    assert capsys.readouterr().err == "embed: error: data/x.txt: no such file\n"
    monkeypatch.setattr(cli, "_run", failing(ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError):
        cli.main(["embed"])
    monkeypatch.setattr(cli, "_run", failing(ValueError("bad value")))
    with pytest.raises(ValueError):  # --verbosity asks for the traceback ...
        cli.main(["embed", "--verbosity=1"])
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(ValueError):  # ... and so does BERT_JAX_TRACEBACK=1
        cli.main(["embed"])


# ----------------------------------------------------------------------------------------------------------------
# prepare-pretraining-data: corrupt .gz input, reused output directory
# ----------------------------------------------------------------------------------------------------------------


def write_corpus(path: Path, documents: int) -> bytes:
    words = "the cat sat on a mat while the dog ran far from the old house in the city".split()
    rng = np.random.default_rng(0)
    text = "".join("".join(" ".join(rng.choice(words, 10)) + ".\n" for _ in range(3)) + "\n"
                   for _ in range(documents))
    path.write_text(text, encoding="utf-8")
    return text.encode()


def truncated_gzip(path: Path, text: bytes) -> int:
    """Writes the first half of text.gz to `path`; returns the number of complete lines that half holds."""
    data = gzip.compress(text)
    half = data[: len(data) // 2]
    path.write_bytes(half)
    return zlib.decompressobj(wbits=31).decompress(half).count(b"\n")


def test_corrupt_gz_names_the_file_and_line_and_leaves_no_shard(tmp_path, small_vocab_file):
    text = write_corpus(tmp_path / "good.txt", 40)
    lines = truncated_gzip(tmp_path / "bad.txt.gz", text)
    assert 0 < lines < text.count(b"\n")
    result = run("prepare-pretraining-data", f"--input={tmp_path / 'good.txt'},{tmp_path / 'bad.txt.gz'}",
                 f"--vocab={small_vocab_file}", f"--output={tmp_path / 'out'}", "--dupe-factor=1", "--num-workers=1")
    assert error_line(result, 1) == (f"prepare-pretraining-data: error: {tmp_path / 'bad.txt.gz'}: truncated or "
                                     f"corrupt gzip file, after line {lines} (Compressed file ended before the "
                                     "end-of-stream marker was reached)")
    # Neither the unfinished shard of bad.txt.gz nor the finished one of good.txt (an incomplete set).
    assert not (tmp_path / "out").exists()


def test_the_text_reader_of_pretrain_names_a_corrupt_gz(tmp_path):
    from bert_jax.data import text_reader

    text = write_corpus(tmp_path / "good.txt", 40)
    lines = truncated_gzip(tmp_path / "bad.txt.gz", text)
    with pytest.raises(ValueError, match=rf"bad\.txt\.gz: truncated or corrupt gzip file, after line {lines} "):
        list(text_reader.iter_file_documents(str(tmp_path / "bad.txt.gz")))
    (tmp_path / "not.gz").write_bytes(b"plain text, not gzip\n")
    with pytest.raises(ValueError, match=r"not\.gz: truncated or corrupt gzip file, at its start \(Not a gzipped"):
        list(text_reader.iter_file_documents(str(tmp_path / "not.gz")))


def test_a_reused_output_directory_is_refused_then_overwritten(tmp_path, small_vocab_file):
    write_corpus(tmp_path / "corpus.txt", 20)
    out = tmp_path / "out"
    out.mkdir()
    earlier = ["part-00000-of-00003.tfrecord", "part-00002-of-00003.tfrecord", "pretraining_data.json"]
    for name in earlier:
        (out / name).write_text("an earlier run")
    (out / "notes.txt").write_text("not the writer's")
    args = ("prepare-pretraining-data", f"--input={tmp_path / 'corpus.txt'}", f"--vocab={small_vocab_file}",
            f"--output={out}", "--dupe-factor=1", "--num-workers=1")
    line = error_line(run(*args), 1)
    assert line.startswith(f"prepare-pretraining-data: error: {out}: holds 3 file(s) of an earlier run ")
    assert "--overwrite" in line
    assert sorted(p.name for p in out.iterdir()) == sorted(earlier + ["notes.txt"])  # untouched

    result = run(*args, "--overwrite")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "removed 3 file(s) of an earlier run (--overwrite)" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "part-00000-of-00001.tfrecord",
                                                     "pretraining_data.json"]
    assert json.loads((out / "pretraining_data.json").read_text())["files"] == ["part-00000-of-00001.tfrecord"]


# ----------------------------------------------------------------------------------------------------------------
# convert: a truncated model.safetensors
# ----------------------------------------------------------------------------------------------------------------


def test_convert_names_a_truncated_safetensors_file(tmp_path, small_vocab_file):
    from safetensors.numpy import save_file

    source = tmp_path / "hf"
    source.mkdir()
    vocab_size = len(small_vocab_file.read_text().splitlines())
    (source / "config.json").write_text(json.dumps({
        "architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": vocab_size, "hidden_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 16,
        "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02, "pad_token_id": 0}))
    (source / "vocab.txt").write_text(small_vocab_file.read_text())
    weights = source / "model.safetensors"
    save_file({"bert.embeddings.word_embeddings.weight": np.zeros((vocab_size, 8), np.float32)}, str(weights))
    weights.write_bytes(weights.read_bytes()[:-100])  # an interrupted download
    line = error_line(run("convert", "--source", source, "--output", tmp_path / "out"), 1)
    assert line.startswith(f"convert: error: {weights}: truncated or corrupt safetensors file "
                           f"({weights.stat().st_size} bytes; ")


# ----------------------------------------------------------------------------------------------------------------
# train-tokenizer: undecodable bytes and a short vocabulary
# ----------------------------------------------------------------------------------------------------------------


def test_train_tokenizer_reports_dropped_bytes_and_a_short_vocabulary(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"The cat sat on the mat.\ncaf\xe9 au lait \xff\xfe ok\nA dog ran home.\n\xc3\n")
    result = run("train-tokenizer", f"--input={corpus}", f"--output={tmp_path / 'vocab'}", "--vocab-size=500")
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("train-tokenizer: warning:")]
    vocab = (tmp_path / "vocab" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    # 14 distinct words: the . cat sat on mat; caf, au, lait, ok (the rest of line 2 was kept); a, dog, ran, home
    assert warnings == [
        f"train-tokenizer: warning: dropped 4 byte(s) that are not UTF-8 from 2 line(s) (e.g. {corpus}:2 (byte 3 of "
        f"the line), {corpus}:4 (byte 0 of the line)); the rest of those lines was kept",
        f"train-tokenizer: warning: learned a vocabulary of {len(vocab)} tokens, fewer than the 500 asked for: the "
        "corpus (3 lines, 14 distinct words) is too small for more pieces; give more text or a smaller vocab_size",
    ]


def test_strict_makes_a_short_vocabulary_an_error_before_writing(tmp_path):
    from bert_jax.tokenizer_training import InputReport, train_tokenizer

    texts = ["the cat sat on the mat", "a dog ran home"]
    report = InputReport()
    train_tokenizer(texts, str(tmp_path / "loose"), "wordpiece", vocab_size=300, report=report)
    assert report.vocab_size < 300 and report.vocab_size_asked == 300 and report.lines == 2
    with pytest.raises(ValueError, match=rf"learned a vocabulary of {report.vocab_size} tokens, fewer than the 300"):
        train_tokenizer(texts, str(tmp_path / "strict"), "wordpiece", vocab_size=300, strict=True)
    assert not (tmp_path / "strict").exists()
    with pytest.raises(ValueError, match=r"Vocabulary size too high \(300\)"):
        train_tokenizer(texts * 10, str(tmp_path / "sp"), "sentencepiece", vocab_size=300, strict=True)
