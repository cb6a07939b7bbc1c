"""Pretraining on TFRecords of tf.train.Example in the original layout (SPEC §1), as
`prepare-pretraining-data` and Google's create_pretraining_data.py write them.

    kind = file_kind(path)                         # 'tfrecord' | 'text' | 'empty', from the bytes, not the name
    fmt, files = input_format(files, forced, key)  # one kind for a set of files ('text' | 'tfrecord')
    info = check_records(files, seq_length=128, max_predictions=20, ...)   # before anything compiles
    it = make_iterator(files, batch_size=..., seq_length=..., ...)         # resumable numpy batches

Telling the kinds apart. A TFRecord file starts with a record: uint64 length, the masked CRC-32C of those 8
bytes, the data, the masked CRC-32C of the data (bert_jax/data/tfrecord.py). Both CRCs of the first record
matching is a test no text passes by chance (2^-64), so the file's name plays no part. Empty files go with
either kind.

Reading. The records go through the pipeline's offline mode (bert_jax/data/pipeline.py, `mode='offline'`):
per-host disjoint shards (file i to process i % count, or records dealt by ordinal when there are fewer files
than processes), records shuffled in seeded blocks, and a position of a few integers (block start, records
consumed) that the trainer stores in every checkpoint, so a resumed run reads exactly the records the
uninterrupted run would have. The batches are the text pipeline's: the seven features, int32 [B, L] / [B, P],
masked_lm_weights float32 [B, P], next_sentence_labels int32 [B].

Checks (`check_records`): the first record of every file must have the seven features with the lengths of the
phase that reads it (`seq_length` tokens, `max_predictions` masked positions) and token ids inside the
vocabulary; an error names the config key and the file. Records are fixed-length, so a phase at 512 needs its
own files (`config.phases[i].input_files`).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
from collections.abc import Sequence

from bert_jax.data.features import FEATURES
from bert_jax.data.pipeline import PipelineSpec, PretrainingIterator
from bert_jax.data.tfrecord import HEADER_BYTES, METADATA_FILE, first_record, is_record_header, read_metadata

KINDS = ("tfrecord", "text", "empty")
FORMATS = ("auto", "text", "tfrecord")
_GZIP_MAGIC = b"\x1f\x8b"

# ----------------------------------------------------------------------------------------------------
# What a file is
# ----------------------------------------------------------------------------------------------------


def file_kind(path: str) -> str:
    """'tfrecord', 'text' or 'empty', from the file's first bytes (see the module docstring).

    A gzip file holding TFRecords is refused (ValueError naming it): the record reader seeks to byte offsets
    to resume, which a compressed stream cannot do."""
    size = os.path.getsize(path)
    if size == 0:
        return "empty"
    try:
        with open(path, "rb") as f:
            if f.read(2) == _GZIP_MAGIC:
                return _gzip_kind(path)
            f.seek(0)
            return "text" if first_record(f, size) is None else "tfrecord"
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _gzip_kind(path: str) -> str:
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except (OSError, EOFError):
        return "text"  # a corrupt .gz: the text reader reports it, naming the file
    if is_record_header(head):
        raise ValueError(f"{path}: gzip-compressed TFRecords cannot be read (a resumed run seeks into the file); "
                         f"decompress them first (gunzip)")
    return "text"


def _kinds(files: Sequence[str]) -> tuple[str, ...]:
    """file_kind of each file, remembered while the files stay as they are (size and mtime): make_input asks
    again at every evaluation."""
    stats = [os.stat(p) for p in files]
    return _cached_kinds(tuple((p, st.st_size, st.st_mtime_ns) for p, st in zip(files, stats)))


@functools.lru_cache(maxsize=64)
def _cached_kinds(files: tuple[tuple[str, int, int], ...]) -> tuple[str, ...]:
    return tuple(file_kind(path) for path, _, _ in files)


def input_format(files: Sequence[str], forced: str = "auto",
                 key: str = "config.data.input_files") -> tuple[str, list[str]]:
    """('text' | 'tfrecord', the files to read) for a set of files: the kind found from their content
    (`forced`='auto'), or as forced.

    prepare-pretraining-data's pretraining_data.json beside its shards is not input: it is left out when its
    directory holds TFRecords (so the writer's output directory can be given as it is). A set that mixes the
    two kinds otherwise, or files that do not match the forced kind, is a ValueError naming `key` (the config key
    that gave the files) and the files. Forcing 'text' checks nothing here: the text reader refuses binary files
    itself (text_reader.check_is_text)."""
    if forced not in FORMATS:
        raise ValueError(f"config.data.format={forced!r}: must be one of {FORMATS}")
    files = list(files)
    if forced == "text":
        return "text", files
    kinds = dict(zip(files, _kinds(files)))
    record_dirs = {os.path.dirname(p) for p, k in kinds.items() if k == "tfrecord"}
    if record_dirs or forced == "tfrecord":
        files = [p for p in files if not _is_writer_metadata(p, kinds[p], record_dirs)]
    text = [p for p in files if kinds[p] == "text"]
    records = [p for p in files if kinds[p] == "tfrecord"]
    if forced == "tfrecord":
        if text:
            raise ValueError(f"{key}: {text[0]} is not a TFRecord file (config.data.format='tfrecord'; "
                             f"{len(text)} of {len(files)} files are not)")
        return "tfrecord", files
    if records and text:
        raise ValueError(f"{key}: mixes TFRecord files ({len(records)}, e.g. {records[0]}) and text files "
                         f"({len(text)}, e.g. {text[0]}); give each phase one kind (config.phases[i].input_files)")
    return ("tfrecord" if records else "text"), files


def _is_writer_metadata(path: str, kind: str, record_dirs: set) -> bool:
    return (kind == "text" and os.path.basename(path) == METADATA_FILE
            and os.path.dirname(path) in record_dirs)


# ----------------------------------------------------------------------------------------------------
# Checks against a phase, before anything compiles
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RecordsInfo:
    """What the checks found: the files, their total size, and the records counted by the writer's
    pretraining_data.json where every file's directory has one (None otherwise: counting would read them all)."""

    files: int
    bytes: int
    records: int | None
    seq_length: int
    max_predictions: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_INT_FEATURES = tuple(name for name in FEATURES if name != "masked_lm_weights")


def check_records(files: Sequence[str], *, seq_length: int, max_predictions: int, vocab_size: int | None,
                  where: str, key: str) -> RecordsInfo:
    """Checks the first record of every file against a phase; returns what was found.

    `where` names the phase's config entry (e.g. 'config.phases[1]'), whose seq_length / max_predictions
    errors name; `key` names the config key that gave the files."""
    import tensorflow as tf

    for path in files:
        with open(path, "rb") as f:
            try:
                record = first_record(f, os.path.getsize(path))
            except ValueError as e:
                raise ValueError(f"{key}: {path}: {e}") from None
        if record is None:
            continue  # an empty file
        try:
            features = tf.train.Example.FromString(record).features.feature
        except Exception as e:  # protobuf's DecodeError
            raise ValueError(f"{key}: {path}: not a TFRecord of tf.train.Example ({e})") from None
        _check_features(features, path, seq_length, max_predictions, vocab_size, where, key)
    directories = sorted({os.path.dirname(os.path.abspath(p)) for p in files})
    _check_metadata(directories, vocab_size, key)
    return RecordsInfo(files=len(files), bytes=sum(os.path.getsize(p) for p in files),
                       records=_counted_records(files, directories), seq_length=seq_length,
                       max_predictions=max_predictions)


def _check_features(features, path, seq_length, max_predictions, vocab_size, where, key) -> None:
    missing = [name for name in FEATURES if name not in features]
    if missing:
        raise ValueError(f"{key}: {path}: the records lack the feature(s) {missing} (the original pretraining "
                         f"layout has {list(FEATURES)})")
    for name in _INT_FEATURES:
        if features[name].WhichOneof("kind") != "int64_list":
            raise ValueError(f"{key}: {path}: feature {name!r} is a {features[name].WhichOneof('kind')}, "
                             f"expected an int64_list")
    if features["masked_lm_weights"].WhichOneof("kind") != "float_list":
        raise ValueError(f"{key}: {path}: feature 'masked_lm_weights' is a "
                         f"{features['masked_lm_weights'].WhichOneof('kind')}, expected a float_list")
    lengths = {name: len(features[name].int64_list.value) for name in _INT_FEATURES}
    lengths["masked_lm_weights"] = len(features["masked_lm_weights"].float_list.value)
    tokens, masked = lengths["input_ids"], lengths["masked_lm_positions"]
    if tokens != seq_length:
        raise ValueError(f"{where}.seq_length={seq_length}: the records in {path} ({key}) hold {tokens} tokens "
                         f"(input_ids); records have one length, so a phase at another length needs its own files "
                         f"(config.phases[i].input_files)")
    if masked != max_predictions:
        raise ValueError(f"{where}.max_predictions={max_predictions}: the records in {path} ({key}) hold {masked} "
                         f"masked positions (masked_lm_positions)")
    expected = {"input_mask": tokens, "segment_ids": tokens, "masked_lm_ids": masked, "masked_lm_weights": masked,
                "next_sentence_labels": 1}
    for name, length in expected.items():
        if lengths[name] != length:
            raise ValueError(f"{key}: {path}: feature {name!r} has {lengths[name]} values, expected {length} "
                             f"(input_ids has {tokens}, masked_lm_positions {masked})")
    if vocab_size:
        ids = list(features["input_ids"].int64_list.value) + list(features["masked_lm_ids"].int64_list.value)
        if max(ids) >= vocab_size:
            raise ValueError(f"{key}: {path}: token id {max(ids)} in the first record is beyond the vocabulary "
                             f"of {vocab_size} tokens (config.data.vocab_file: the records were written with "
                             f"another vocabulary)")


def _check_metadata(directories: Sequence[str], vocab_size: int | None, key: str) -> None:
    for directory in directories:
        metadata = read_metadata(directory)
        written = metadata.get("vocab_size") if metadata else None
        if vocab_size and written and written != vocab_size:
            raise ValueError(f"{key}: {os.path.join(directory, METADATA_FILE)}: the records were "
                             f"written with a vocabulary of {written} tokens, config.data.vocab_file has "
                             f"{vocab_size}")


def _counted_records(files: Sequence[str], directories: Sequence[str]) -> int | None:
    """The records of `files` as prepare-pretraining-data counted them (pretraining_data.json: the instances of
    the shards it lists), when the files are exactly those shards; None otherwise."""
    given = {os.path.abspath(p) for p in files}
    total = 0
    for directory in directories:
        metadata = read_metadata(directory) or {}
        listed = {os.path.join(directory, name) for name in metadata.get("files", [])}
        if not listed or listed != {p for p in given if os.path.dirname(p) == directory}:
            return None
        total += int(metadata.get("summary", {}).get("instances", 0))
    return total


# ----------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------


def make_iterator(files: Sequence[str], *, batch_size: int, seq_length: int, max_predictions: int, seed: int,
                  process_index: int, process_count: int, shuffle: bool) -> PretrainingIterator:
    """This process's batches of the records (the pipeline in offline mode): numpy dicts of the seven
    features, endless (epoch after epoch), with get_state()/set_state() for checkpoints."""
    spec = PipelineSpec(input_pattern=tuple(files), mode="offline", batch_size=batch_size, max_seq_length=seq_length,
                        max_predictions_per_seq=max_predictions, seed=seed, process_index=process_index,
                        process_count=process_count, repeat=True, shuffle=shuffle)
    return PretrainingIterator(spec)
