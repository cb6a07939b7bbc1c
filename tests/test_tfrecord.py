"""TFRecord framing (bert_jax/data/tfrecord.py): what the writer writes the reader reads back, from any record
boundary, and a damaged or cut file is an error naming the file and the byte offset of the bad record.

The framing itself is checked against TensorFlow's reader in tests/test_pretraining_data.py.
"""

import random
import struct

import pytest

from bert_jax.data import tfrecord


def _write(path, records):
    with open(path, "wb") as f:
        tfrecord.write_tfrecords(f, records)
    return str(path)


def _records(count=50, seed=0):
    rng = random.Random(seed)
    return [rng.randbytes(rng.choice([0, 1, 7, 200, 3000])) for _ in range(count)]


def _offsets(records):
    """The byte offset where each record starts."""
    starts, offset = [], 0
    for record in records:
        starts.append(offset)
        offset += 16 + len(record)
    return starts


def test_reads_back_what_was_written_from_any_boundary(tmp_path):
    records = _records(3000)  # more than tfrecord.VERIFY_CHUNK: several chunks of CRCs
    path = _write(tmp_path / "r.tfrecord", records)
    read = list(tfrecord.iter_tfrecords(path))
    assert [data for data, _ in read] == records
    starts = _offsets(records)
    assert [end for _, end in read] == starts[1:] + [starts[-1] + 16 + len(records[-1])]
    assert [data for data, _ in tfrecord.iter_tfrecords(path, starts[1234])] == records[1234:]
    assert tfrecord.masked_crc32c(b"123456789") == int(tfrecord.masked_crcs(tfrecord.crc32c([b"123456789"]))[0])


def test_a_flipped_data_byte_names_the_file_and_the_record(tmp_path):
    records = _records()
    starts = _offsets(records)
    damaged = bytearray(open(_write(tmp_path / "r.tfrecord", records), "rb").read())
    bad = 37
    damaged[starts[bad] + 12 + len(records[bad]) // 2] ^= 0x01  # inside record 37's data
    path = tmp_path / "bad.tfrecord"
    path.write_bytes(bytes(damaged))
    read = []
    with pytest.raises(ValueError, match=rf"bad\.tfrecord: damaged TFRecord at byte {starts[bad]}: the data CRC"):
        for data, _ in tfrecord.iter_tfrecords(str(path)):
            read.append(data)
    assert read == records[:bad]  # every record before the damaged one was read


def test_a_flipped_length_byte_and_a_cut_file(tmp_path):
    records = _records()
    starts = _offsets(records)
    whole = open(_write(tmp_path / "r.tfrecord", records), "rb").read()
    damaged = bytearray(whole)
    damaged[starts[5] + 3] ^= 0x40  # record 5's length: it would announce gigabytes
    (tmp_path / "length.tfrecord").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=rf"length\.tfrecord: damaged TFRecord at byte {starts[5]}: the length CRC"):
        list(tfrecord.iter_tfrecords(str(tmp_path / "length.tfrecord")))
    damaged = bytearray(whole)
    damaged[starts[9] + 9] ^= 0x02  # record 9's length CRC
    (tmp_path / "crc.tfrecord").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=rf"damaged TFRecord at byte {starts[9]}: the length CRC"):
        list(tfrecord.iter_tfrecords(str(tmp_path / "crc.tfrecord")))
    (tmp_path / "cut.tfrecord").write_bytes(whole[: starts[20] + 20])
    with pytest.raises(ValueError, match=rf"cut\.tfrecord: truncated TFRecord at byte {starts[20]}"):
        list(tfrecord.iter_tfrecords(str(tmp_path / "cut.tfrecord")))
    (tmp_path / "header.tfrecord").write_bytes(whole[: starts[20] + 5])
    with pytest.raises(ValueError, match=rf"truncated TFRecord header at byte {starts[20]}"):
        list(tfrecord.iter_tfrecords(str(tmp_path / "header.tfrecord")))


def test_first_record_tells_records_from_text(tmp_path):
    path = _write(tmp_path / "r.tfrecord", [b"hello", b"world"])
    size = len(open(path, "rb").read())
    with open(path, "rb") as f:
        assert tfrecord.first_record(f, size) == b"hello"
    (tmp_path / "t.txt").write_text("plain text, long enough for a header\n")
    with open(tmp_path / "t.txt", "rb") as f:
        assert tfrecord.first_record(f, 38) is None
    assert tfrecord.is_record_header(open(path, "rb").read(12))
    assert not tfrecord.is_record_header(struct.pack("<QI", 5, 0))
