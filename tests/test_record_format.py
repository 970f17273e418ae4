"""Prepared-record encoding: version 2 (raw bytes + JSON header) round trips, v1 still reads."""

import io

import numpy as np
import pytest

from imp.data.arrayrecord_source import READ_VERSIONS, decode_record, encode_record

EXAMPLE = {
    "image": np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3),
    "audio": np.linspace(-1, 1, 98 * 32, dtype=np.float32).reshape(98, 32, 1),
    "waveform": np.array([0.5, -0.25, 1e-8], np.float32),
    "video": np.arange(2 * 4 * 4 * 1, dtype=np.uint8).reshape(2, 4, 4, 1),
    "label": np.asarray(7, np.int32),
    "text": np.asarray("a photo of a zwei ü"),
    "fps": np.asarray(12.5),
    "sample_rate": np.asarray(16000),
    "flag": np.asarray([True, False]),
    "empty": np.zeros((0, 3), np.float32),
    "fortran": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
}


def _assert_same(got, want):
  assert set(got) == set(want)
  for k, v in want.items():
    assert got[k].dtype == np.asarray(v).dtype and got[k].shape == np.shape(v), k
    np.testing.assert_array_equal(got[k], v)


def test_v2_round_trips_every_field_kind():
  data = encode_record(EXAMPLE)
  assert data[:4] == b"IMP2"
  got = decode_record(data, "f, record 0")
  _assert_same(got, EXAMPLE)
  assert str(got["text"]) == "a photo of a zwei ü"
  assert 2 in READ_VERSIONS and 1 in READ_VERSIONS


def test_v1_npz_records_still_read():
  buffer = io.BytesIO()
  np.savez(buffer, **EXAMPLE)
  _assert_same(decode_record(buffer.getvalue(), "f, record 0"), EXAMPLE)


def test_object_arrays_are_not_written():
  with pytest.raises(ValueError, match=r"field 'x' has dtype object"):
    encode_record({"x": np.array([{}], dtype=object)})


@pytest.mark.parametrize("damage", ["truncate", "header", "magic", "object"])
def test_a_damaged_v2_record_names_the_record(damage):
  data = encode_record(EXAMPLE)
  if damage == "truncate":
    data = data[:len(data) - 10]
  elif damage == "header":
    data = data[:9] + b"!" + data[10:]
  elif damage == "magic":
    data = b"XXXX" + data[4:]
  else:
    data = data.replace(b'"|u1"', b'"|O8"', 1)
  with pytest.raises(ValueError, match=r"^train.array_record, record 4: not a record written by "
                                       r"imp.data.prepare"):
    decode_record(data, "train.array_record, record 4")


def test_a_truncated_record_after_intact_ones_with_its_header_still_fails():
  """Headers are parsed once and cached: a later record with the same header but missing bytes
  must still be refused, and an intact one decoded again must equal the first."""
  data = encode_record(EXAMPLE)
  _assert_same(decode_record(data, "f, record 0"), EXAMPLE)
  with pytest.raises(ValueError, match=r"f, record 1: .*past the record's"):
    decode_record(data[:len(data) - 10], "f, record 1")
  _assert_same(decode_record(data, "f, record 2"), EXAMPLE)


def test_a_record_of_another_shape_after_checked_ones_is_refused(tmp_path):
  """check_record runs once per record layout: a record whose shape differs from metadata
  after many good ones is still caught."""
  from array_record.python.array_record_module import ArrayRecordWriter

  from imp.data.arrayrecord_source import WRITER_OPTIONS, ArrayRecordSplit

  path = str(tmp_path / "train.array_record")
  writer = ArrayRecordWriter(path, WRITER_OPTIONS)
  good = {"image": np.zeros((4, 4, 1), np.uint8), "label": np.asarray(1, np.int32)}
  for _ in range(3):
    writer.write(encode_record(good))
  writer.write(encode_record(dict(good, image=np.zeros((5, 4, 1), np.uint8))))
  writer.close()
  fields = {"image": {"dtype": "uint8", "shape": [4, 4, 1]}, "label": {"dtype": "int32",
                                                                     "shape": []}}
  split = ArrayRecordSplit(path, fields, 4)
  assert [int(x["label"]) for x in split.__getitems__([0, 1, 2])] == [1, 1, 1]
  with pytest.raises(ValueError, match=r"record 3: field 'image' is uint8 \[5, 4, 1\]"):
    split[3]


def test_a_split_reads_batches_in_order_and_survives_pickling(tmp_path):
  """The split reads its file with one ArrayRecord reader: a batched read returns the records
  in the asked order (repeats included), equal to reading them one by one, and a pickled copy
  (grain may send sources to worker processes) opens its own reader and reads the same."""
  import pickle

  from array_record.python.array_record_module import ArrayRecordWriter

  from imp.data.arrayrecord_source import WRITER_OPTIONS, ArrayRecordSplit

  path = str(tmp_path / "train.array_record")
  writer = ArrayRecordWriter(path, WRITER_OPTIONS)
  for i in range(5):
    writer.write(encode_record({"label": np.asarray(10 + i, np.int32)}))
  writer.close()
  split = ArrayRecordSplit(path, {"label": {"dtype": "int32", "shape": []}}, 5)
  order = [3, 0, 4, 3, 1]
  assert [int(x["label"]) for x in split.__getitems__(order)] == [13, 10, 14, 13, 11]
  assert [int(split[i]["label"]) for i in order] == [13, 10, 14, 13, 11]
  copy = pickle.loads(pickle.dumps(split))
  assert len(copy) == 5 and [int(x["label"]) for x in copy.__getitems__(order)] == [
      13, 10, 14, 13, 11]
  with pytest.raises(IndexError, match="record 5 out of range"):
    split[5]
