"""Named-entity recognition on CoNLL-2003 (token tagging), from the original column files or TFDS `conll2003`.

File format: one word per line, `word POS chunk NER` separated by spaces, a blank line after each sentence,
`-DOCSTART- -X- -X- O` lines between documents (they are boundaries, not sentences). Tags are IOB2 here; any
scheme `metrics.entity_spans` reads is fine. A file whose lines hold only the words is read as unlabeled.

Word-level tags become word-piece labels on the first piece of each word; the other pieces, [CLS], [SEP] and
padding get -100 (ignored). A sentence longer than max_seq_length - 2 pieces is split at word boundaries into
several features (never truncated); each word is labeled in exactly one feature, and `decode` puts the
predictions back together per sentence. A single word longer than a whole window keeps its first pieces.
Predictions are written back as CoNLL columns: the input columns, then the predicted tag (conlleval's layout).
"""

from __future__ import annotations

import dataclasses
import os
from types import MappingProxyType
from typing import Optional

import numpy as np

from bert_jax.tasks import (ReadReport, Task, class_label_names, decode_text, find_split_file, load_tfds, pad_to,
                            read_lines, stack)
from bert_jax.tasks import metrics

CONLL2003_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
IGNORE = -100  # the label of word pieces the loss and the metrics skip

_SPLIT_FILES = {"train": ["train.txt"], "validation": ["valid.txt", "dev.txt", "testa.txt"],
                "test": ["test.txt", "testb.txt"]}
_TFDS_SPLITS = {"validation": "dev"}


@dataclasses.dataclass(frozen=True)
class TaggingExample:
    guid: str                      # file:line of the sentence's first word
    words: tuple
    tags: Optional[tuple] = None   # one tag per word; None when unlabeled
    columns: tuple = ()            # per word, the columns between the word and its tag (POS, chunk), for writing back
    doc_start: bool = False        # the first sentence after a -DOCSTART- line


# ----------------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------------


def read_conll(path: str, labels, strict: bool = False) -> tuple[list, ReadReport]:
    """Sentences of a CoNLL column file; a sentence with a bad line is skipped whole and reported."""
    report = ReadReport(path, strict)
    examples, lines, doc_start = [], [], False
    width = None  # columns per line, fixed by the first word line of the file

    def finish_sentence():
        nonlocal doc_start
        if not lines:
            return
        report.record()
        first_line = lines[0][0]
        location = f"{path}:{first_line}"
        for line_number, fields in lines:
            if line_number in undecodable:
                report.skip(f"{path}:{line_number}", undecodable.pop(line_number))
                break
            if len(fields) != width:
                report.skip(f"{path}:{line_number}", f"wrong column count (expected {width}, got {len(fields)})")
                break
            if width > 1 and fields[-1] not in labels:
                report.skip(f"{path}:{line_number}", f"tag {fields[-1]!r} not in the task's labels")
                break
        else:
            words = tuple(f[0] for f in lines_fields())
            tags = tuple(f[-1] for f in lines_fields()) if width > 1 else None
            columns = tuple(tuple(f[1:-1]) for f in lines_fields()) if width > 2 else ()
            examples.append(TaggingExample(location, words, tags, columns, doc_start))
        doc_start = False
        lines.clear()

    def lines_fields():
        return [fields for _, fields in lines]

    undecodable = {}  # line number -> "not UTF-8 (...)": its sentence is skipped there
    for line_number, line, problem in read_lines(path):
        fields = line.split()
        if problem and fields:
            undecodable[line_number] = problem
        if not fields:
            finish_sentence()
        elif fields[0] == "-DOCSTART-":
            finish_sentence()
            doc_start = True
        else:
            if width is None:
                width = len(fields)
            lines.append((line_number, fields))
    finish_sentence()  # a file need not end with a blank line
    return examples, report


@dataclasses.dataclass(frozen=True)
class NerTask(Task):
    featurization = MappingProxyType({"max_seq_length": 128})  # one sequence per window: no pair to truncate

    def read_files(self, split, path, strict=False):
        if os.path.isdir(path):
            path = find_split_file(path, split, _SPLIT_FILES)
        return read_conll(path, self.labels, strict)

    def read_tfds(self, split, name, strict=False, data_dir=None):
        tfds_split = _TFDS_SPLITS.get(split, split)
        records, features = load_tfds(name, tfds_split, data_dir)
        report = ReadReport(f"tfds {name} {tfds_split}", strict)
        tag_names = class_label_names(features, "ner", self.labels, name)
        pos_names, chunk_names = list(features["pos"].feature.names), list(features["chunks"].feature.names)
        examples = []
        for n, record in enumerate(records):
            report.record()
            location = f"tfds {name} {tfds_split}[{n}]"
            words = tuple(decode_text(w) for w in record["tokens"])
            lengths = {len(words), len(record["ner"]), len(record["pos"]), len(record["chunks"])}
            if len(lengths) != 1:
                report.skip(location, "tokens and tags differ in length")
                continue
            if not words:
                report.skip(location, "empty sentence")
                continue
            tags = tuple(tag_names[int(t)] for t in record["ner"])
            columns = tuple((pos_names[int(p)], chunk_names[int(c)]) for p, c in zip(record["pos"], record["chunks"]))
            examples.append(TaggingExample(location, words, tags, columns))
        return examples, report

    # --- features ----------------------------------------------------------------------------------------------

    def featurize(self, examples, tokenizer, max_seq_length=128):
        """Word pieces of each sentence in windows of at most max_seq_length - 2 pieces; see the module doc."""
        if max_seq_length < 3:
            raise ValueError(f"max_seq_length must be at least 3, got {max_seq_length}")
        label_ids = {tag: i for i, tag in enumerate(self.labels)}
        labeled = bool(examples) and all(e.tags is not None for e in examples)
        if not labeled and any(e.tags is not None for e in examples):
            raise ValueError("examples mix labeled and unlabeled sentences; featurize them apart")
        room = max_seq_length - 2
        rows = {k: [] for k in ("input_ids", "attention_mask", "token_type_ids", "labels", "word_index",
                                "example_index")}
        for example_index, example in enumerate(examples):
            # A word that tokenizes to nothing (e.g. a lone control character) still needs a piece to be tagged.
            pieces = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word))[:room] or [tokenizer.unk_id]
                      for word in example.words]
            for first, last in _windows([len(p) for p in pieces], room):
                ids, labels, word_index = [tokenizer.cls_id], [IGNORE], [-1]
                for w in range(first, last):
                    ids.extend(pieces[w])
                    tag = label_ids[example.tags[w]] if labeled else IGNORE
                    labels.extend([tag] + [IGNORE] * (len(pieces[w]) - 1))
                    word_index.extend([w] + [-1] * (len(pieces[w]) - 1))
                ids.append(tokenizer.sep_id)
                labels.append(IGNORE)
                word_index.append(-1)
                rows["input_ids"].append(pad_to(ids, max_seq_length, tokenizer.pad_id))  # [T]
                rows["attention_mask"].append(pad_to([1] * len(ids), max_seq_length))
                rows["token_type_ids"].append([0] * max_seq_length)
                rows["labels"].append(pad_to(labels, max_seq_length, IGNORE))
                rows["word_index"].append(pad_to(word_index, max_seq_length, -1))
                rows["example_index"].append(example_index)
        features = {k: stack(v, width=None if k == "example_index" else max_seq_length) for k, v in rows.items()}
        if not labeled:
            del features["labels"]
        return features

    # --- decoding and metrics ----------------------------------------------------------------------------------

    def decode(self, outputs, features, examples):
        """Word-level tags per sentence from logits [F, T, L]: the argmax on each word's first piece."""
        logits = np.asarray(outputs["logits"])
        word_index, example_index = features["word_index"], features["example_index"]
        if logits.shape[:2] != word_index.shape or logits.ndim != 3:
            raise ValueError(f"logits {logits.shape} do not match features [F, T] = {word_index.shape} + [labels]")
        best = np.argmax(logits, axis=-1)  # [F, T]
        predicted = [[None] * len(e.words) for e in examples]
        for f, t in zip(*np.nonzero(word_index >= 0)):
            predicted[example_index[f]][word_index[f, t]] = self.labels[best[f, t]]
        uncovered = [(e, w) for e, tags in enumerate(predicted) for w, tag in enumerate(tags) if tag is None]
        if uncovered:
            raise ValueError(f"{len(uncovered)} words have no prediction (e.g. sentence {uncovered[0][0]}, "
                             f"word {uncovered[0][1]}): were the features made from these examples?")
        return predicted

    def evaluate(self, predictions, examples):
        gold = [e.tags for e in examples]
        if any(g is None for g in gold):
            raise ValueError("cannot evaluate on unlabeled sentences")
        result = metrics.entity_f1(gold, predictions)
        flat_gold = [t for tags in gold for t in tags]
        flat_pred = [t for tags in predictions for t in tags]
        result["accuracy"] = metrics.accuracy(np.asarray(flat_pred), np.asarray(flat_gold))
        return result

    def write_predictions(self, predictions, examples, output_dir, split):
        """<output_dir>/<task>_<split>_predictions.txt: `word [columns] [gold] predicted` per line."""
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, f"{self.name}_{split}_predictions.txt")
        with open(path, "w", encoding="utf-8") as f:
            for example, tags in zip(examples, predictions, strict=True):
                if example.doc_start:
                    f.write("-DOCSTART- -X- -X- O O\n\n" if example.tags else "-DOCSTART-\n\n")
                for w, word in enumerate(example.words):
                    fields = [word, *(example.columns[w] if example.columns else ())]
                    if example.tags is not None:
                        fields.append(example.tags[w])
                    f.write(" ".join([*fields, tags[w]]) + "\n")
                f.write("\n")
        return [path]


def _windows(piece_counts, room):
    """[first, last) word ranges, packed greedily so that each holds at most `room` pieces."""
    windows, first, used = [], 0, 0
    for w, count in enumerate(piece_counts):
        if used + count > room and w > first:
            windows.append((first, w))
            first, used = w, 0
        used += count
    if piece_counts:
        windows.append((first, len(piece_counts)))
    return windows


def conll2003_task(name: str = "conll2003") -> NerTask:
    return NerTask(name=name, kind="tagging", labels=CONLL2003_TAGS,
                   metric_names=("precision", "recall", "f1", "accuracy"), best_metric="f1", tfds_name="conll2003")
