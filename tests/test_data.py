"""Data readers: IDX (plain and gz, truncated, corrupt), CIFAR batches, tfds, errors."""

import pickle

import numpy as np
import pytest

from jaxcnn import data
from tests.helpers import make_idx_dir, write_idx


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    written = make_idx_dir(tmp_path, compress=compress)
    for split, (images, labels) in written.items():
        got = data.load("mnist", split, tmp_path)
        assert got.images.shape == (20, 28, 28, 1) and got.images.dtype == np.uint8
        np.testing.assert_array_equal(got.images[..., 0], images)
        np.testing.assert_array_equal(got.labels, labels)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_idx_is_named(tmp_path, compress):
    make_idx_dir(tmp_path, compress=compress)
    name = data.IDX_FILES["train"][0] + (".gz" if compress else "")
    raw = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(data.DataError, match=f"{name}.*truncated"):
        data.load("fashion_mnist", "train", tmp_path)


def test_corrupt_idx_magic(tmp_path):
    make_idx_dir(tmp_path)
    (tmp_path / data.IDX_FILES["test"][1]).write_bytes(b"\x12\x34\x56\x78garbage")
    with pytest.raises(data.DataError, match="not a uint8 IDX file"):
        data.load("mnist", "test", tmp_path)


def test_mismatched_counts(tmp_path):
    make_idx_dir(tmp_path)
    write_idx(tmp_path / data.IDX_FILES["test"][1], np.zeros(7, np.uint8))
    with pytest.raises(data.DataError, match="do not match"):
        data.load("mnist", "test", tmp_path)


def test_missing_files_and_dirs(tmp_path):
    with pytest.raises(data.DataError, match="no IDX files for the train split"):
        data.load("mnist", "train", tmp_path)
    with pytest.raises(data.DataError, match="is not a directory"):
        data.load("mnist", "train", tmp_path / "nope")
    with pytest.raises(data.DataError, match="unknown dataset 'svhn'"):
        data.load("svhn", "train")


def write_cifar(directory, n=10):
    rng = np.random.default_rng(1)
    directory.mkdir(parents=True)
    batches = {}
    for name in data.CIFAR_FILES["train"] + data.CIFAR_FILES["test"]:
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": list(rng.integers(0, 10, n)),
        }
        with open(directory / name, "wb") as fh:
            pickle.dump(batch, fh)
        batches[name] = batch
    return batches


def test_cifar_batches(tmp_path):
    batches = write_cifar(tmp_path / "cifar-10-batches-py")
    test = data.load("cifar10", "test", tmp_path)
    assert test.images.shape == (10, 32, 32, 3)
    # channel-major rows of 1024 R, then G, then B values
    first = batches["test_batch"][b"data"][0]
    np.testing.assert_array_equal(test.images[0, :, :, 1].ravel(), first[1024:2048])
    assert data.load("cifar10", "train", tmp_path).images.shape == (50, 32, 32, 3)


def test_corrupt_cifar_batch(tmp_path):
    write_cifar(tmp_path / "c")
    (tmp_path / "c" / "test_batch").write_bytes(b"\x80\x04truncated")
    with pytest.raises(data.DataError, match="test_batch.*not a readable CIFAR-10 batch"):
        data.load("cifar10", "test", tmp_path / "c")


def test_channel_mismatch_is_an_error(tmp_path):
    write_cifar(tmp_path / "c")
    split = data.load("cifar10", "test", tmp_path / "c")
    with pytest.raises(data.DataError, match="'basic_cnn' takes 1-channel.*has 3 channels"):
        data.check_compatible(split, (28, 28, 1), "basic_cnn", "cifar10")


def test_tfds_path_under_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        split = data.load("mnist", "train")
    assert split.images.shape == (12, 28, 28, 1) and split.images.dtype == np.uint8
    assert split.labels.shape == (12,) and split.source == "tfds:mnist/train"


def test_preprocess_normalises_and_pads():
    images = np.full((2, 28, 28, 1), 255, np.uint8)
    x = np.asarray(data.preprocess(images, (32, 32, 1), (0.1307, 0.3081)))
    assert x.shape == (2, 32, 32, 1)
    np.testing.assert_allclose(x[0, 2, 2, 0], (1 - 0.1307) / 0.3081, rtol=1e-6)
    np.testing.assert_allclose(x[0, 0, 0, 0], (0 - 0.1307) / 0.3081, rtol=1e-6)  # black border
    np.testing.assert_allclose(np.asarray(data.preprocess(images, (28, 28, 1), None)), 1.0)


def test_local_splits_are_read_in_a_thread_and_its_error_reaches_the_caller(tmp_path, monkeypatch):
    """``experiment.read_splits``: files on this machine are read beside the model's
    tracing (another thread), the same splits as a direct read; a damaged file's error
    is raised where the caller waits, as the same one-line DataError."""
    import threading

    from jaxcnn import experiment, train

    make_idx_dir(tmp_path, n=30)
    config = train.get_config("simple_cnn", "mnist", data_dir=str(tmp_path))
    threads, load = [], data.load

    def recorded(*args):
        threads.append(threading.current_thread())
        return load(*args)

    monkeypatch.setattr(data, "load", recorded)
    train_split, test_split = experiment.read_splits(config)()
    assert threads and all(t is not threading.main_thread() for t in threads)
    np.testing.assert_array_equal(train_split.images, load("mnist", "train", str(tmp_path)).images)
    np.testing.assert_array_equal(test_split.labels, load("mnist", "test", str(tmp_path)).labels)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03")  # header cut short
    wait = experiment.read_splits(config)
    with pytest.raises(data.DataError, match="train-images"):
        wait()


def test_splits_from_tfds_or_a_download_are_read_in_the_callers_thread(monkeypatch):
    """Not local: read where Ctrl-C lands (the caller's thread), and only when waited for."""
    import threading

    from jaxcnn import experiment, train

    config = train.get_config("simple_cnn", "mnist")
    threads = []
    monkeypatch.setattr(data, "load", lambda *a: threads.append(threading.current_thread()))
    wait = experiment.read_splits(config)
    assert threads == []
    wait()
    assert threads == [threading.main_thread()] * 2
