"""The `tfds` source on a tiny real TFDS dataset (scikit-learn digits), built without TensorFlow."""

import json
import pickle
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

import imp.data.tfds_source  # noqa: F401  (registers the "tfds" source)
from imp.data import eval_batches, load_source, task_dataset
from imp.data.sources import DIGIT_NAMES
from imp.data.tfds_source import TfdsSplit
from imp.tasks import Task, Variant

NUM_TRAIN, NUM_TEST = 150, 50


def _digits() -> tuple[np.ndarray, np.ndarray]:
  """uint8 [200, 8, 8] digits (0..16 scaled by 16) and int labels [200]."""
  from sklearn.datasets import load_digits

  digits = load_digits()
  n = NUM_TRAIN + NUM_TEST
  return np.clip(digits.images[:n] * 16, 0, 255).astype(np.uint8), digits.target[:n]


# Not registered: the source must read the prepared files alone (tfds's ReadOnlyBuilder), as it
# does for datasets prepared elsewhere; registering would also clash on re-import.
with tfds.core.registered.skip_registration():

  class TinyDigits(tfds.core.GeneratorBasedBuilder):
    """200 scikit-learn digits: train = the first 150, test = the last 50."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
      # tfds.features.Image needs TensorFlow to encode; Tensor does not.
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
          "gray": tfds.features.Tensor(shape=(8, 8), dtype=np.uint8),
          "label": tfds.features.ClassLabel(names=list(DIGIT_NAMES)),
          "raw_label": tfds.features.Scalar(dtype=np.int64),
          "caption": tfds.features.Text(),
      }))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(0, NUM_TRAIN),
              "test": self._generate_examples(NUM_TRAIN, NUM_TRAIN + NUM_TEST)}

    def _generate_examples(self, start: int, stop: int):
      images, labels = _digits()
      for i in range(start, stop):
        yield i, {"image": images[i][..., None], "gray": images[i], "label": int(labels[i]),
                  "raw_label": int(labels[i]), "caption": f"example {i}"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds")
  TinyDigits(data_dir=str(path), file_format="array_record").download_and_prepare()
  return path


def _load(data_dir, **settings):
  return load_source("tiny", dict(source="tfds", tfds_name="tiny_digits",
                                  data_dir=str(data_dir), **settings))


def _index(example) -> int:
  return int(str(example["text"]).split()[1])


def test_reads_the_generated_examples(data_dir):
  images, labels = _digits()
  data = _load(data_dir, label_templates=("a {}",))
  assert data.class_names == DIGIT_NAMES and data.modalities == ("image", "text")
  assert data.label_templates == ("a {}",)
  train, test = data.split("train"), data.split("test")
  assert (len(train), len(test)) == (NUM_TRAIN, NUM_TEST)
  example = train[0]
  assert set(example) == {"image", "label"}  # only the mapped fields
  assert example["image"].shape == (8, 8, 1) and example["image"].dtype == np.uint8
  assert example["label"].shape == () and example["label"].dtype == np.int32
  # TFDS stores examples in a hashed-key order: compare the splits as multisets.
  for split, (lo, hi) in ((train, (0, NUM_TRAIN)), (test, (NUM_TRAIN, NUM_TRAIN + NUM_TEST))):
    got = sorted((split[i]["image"].tobytes(), int(split[i]["label"])) for i in range(len(split)))
    want = sorted((images[i][..., None].tobytes(), int(labels[i])) for i in range(lo, hi))
    assert got == want


def test_feature_mapping_text_and_grayscale(data_dir):
  images, labels = _digits()
  data = _load(data_dir, features={"image": "gray", "label": "label", "text": "caption"})
  assert data.modalities == ("image", "text")
  test = data.split("test")
  seen = set()
  for i in range(len(test)):
    example = test[i]
    index = _index(example)  # the caption names the generator's example
    seen.add(index)
    assert example["image"].shape == (8, 8, 1)  # channel axis added to [8, 8]
    np.testing.assert_array_equal(example["image"][..., 0], images[index])
    assert int(example["label"]) == labels[index]
  assert seen == set(range(NUM_TRAIN, NUM_TRAIN + NUM_TEST))
  # Unlabelled: no class names, and no label text.
  unlabelled = _load(data_dir, features={"image": "image"})
  assert unlabelled.modalities == ("image",) and unlabelled.class_names == ()
  assert set(unlabelled.split("train")[0]) == {"image"}


def test_class_names_from_config_or_required(data_dir):
  names = tuple(f"c{i}" for i in range(10))
  assert _load(data_dir, class_names=list(names)).class_names == names
  plain = {"image": "image", "label": "raw_label"}
  assert _load(data_dir, features=plain, class_names=names).class_names == names
  with pytest.raises(ValueError, match=r"datasets.tiny.class_names: label feature 'raw_label' "
                                       r"of 'tiny_digits' is not a ClassLabel with names"):
    _load(data_dir, features=plain)
  with pytest.raises(ValueError, match=r"datasets.tiny.class_names has 3 names but label "
                                       r"feature 'label' of 'tiny_digits' has 10 classes"):
    _load(data_dir, class_names=("a", "b", "c"))


def test_sliced_splits(data_dir):
  data = _load(data_dir, splits={"train": "train[:90%]", "test": "train[90%:]",
                                 "all": "train+test"})
  train, test, every = data.split("train"), data.split("test"), data.split("all")
  assert (len(train), len(test), len(every)) == (135, 15, NUM_TRAIN + NUM_TEST)
  full = _load(data_dir, features={"image": "image", "text": "caption"}).split("train")
  order = [str(full[i]["text"]) for i in range(NUM_TRAIN)]
  sliced = _load(data_dir, features={"image": "image", "text": "caption"},
                 splits={"train": "train[:90%]", "test": "train[90%:]"})
  # Slices are contiguous ranges of the stored order: together they are the whole split.
  assert [str(sliced.split("train")[i]["text"]) for i in range(135)] == order[:135]
  assert [str(sliced.split("test")[i]["text"]) for i in range(15)] == order[135:]


def test_fields_are_lazy_whole_split_arrays(data_dir):
  data = _load(data_dir, features={"image": "image", "label": "label", "text": "caption"})
  test = data.split("test")
  assert list(test.fields) == ["image", "label", "text"] and len(test.fields) == 3
  assert test.fields._values is None  # nothing read until a field is used
  images = test.fields["image"]
  assert images.shape == (NUM_TEST, 8, 8, 1) and images.dtype == np.uint8
  assert test.fields["label"].shape == (NUM_TEST,) and test.fields["label"].dtype == np.int32
  for i in (0, 17, NUM_TEST - 1):
    np.testing.assert_array_equal(images[i], test[i]["image"])
    assert str(test.fields["text"][i]) == str(test[i]["text"])
  with pytest.raises(KeyError):
    test.fields["audio"]
  # Picklable for grain worker processes; the copy re-reads its fields lazily.
  copy = pickle.loads(pickle.dumps(test))
  assert copy.fields._values is None and len(copy) == NUM_TEST
  np.testing.assert_array_equal(copy.fields["image"], images)


class _RaggedSource:
  """Two decoded examples of different image sizes (what a variable-size Image gives)."""

  _examples = [{"img": np.zeros((4, 4, 3), np.uint8)}, {"img": np.zeros((5, 4, 3), np.uint8)}]

  def __len__(self):
    return len(self._examples)

  def __getitem__(self, index):
    return self._examples[index]

  def __getitems__(self, indices):
    return [self._examples[i] for i in indices]


def test_fields_of_variable_shape_examples_fail_clearly():
  split = TfdsSplit(_RaggedSource(), {"image": "img"}, "datasets.r.splits.train='train'")
  assert split[1]["image"].shape == (5, 4, 3)  # reading examples is fine
  with pytest.raises(ValueError, match=r"datasets.r.splits.train='train': field 'image' has "
                                       r"examples of different shapes \(\(4, 4, 3\), \(5, 4, 3\)"):
    split.fields["image"]


def test_pipeline_and_eval_batches(data_dir):
  data = _load(data_dir, label_templates=("the digit {}",))
  task = Task(name="t/base", entry="t", dataset="tiny", objective="nce",
              modalities=("image", "text"), weight=1.0,
              variant=Variant("base", batch_size=8, resolution=(16, 16), text_length=20))
  batch = next(iter(task_dataset(data, task, seed=0)))
  assert batch["image"].shape == (8, 16, 16, 1) and batch["image"].dtype == np.uint8
  assert batch["text"].shape == (8, 20) and batch["label"].shape == (8,)
  evals = eval_batches(data, "test", modality="image", resolution=(8, 8), batch_size=32)
  assert len(evals.batches) == 2 and evals.batches[1]["mask"].sum() == NUM_TEST - 32
  assert evals.labels.shape == (NUM_TEST,) and evals.raw.shape == (NUM_TEST, 64)
  np.testing.assert_array_equal(evals.labels, data.split("test").fields["label"])


def test_not_prepared(tmp_path, data_dir):
  with pytest.raises(ValueError, match=r"datasets.tiny.tfds_name='no_such_dataset': no prepared "
                                       r"TFDS dataset of that name in .*empty.*tfds build "
                                       r"no_such_dataset"):
    load_source("tiny", dict(source="tfds", tfds_name="no_such_dataset",
                             data_dir=str(tmp_path / "empty")))
  with pytest.raises(ValueError, match=r"datasets.tiny.tfds_name='tiny_digits': no prepared "):
    _load(tmp_path / "empty")
  # A dataset TFDS has code for, but not prepared here: nothing is downloaded.
  with pytest.raises(ValueError, match=r"datasets.tiny.tfds_name='mnist': TFDS knows this "
                                       r"dataset but it is not prepared in .*empty"):
    load_source("tiny", dict(source="tfds", tfds_name="mnist", data_dir=str(tmp_path / "empty")))
  assert not (tmp_path / "empty").exists()


def test_prepared_without_array_record(tmp_path, data_dir):
  copy = tmp_path / "copy"
  shutil.copytree(data_dir, copy)
  info_path = copy / "tiny_digits" / "1.0.0" / "dataset_info.json"
  info = json.loads(info_path.read_text())
  info["fileFormat"] = "tfrecord"
  info_path.write_text(json.dumps(info))
  with pytest.raises(ValueError, match=r"datasets.tiny.tfds_name='tiny_digits' in .*copy is not "
                                       r"prepared in the array_record format"):
    _load(copy)


def test_bad_features(data_dir):
  with pytest.raises(ValueError, match=r"datasets.tiny.features.label='target': 'tiny_digits' "
                                       r"has no such feature; its features: caption, gray, "
                                       r"image, label, raw_label"):
    _load(data_dir, features={"image": "image", "label": "target"})
  with pytest.raises(ValueError, match=r"datasets.tiny.features: 'caption' is not a field; valid "
                                       r"fields: image, label, text, audio, video"):
    _load(data_dir, features={"caption": "caption"})
  with pytest.raises(ValueError, match=r"datasets.tiny.features.image='raw_label': images must "
                                       r"be uint8 \[H, W\] or \[H, W, C\], but the feature is "
                                       r"int64 \[\]"):
    _load(data_dir, features={"image": "raw_label"})
  with pytest.raises(ValueError, match=r"datasets.tiny.features.label='image': labels must be "
                                       r"integer scalars"):
    _load(data_dir, features={"label": "image"}, class_names=DIGIT_NAMES)


def test_bad_and_empty_splits(data_dir):
  with pytest.raises(ValueError, match=r"datasets.tiny.splits.test='validation': not a split "
                                       r"of 'tiny_digits' .*; its splits: train, test"):
    _load(data_dir, splits={"train": "train", "test": "validation"})
  with pytest.raises(ValueError, match=r"datasets.tiny.splits.test='test\[50:\]': the split of "
                                       r"'tiny_digits' is empty"):
    _load(data_dir, splits={"train": "train", "test": "test[50:]"})
  with pytest.raises(ValueError, match=r"datasets.tiny.splits is empty"):
    _load(data_dir, splits={})
  with pytest.raises(ValueError, match=r"datasets.tiny.split is not a setting of source 'tfds'; "
                                       r"valid settings: .*Did you mean datasets.tiny.splits"):
    _load(data_dir, split={"train": "train"})


def test_reads_a_data_dir_in_a_bucket(data_dir, gcs_emulator):
  """data_dir=gs://...: TFDS finds the prepared dataset through epath and array_record reads
  its files from the bucket; the examples are those of the local copy."""
  from imp import paths

  bucket = gcs_emulator.make_bucket("tfds-data")
  paths.upload_tree(data_dir, f"{bucket}/tfds")
  local, remote = _load(data_dir), _load(f"{bucket}/tfds")
  # The reads go to the bucket: the data source's files are gs:// ones.
  files = [getattr(p, "filename", p) for p in remote.splits["train"]._source.data_source._paths]
  assert files and all(str(f).startswith("gs://tfds-data/tfds/") for f in files), files
  for split in ("train", "test"):
    assert len(remote.splits[split]) == len(local.splits[split])
    for index in (0, 7, len(local.splits[split]) - 1):
      got, want = remote.splits[split][index], local.splits[split][index]
      assert sorted(got) == sorted(want)
      for key in want:
        np.testing.assert_array_equal(got[key], want[key])
  assert remote.class_names == local.class_names


def test_reads_a_data_dir_in_s3_through_a_local_copy(data_dir, s3_emulator, tmp_path,
                                                     monkeypatch):
  """data_dir=s3://...: array_record cannot open s3://, so the dataset's folder is copied under
  $XDG_CACHE_HOME/imp/buckets once; the examples are the local ones."""
  from imp import paths

  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  bucket = s3_emulator.make_bucket("tfds-s3")
  paths.upload_tree(data_dir, f"{bucket}/tfds")
  local, remote = _load(data_dir), _load(f"{bucket}/tfds")
  copy = tmp_path / "cache" / "imp" / "buckets" / "s3" / "tfds-s3" / "tfds" / "tiny_digits"
  assert (copy / ".imp_copy.json").is_file()
  for index in (0, len(local.splits["test"]) - 1):
    got, want = remote.splits["test"][index], local.splits["test"][index]
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  with pytest.raises(ValueError, match=r"datasets.tiny.data_dir='s3://tfds-s3/nothing/tiny_"
                                       r"digits' does not exist"):
    _load(f"{bucket}/nothing")
