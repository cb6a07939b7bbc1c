"""A fine-tuning run's data: each split of the task read per the config, reported, and featurized.

    task, train, dev, test = load_data(config, task, tokenizer)   # Splits: examples + features (+ labelled?)

A split's source is config.data.<split>, else config.data.source: a folder in the task's original layout or TFDS
serves every split, comma-separated files are taken in the order of the task's splits (MNLI's matched and
mismatched dev sets). Every reader's report is printed (rows skipped and why); test splits are optional where the
source has none. `featurize_split` is also how `predict` featurizes its input (bert_jax/predict.py).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

from bert_jax import console
from bert_jax.heads import KINDS


@dataclasses.dataclass(frozen=True)
class Split:
    """One split's examples and features (what the model reads, plus what decoding needs)."""

    name: str
    examples: list
    features: dict
    labeled: bool  # whether the split can be scored (tasks.Task.labeled)

    def __len__(self):
        return len(self.features["input_ids"])


def featurize_split(task, name: str, examples: list, tokenizer, data: Mapping) -> Split:
    """The split `name` of `examples`, featurized with the options the task takes from `data` (a config's data
    section, or a model directory's record of it)."""
    features = task.featurize(examples, tokenizer, **task.featurize_options(data))
    return Split(name, examples, features, task.labeled(examples, features))


def split_paths(value: str) -> list:
    """The comma-separated paths of a config.data entry."""
    return [p.strip() for p in value.split(",") if p.strip()] if value else []


def is_tfds(source: str) -> bool:
    return source == "tfds" or source.startswith("tfds:")


def read_split(task, split: str, source: str, *, strict: bool, tfds_data_dir: str = "", limit: int = 0):
    """The examples of one split, with the reader's report printed (every skipped row, never a silent loss)."""
    examples, report = task.read(split, source, strict=strict, tfds_data_dir=tfds_data_dir or None)
    console.announce(f"[{split}] {report.summary()}")
    if limit and len(examples) > limit:
        console.announce(f"[{split}] using the first {limit} of {len(examples)} examples (config.data.max_*_examples)")
        examples = examples[:limit]
    if not examples:
        raise ValueError(f"{report.source}: no usable {split} examples")
    return examples


def _sources(config, key: str, splits: Sequence[str]) -> list:
    """(split name, source) pairs for config.data.<key>, falling back to config.data.source.

    A folder or tfds serves every split; comma-separated files are taken in the order of `splits` (MNLI's matched
    and mismatched dev sets)."""
    paths = split_paths(config.data[key])
    if not paths:
        return [(s, config.data.source) for s in splits] if config.data.source else []
    if len(paths) == 1:
        if is_tfds(paths[0]) or os.path.isdir(paths[0]):
            return [(s, paths[0]) for s in splits]
        return [(splits[0], paths[0])]
    if len(paths) > len(splits):
        raise ValueError(f"config.data.{key}: {len(paths)} files for the {len(splits)} splits {list(splits)}")
    return list(zip(splits, paths))


def load_data(config, task, tokenizer) -> tuple[Any, Split, list, list]:
    """(task with its labels settled, train split, dev splits, test splits), featurized."""
    d = config.data
    options = dict(strict=d.strict, tfds_data_dir=d.tfds_data_dir)
    (_, train_source), = _sources(config, "train", ["train"])
    train_examples = read_split(task, "train", train_source, limit=d.max_train_examples, **options)
    if hasattr(task, "with_labels_from") and not task.labels:
        task = task.with_labels_from(train_examples)
        console.announce(f"labels inferred from the training examples: {list(task.labels)}")
    train = featurize_split(task, "train", train_examples, tokenizer, d)
    if not all(k in train.features for k in KINDS[task.kind].targets):
        raise ValueError(f"{train_source}: the training examples have no labels")
    dev = []
    for s, src in _sources(config, "dev", task.eval_splits):
        examples = read_split(task, s, src, limit=d.max_eval_examples, **options)
        dev.append(featurize_split(task, s, examples, tokenizer, d))
    test = []
    if config.train.predict_test:
        explicit = bool(d.test)
        for s, src in _sources(config, "test", task.test_splits):
            try:
                examples = read_split(task, s, src, **options)
            except (FileNotFoundError, ValueError) as e:
                # Test files are optional in a task folder, and TFDS has no test split for some tasks (SQuAD).
                if explicit or not (isinstance(e, FileNotFoundError) or is_tfds(src)):
                    raise
                console.announce(f"[{s}] no test predictions: {e}")
                continue
            test.append(featurize_split(task, s, examples, tokenizer, d))
    return task, train, dev, test
