"""TFRecord files of pretraining instances: the framing (written and read, both CRCs checked), the
tf.train.Example encoding of an instance, and the writer's metadata file beside its shards.

Framing, as TensorFlow writes it: uint64 length, masked CRC-32C of those 8 bytes, the data, masked CRC-32C of
the data (little-endian). It is written and read here rather than by TensorFlow for two reasons: the offline
writer's worker processes then need no TensorFlow (importing it costs seconds per process), and a reader can
seek straight to a byte offset, which is how a resumed pipeline continues mid-file.

    write_tfrecords(f, records)                      # appends records, CRCs computed vectorised
    for data, end in iter_tfrecords(path, offset):   # ValueError naming file and byte offset on a bad CRC
    first_record(f, size)                            # the first record, or None when the bytes are no TFRecord

Examples are encoded straight in the protobuf wire format (`serialize_instance`), and parsed back in the graph
with `feature_spec`. Nothing here imports TensorFlow at module import.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Sequence

import numpy as np

from bert_jax.data.instances import InstanceConfig, TrainingInstance

HEADER_BYTES = 12  # uint64 length + uint32 masked CRC of the length
FOOTER_BYTES = 4  # uint32 masked CRC of the data
VERIFY_CHUNK = 1024  # the most records whose data CRCs `iter_tfrecords` computes in one vectorised pass
METADATA_FILE = "pretraining_data.json"  # what the offline writer puts beside its shards

# ----------------------------------------------------------------------------------------------------
# CRC-32C (Castagnoli)
# ----------------------------------------------------------------------------------------------------


def _crc32c_table() -> np.ndarray:
    table = np.zeros([256], np.uint32)
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli polynomial, reflected
        table[byte] = crc
    return table


_CRC32C_TABLE = _crc32c_table()
_CRC32C_LIST = _CRC32C_TABLE.tolist()  # Python ints: faster than NumPy scalars in the one-string loop


def crc32c(chunks: Sequence[bytes]) -> np.ndarray:
    """CRC-32C of each byte string, uint32 [len(chunks)], computed one byte position at a time across all of
    them with NumPy (the cost is per position, so it pays for many strings at once)."""
    lengths = np.fromiter(map(len, chunks), np.int64, count=len(chunks))
    order = np.argsort(-lengths, kind="stable")  # longest first: at byte k the live rows are a prefix
    sorted_lengths = lengths[order]
    width = int(sorted_lengths[0]) if len(chunks) else 0
    data = np.zeros([len(chunks), width], np.uint8)
    data[np.arange(width)[None, :] < sorted_lengths[:, None]] = np.frombuffer(
        b"".join(chunks[i] for i in order), np.uint8
    )
    live = np.searchsorted(-sorted_lengths, -np.arange(width), side="left")  # rows longer than k, for each k
    crc = np.full([len(chunks)], 0xFFFFFFFF, np.uint32)
    for k in range(width):
        m = live[k]
        crc[:m] = _CRC32C_TABLE[(crc[:m] ^ data[:m, k]) & 0xFF] ^ (crc[:m] >> 8)
    result = np.empty_like(crc)
    result[order] = crc ^ np.uint32(0xFFFFFFFF)
    return result


def masked_crcs(crc: np.ndarray) -> np.ndarray:
    """The TFRecord checksums of CRC-32Cs: rotated right by 15 bits, plus a constant (uint32, little-endian)."""
    crc = crc.astype(np.uint64)
    return ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF).astype("<u4")


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum of one byte string, in plain Python: for a header (8 bytes) or a single record,
    where the vectorised `crc32c` would spend its time on per-position overhead."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_LIST[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------------
# Framing: write, read, recognise
# ----------------------------------------------------------------------------------------------------


def write_tfrecords(f, records: Sequence[bytes]) -> None:
    """Appends records to an open binary file in the TFRecord format (readable by tf.data.TFRecordDataset)."""
    if not records:
        return
    headers = [struct.pack("<Q", len(r)) for r in records]
    header_crcs = masked_crcs(crc32c(headers)).tolist()
    data_crcs = masked_crcs(crc32c(records)).tolist()
    f.write(b"".join(
        b"".join((h, struct.pack("<I", hc), r, struct.pack("<I", dc)))
        for h, hc, r, dc in zip(headers, header_crcs, records, data_crcs)
    ))


def is_record_header(header: bytes) -> bool:
    """Whether 12 bytes are a TFRecord header: the masked CRC of the length matches (text never does by chance)."""
    return len(header) == HEADER_BYTES and masked_crc32c(header[:8]) == struct.unpack("<I", header[8:])[0]


def iter_tfrecords(path: str, offset: int = 0) -> Iterator[tuple[bytes, int]]:
    """(record data, byte offset after the record) of a TFRecord file from `offset` (a record boundary).

    Both CRCs of every record are checked: a mismatch, or a file that ends inside a record, is a ValueError
    naming the file and the byte offset of the record. The length CRC is checked before the data is read (a
    damaged length could announce any size); the data CRCs of up to VERIFY_CHUNK records are computed
    together, and the records before a bad one are still yielded first. Chunks grow from one record, so a
    reader that looks at a file's first record only reads that much.
    """
    chunk_size = 1
    with open(path, "rb") as f:
        f.seek(offset)
        while True:
            starts, records, footers, error = [], [], [], None
            while len(records) < chunk_size and error is None:
                header = f.read(HEADER_BYTES)
                if not header:
                    break
                if len(header) < HEADER_BYTES:
                    error = f"truncated TFRecord header at byte {offset}"
                elif not is_record_header(header):
                    error = f"damaged TFRecord at byte {offset}: the length CRC does not match"
                else:
                    (length,) = struct.unpack("<Q", header[:8])
                    data = f.read(length)
                    footer = f.read(FOOTER_BYTES)
                    if len(data) < length or len(footer) < FOOTER_BYTES:
                        error = f"truncated TFRecord at byte {offset} (length {length})"
                    else:
                        starts.append(offset)
                        records.append(data)
                        footers.append(struct.unpack("<I", footer)[0])
                        offset += HEADER_BYTES + length + FOOTER_BYTES
            matches = masked_crcs(crc32c(records)) == np.array(footers, np.uint32) if records else []
            for start, data, ok in zip(starts, records, list(matches)):
                if not ok:
                    raise ValueError(f"{path}: damaged TFRecord at byte {start}: the data CRC does not match")
                yield data, start + HEADER_BYTES + len(data) + FOOTER_BYTES
            if error is not None:
                raise ValueError(f"{path}: {error}")
            if len(records) < chunk_size:
                return  # the end of the file
            chunk_size = min(2 * chunk_size, VERIFY_CHUNK)


def first_record(f, size: int) -> bytes | None:
    """The data of the record at the start of the open file `f` (of `size` bytes), or None if its bytes are
    not a TFRecord header. ValueError when the header matches but the record is cut short or damaged."""
    header = f.read(HEADER_BYTES)
    if not is_record_header(header):
        return None
    (length,) = struct.unpack("<Q", header[:8])
    if length > size - HEADER_BYTES - FOOTER_BYTES:
        raise ValueError(f"a TFRecord file whose first record is cut short ({length} bytes announced)")
    data = f.read(length)
    footer = f.read(FOOTER_BYTES)
    if len(footer) < FOOTER_BYTES or masked_crc32c(data) != struct.unpack("<I", footer)[0]:
        raise ValueError("a TFRecord file whose first record is damaged (its data CRC does not match)")
    return data


# ----------------------------------------------------------------------------------------------------
# tf.train.Example of an instance
# ----------------------------------------------------------------------------------------------------


def instance_to_features(instance: TrainingInstance, config: InstanceConfig) -> dict[str, np.ndarray]:
    """The original feature dict: zero-padded to max_seq_length / max_predictions_per_seq."""
    seq, preds = config.max_seq_length, config.max_predictions_per_seq
    n, m = len(instance.tokens), len(instance.masked_lm_positions)
    if n > seq or m > preds:
        raise ValueError(f"instance of {n} tokens / {m} predictions exceeds {seq} / {preds}")
    features = {
        "input_ids": np.zeros([seq], np.int64),
        "input_mask": np.zeros([seq], np.int64),
        "segment_ids": np.zeros([seq], np.int64),
        "masked_lm_positions": np.zeros([preds], np.int64),
        "masked_lm_ids": np.zeros([preds], np.int64),
        "masked_lm_weights": np.zeros([preds], np.float32),
        "next_sentence_labels": np.array([int(instance.is_random_next)], np.int64),
    }
    features["input_ids"][:n] = instance.tokens
    features["input_mask"][:n] = 1
    features["segment_ids"][:n] = instance.segment_ids
    features["masked_lm_positions"][:m] = instance.masked_lm_positions
    features["masked_lm_ids"][:m] = instance.masked_lm_labels
    features["masked_lm_weights"][:m] = 1.0
    return features


def serialize_instance(instance: TrainingInstance, config: InstanceConfig) -> bytes:
    """A serialized tf.train.Example with the original feature names and types (int64 lists, float weights).

    Encoded directly in the protobuf wire format (packed varints / floats): building tf.train.Feature
    messages costs more than making the instance. tests/test_pretraining_data.py parses it back with
    tf.io.parse_single_example.
    """
    parts = []
    for name, values in instance_to_features(instance, config).items():
        if values.dtype == np.float32:
            feature = _field(2, _field(1, values.astype("<f4").tobytes()))  # Feature.float_list.value
        else:
            feature = _field(3, _field(1, _packed_varints(values.tolist())))  # Feature.int64_list.value
        parts.append(_field(1, _field(1, name.encode()) + _field(2, feature)))  # Features.feature map entry
    return _field(1, b"".join(parts))  # Example.features


def _packed_varints(values: list[int]) -> bytes:
    try:
        return b"".join([_VARINTS[v] for v in values])
    except IndexError:  # an id beyond the table (a very large vocabulary)
        return b"".join(map(_varint, values))


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int (all feature values are)."""
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS = [bytes([v]) for v in range(0x80)]
_VARINTS = [_varint(v) for v in range(1 << 17)]  # every id of a usual vocabulary, precomputed


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    size = len(payload)
    if size < 0x80:
        return bytes(((number << 3) | 2, size)) + payload
    return bytes([(number << 3) | 2]) + _varint(size) + payload


def feature_spec(config: InstanceConfig) -> dict:
    """tf.io.parse_example spec for the records the writer produces."""
    import tensorflow as tf

    seq, preds = config.max_seq_length, config.max_predictions_per_seq
    spec = {name: tf.io.FixedLenFeature([seq], tf.int64) for name in ("input_ids", "input_mask", "segment_ids")}
    spec["masked_lm_positions"] = tf.io.FixedLenFeature([preds], tf.int64)
    spec["masked_lm_ids"] = tf.io.FixedLenFeature([preds], tf.int64)
    spec["masked_lm_weights"] = tf.io.FixedLenFeature([preds], tf.float32)
    spec["next_sentence_labels"] = tf.io.FixedLenFeature([1], tf.int64)
    return spec


# ----------------------------------------------------------------------------------------------------
# The writer's metadata
# ----------------------------------------------------------------------------------------------------


def read_metadata(directory: str) -> dict | None:
    """The offline writer's pretraining_data.json in `directory` (settings, shard names, summary), or None."""
    path = os.path.join(directory, METADATA_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
