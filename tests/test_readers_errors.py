"""Bad input in the other readers and through `predict`: an unclosed quote costs one row (never merges rows),
a line that is not UTF-8 is skipped or named with its file:line."""

import csv
import random

import numpy as np
import pytest

from bert_jax.tasks import get_task
from bert_jax.tasks.multiple_choice import read_swag_csv
from bert_jax.tasks.ner import read_conll
from bert_jax.tasks.squad import read_squad_json
from tests.conftest import WORDS


def test_swag_unclosed_quote_is_one_skipped_row(tmp_path):
    header = "fold-ind,sent1,sent2,ending0,ending1,ending2,ending3,label"
    path = tmp_path / "val.csv"
    path.write_text("\n".join([header,
                               '1,A man sits.,He,stands,"runs, fast",sleeps,eats,0',
                               '2,"A woman never closes her quote.,She,sings,dances,reads,writes,1',   # line 3
                               '3,A dog barks.,It,runs,sits,"jumps, high",eats,2']) + "\n", encoding="utf-8")
    examples, report = read_swag_csv(str(path))
    assert [(e.guid, e.label) for e in examples] == [("1", 0), ("3", 2)]
    assert examples[1].endings[2] == "It jumps, high"
    assert report.records == 3 and [(p.location, p.reason) for p in report.skipped] == [
        (f"{path}:3", "unclosed quote: the quoted field opened here would span 2 lines (to line 4) and close badly "
                      "(',' expected after '\"')")]


def test_conll_sentence_with_a_line_that_is_not_utf8_is_skipped_there(tmp_path):
    path = tmp_path / "dev.txt"
    path.write_bytes(b"-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n"
                     b"Caf\xe9 NNP B-NP B-LOC\nopens VBZ B-VP O\n\nPeter NNP B-NP B-PER\n")
    examples, report = read_conll(str(path), get_task("conll2003").labels)
    assert [e.words for e in examples] == [("EU", "rejects"), ("Peter",)]
    assert [(p.location, p.reason) for p in report.skipped] == [(f"{path}:6", "not UTF-8 (byte 0xe9)")]


def test_squad_file_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "dev.json"
    path.write_bytes(b'{"data": [\n{"title": "x",\n"paragraphs": [{"context": "caf\xe9", "qas": []}]}]}\n')
    with pytest.raises(ValueError, match=f"^{path}:3: not UTF-8 \\(byte 0xe9\\)$"):
        read_squad_json(str(path), version_2=False)


def test_predict_skips_the_row_with_an_unclosed_quote_and_predicts_every_other(make_hf_bert, tmp_path, capsys):
    """40 rows, the 6th (line 7) opening a quote that never closes: 39 predictions, the same as Hugging Face's
    model gives each of those rows, and the bad row reported at its line."""
    import torch
    from transformers import BertForSequenceClassification, BertTokenizerFast

    from bert_jax import predict
    from bert_jax.convert import convert_checkpoint
    from bert_jax.pretrained import load_pretrained, save_pretrained

    hf_dir = make_hf_bert(model_class="BertForSequenceClassification", num_labels=2)
    convert_checkpoint(hf_dir, tmp_path / "converted")
    # As `finetune` writes a model directory: the encoder and the classifier only (the converted one also holds
    # the fresh pretraining heads, which predict does not place).
    bert, params, tokenizer = load_pretrained(tmp_path / "converted")
    model_dir = tmp_path / "model"
    save_pretrained(model_dir, bert, {k: params[k] for k in ("bert", "classifier")}, tokenizer,
                    task="sequence_classification", labels=["neg", "pos"])
    rng = random.Random(0)
    texts = [" ".join(rng.choices(WORDS, k=rng.randint(3, 9))) for _ in range(40)]
    lines = ["id,text"] + [f"r{i},{text}" for i, text in enumerate(texts, start=1)]
    lines[6] = f'r6,"{texts[5]}'
    path = tmp_path / "test.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    result = predict.predict(str(model_dir), str(path), str(tmp_path / "out.tsv"), task_name="classify",
                              batch_size=8)
    out = capsys.readouterr().out
    assert f"{path}: 39 examples from 40 records, 1 skipped" in out
    assert f"unclosed quote: the quoted field opened here runs 35 lines to the end of the file: {path}:7" in out
    assert [p.location for p in result["report"].skipped] == [f"{path}:7"]

    with open(tmp_path / "out.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    good = [i for i in range(1, 41) if i != 6]
    assert [r["id"] for r in rows] == [f"r{i}" for i in good]
    tokenizer = BertTokenizerFast.from_pretrained(hf_dir)
    hf_model = BertForSequenceClassification.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        logits = hf_model(**tokenizer([texts[i - 1] for i in good], padding=True, return_tensors="pt")).logits.numpy()
    assert np.abs(logits[:, 0] - logits[:, 1]).min() > 1e-3  # no near tie: the argmax is well defined
    assert [r["prediction"] for r in rows] == [["neg", "pos"][k] for k in logits.argmax(axis=1)]
