"""The `idx` source: real IDX files (scikit-learn digits padded to 28x28) read back exactly."""

import gzip
import os
import struct

import numpy as np
import pytest

import imp.data.idx_source  # noqa: F401  (registers the "idx" source)
from imp.data import eval_batches, load_source, task_dataset
from imp.data.idx_source import FASHION_MNIST_DIR, FASHION_MNIST_NAMES, read_idx
from imp.data.sources import DIGIT_NAMES
from imp.tasks import Task, Variant

NUM_TRAIN, NUM_TEST = 150, 50


def write_idx(path, array: np.ndarray, code: int = 0x08) -> None:
  """Writes `array` as IDX (written independently of the reader: struct, big-endian)."""
  dtype = {0x08: ">u1", 0x0C: ">i4"}[code]
  data = struct.pack(">BBBB", 0, 0, code, array.ndim)
  data += struct.pack(f">{array.ndim}I", *array.shape)
  data += np.ascontiguousarray(array, dtype).tobytes()
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(data)


def _digits_28() -> tuple[np.ndarray, np.ndarray]:
  """uint8 [200, 28, 28] digits (8x8 scaled 3x, padded by 2) and their int labels [200]."""
  from sklearn.datasets import load_digits

  digits = load_digits()
  images = np.clip(digits.images[:NUM_TRAIN + NUM_TEST] * 16, 0, 255).astype(np.uint8)
  images = np.pad(np.kron(images, np.ones((1, 3, 3), np.uint8)), ((0, 0), (2, 2), (2, 2)))
  return images, digits.target[:NUM_TRAIN + NUM_TEST]


@pytest.fixture(scope="module")
def digits28():
  return _digits_28()


def _write_dir(directory, images, labels, gz_train=True, gz_test=False) -> None:
  """train-* gzipped and t10k-* plain by default, so both encodings are read."""
  os.makedirs(directory, exist_ok=True)
  train_ext, test_ext = (".gz" if gz_train else ""), (".gz" if gz_test else "")
  write_idx(os.path.join(directory, "train-images-idx3-ubyte" + train_ext), images[:NUM_TRAIN])
  write_idx(os.path.join(directory, "train-labels-idx1-ubyte" + train_ext), labels[:NUM_TRAIN])
  write_idx(os.path.join(directory, "t10k-images-idx3-ubyte" + test_ext), images[NUM_TRAIN:])
  write_idx(os.path.join(directory, "t10k-labels-idx1-ubyte" + test_ext), labels[NUM_TRAIN:])


@pytest.fixture
def idx_dir(tmp_path, digits28):
  _write_dir(tmp_path / "idx", *digits28)
  return tmp_path / "idx"


def _load(directory, **settings):
  settings.setdefault("preset", "mnist")
  return load_source("digits28", dict(source="idx", directory=str(directory), **settings))


def test_reads_back_exactly(idx_dir, digits28):
  images, labels = digits28
  data = _load(idx_dir, label_templates=("a {}",))
  assert data.modalities == ("image", "text") and data.class_names == DIGIT_NAMES
  assert data.label_templates == ("a {}",)
  train, test = data.split("train"), data.split("test")
  assert (len(train), len(test)) == (NUM_TRAIN, NUM_TEST)
  example = train[3]
  assert example["image"].shape == (28, 28, 1) and example["image"].dtype == np.uint8
  assert example["label"].dtype == np.int32 and example["label"].shape == ()
  np.testing.assert_array_equal(train.fields["image"][..., 0], images[:NUM_TRAIN])
  np.testing.assert_array_equal(train.fields["label"], labels[:NUM_TRAIN])
  np.testing.assert_array_equal(test.fields["image"][..., 0], images[NUM_TRAIN:])
  np.testing.assert_array_equal(test.fields["label"], labels[NUM_TRAIN:])


@pytest.mark.parametrize("gz_train,gz_test", [(False, False), (True, True)])
def test_plain_and_gzip_files_read_the_same(tmp_path, digits28, gz_train, gz_test):
  _write_dir(tmp_path, *digits28, gz_train=gz_train, gz_test=gz_test)
  data = _load(tmp_path)
  np.testing.assert_array_equal(data.split("test").fields["image"][..., 0],
                                digits28[0][NUM_TRAIN:])


def test_read_idx_other_dtypes(tmp_path):
  values = np.arange(-6, 6, dtype=np.int32).reshape(3, 4) * 1000
  write_idx(tmp_path / "x-idx2-int", values, code=0x0C)
  got = read_idx(str(tmp_path / "x-idx2-int"))
  assert got.dtype == np.int32 and got.dtype.isnative
  np.testing.assert_array_equal(got, values)


def test_class_names_from_config_and_presets(idx_dir):
  names = tuple(f"class {i}" for i in range(10))
  assert _load(idx_dir, preset=None, class_names=list(names)).class_names == names
  assert _load(idx_dir, preset="fashion_mnist").class_names[-1] == "Ankle boot"
  with pytest.raises(ValueError, match=r"datasets.digits28.preset='kmnist' is not a preset; "
                                       r"valid presets: mnist, fashion_mnist"):
    _load(idx_dir, preset="kmnist")
  with pytest.raises(ValueError, match=r"set datasets.digits28.preset or "
                                       r"datasets.digits28.class_names, not both"):
    _load(idx_dir, class_names=names)
  with pytest.raises(ValueError, match=r"IDX files carry no class names; set "
                                       r"datasets.digits28.preset"):
    _load(idx_dir, preset=None)


def test_pipeline_and_eval_batches(idx_dir):
  data = _load(idx_dir)
  task = Task(name="t/base", entry="t", dataset="digits28", objective="nce",
              modalities=("image", "text"), weight=1.0,
              variant=Variant("base", batch_size=8, resolution=(28, 28), text_length=16))
  batch = next(iter(task_dataset(data, task, seed=0)))
  assert batch["image"].shape == (8, 28, 28, 1) and batch["text"].shape == (8, 16)
  evals = eval_batches(data, "test", modality="image", resolution=(28, 28), batch_size=32)
  assert len(evals.batches) == 2 and evals.batches[1]["mask"].sum() == NUM_TEST - 32
  assert evals.raw.shape == (NUM_TEST, 28 * 28)


def test_missing_directory_and_file(tmp_path, idx_dir):
  with pytest.raises(ValueError, match=r"datasets.digits28.directory='.*nowhere' is not a "
                                       r"directory; it should hold train-images-idx3-ubyte"):
    _load(tmp_path / "nowhere")
  os.remove(idx_dir / "t10k-labels-idx1-ubyte")
  with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte: missing file \(looked for "
                                       r"t10k-labels-idx1-ubyte and t10k-labels-idx1-ubyte.gz\)"):
    _load(idx_dir)


def test_truncated_and_oversized_files(idx_dir):
  path = idx_dir / "t10k-images-idx3-ubyte"
  raw = path.read_bytes()
  path.write_bytes(raw[:-10])
  expected = 16 + NUM_TEST * 28 * 28
  with pytest.raises(ValueError, match=rf"t10k-images-idx3-ubyte: truncated: size does not "
                                       rf"match the header: uint8 \[{NUM_TEST}, 28, 28\] needs "
                                       rf"{expected} bytes, the file has {expected - 10}"):
    _load(idx_dir)
  path.write_bytes(raw[:10])  # inside the dimension list
  with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: truncated: 10 bytes, but the "
                                       r"header of a 3-dimensional IDX file takes 16"):
    _load(idx_dir)
  path.write_bytes(raw + b"\0")
  with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: trailing data: size does not "
                                       r"match the header"):
    _load(idx_dir)


def test_truncated_gzip(idx_dir):
  path = idx_dir / "train-images-idx3-ubyte.gz"
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz: not a readable gzip file"):
    _load(idx_dir)


def test_bad_magic(idx_dir):
  path = idx_dir / "t10k-labels-idx1-ubyte"
  raw = path.read_bytes()
  path.write_bytes(b"\x12\x34" + raw[2:])
  with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte: bad magic number 0x12340801"):
    _load(idx_dir)
  path.write_bytes(raw[:2] + b"\x07" + raw[3:])  # unknown dtype code
  with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte: bad magic number 0x00000701"):
    _load(idx_dir)


def test_count_mismatch(idx_dir, digits28):
  write_idx(idx_dir / "t10k-labels-idx1-ubyte", digits28[1][NUM_TRAIN:-1])
  with pytest.raises(ValueError, match=rf"t10k-labels-idx1-ubyte: image/label count mismatch: "
                                       rf"{NUM_TEST - 1} labels for {NUM_TEST} images in "
                                       rf".*t10k-images-idx3-ubyte"):
    _load(idx_dir)


def test_labels_outside_class_list(idx_dir, digits28):
  labels = digits28[1][:NUM_TRAIN]
  first = int(np.flatnonzero(labels >= 3)[0])
  with pytest.raises(ValueError, match=rf"train-labels-idx1-ubyte.gz: label {labels[first]} "
                                       rf"\(example {first}, {int((labels >= 3).sum())} in all\) "
                                       rf"is outside the class list; valid labels are 0..2"):
    _load(idx_dir, preset=None, class_names=("a", "b", "c"))


def test_images_of_the_wrong_type(idx_dir, digits28):
  write_idx(idx_dir / "t10k-images-idx3-ubyte", digits28[0][NUM_TRAIN:].astype(np.int32),
            code=0x0C)
  with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: images must be uint8 "
                                       r"\[examples, rows, cols\], but the file holds int32"):
    _load(idx_dir)


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR),
                    reason=f"Debian's dataset-fashion-mnist is not installed ({FASHION_MNIST_DIR})")
def test_debian_fashion_mnist():
  data = load_source("fm", dict(source="idx", directory=FASHION_MNIST_DIR,
                                preset="fashion_mnist"))
  assert data.class_names == FASHION_MNIST_NAMES
  train, test = data.split("train"), data.split("test")
  assert (len(train), len(test)) == (60000, 10000)
  np.testing.assert_array_equal(np.bincount(test.fields["label"]), [1000] * 10)
