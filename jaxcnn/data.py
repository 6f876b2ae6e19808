"""Datasets as uint8 arrays: local raw files, Debian's Fashion-MNIST, tfds, or a download.

Everything returns :class:`Split` (uint8 images [N, H, W, C], int32 labels [N]),
read once on the host. Preprocessing (x/255, normalisation, 28->32 padding) is
not done here: it runs inside the jitted step on each gathered batch
(:func:`preprocess`), so the whole split can live on the device as uint8.
"""

from __future__ import annotations

import dataclasses
import gzip
import pickle
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import UserError

DATASETS = ("mnist", "fashion_mnist", "cifar10")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
# What each label means, for the prediction grid (the datasets' published names).
CLASS_NAMES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion_mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "cifar10": (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Split:
    """One split of a dataset, on the host."""

    images: np.ndarray  # [N, H, W, C] uint8
    labels: np.ndarray  # [N] int32
    source: str  # where it was read from, for logs and summary.json

    def __post_init__(self):
        assert self.images.dtype == np.uint8 and self.images.ndim == 4
        assert self.labels.shape == (self.images.shape[0],)


class DataError(UserError):
    """No data, or data that cannot be trusted."""


# ---------------------------------------------------------------- raw files


def _open(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"'{path}' is truncated or unreadable ({err})") from None


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: big-endian magic, dims, then uint8 data).

    Raises:
        DataError: naming the file if it is truncated, corrupt or not uint8 IDX.
    """
    raw = _open(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"'{path}' is not a uint8 IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"'{path}' is truncated: its header is incomplete")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(
            f"'{path}' is truncated or corrupt: header promises {dims} = {expected} bytes, "
            f"file holds {len(raw) - header}"
        )
    return np.frombuffer(raw, np.uint8, expected, offset=header).reshape(dims)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (directory / name).is_file():
            return directory / name
    return None


def read_idx_split(directory: Path, split: str) -> Split:
    """MNIST / Fashion-MNIST raw files (``*-ubyte`` or ``*-ubyte.gz``) in ``directory``."""
    image_stem, label_stem = IDX_FILES[split]
    image_path, label_path = _find(directory, image_stem), _find(directory, label_stem)
    if image_path is None or label_path is None:
        raise DataError(
            f"no IDX files for the {split} split in '{directory}' "
            f"(expected {image_stem}[.gz] and {label_stem}[.gz])"
        )
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"'{image_path}' and '{label_path}' do not match: images {images.shape}, "
            f"labels {labels.shape}"
        )
    if len(images) == 0:
        raise DataError(f"'{image_path}' holds 0 images; the {split} split needs at least one")
    if labels.max(initial=0) > 9:
        raise DataError(f"'{label_path}' holds labels above 9: not a 10-class label file")
    return Split(images[..., None], labels.astype(np.int32), str(directory))


def read_cifar_split(directory: Path, split: str) -> Split:
    """CIFAR-10 python batches (``data_batch_1..5``, ``test_batch``) in ``directory``."""
    if (directory / "cifar-10-batches-py").is_dir():
        directory = directory / "cifar-10-batches-py"
    images, labels = [], []
    for name in CIFAR_FILES[split]:
        path = directory / name
        if not path.is_file():
            raise DataError(f"no CIFAR-10 batch '{name}' in '{directory}'")
        try:
            with open(path, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            data = np.asarray(batch[b"data"], np.uint8)
            batch_labels = np.asarray(batch[b"labels"], np.int32)
        except Exception as err:  # any unpickling failure means a corrupt batch file
            raise DataError(f"'{path}' is not a readable CIFAR-10 batch ({err})") from None
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(batch_labels):
            raise DataError(f"'{path}' is corrupt: data {data.shape}, labels {batch_labels.shape}")
        if len(data) == 0:
            raise DataError(f"'{path}' holds 0 images; a CIFAR-10 batch holds 10000")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    return Split(np.concatenate(images), np.concatenate(labels), str(directory))


# ---------------------------------------------------------------- tfds


def read_tfds_split(name: str, split: str, data_dir: str | None = None) -> Split | None:
    """A *prepared* tfds dataset through ``tfds.data_source`` (ArrayRecord; reading needs
    no TensorFlow), or None when tfds is not installed or has not prepared ``name``.

    tfds is never asked to download: preparing needs TensorFlow, and
    :mod:`jaxcnn.download` fetches the raw files without it.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        return None
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception:  # not prepared (tfds raises its own AssertionError/FileNotFoundError)
        return None
    records = [source[i] for i in range(len(source))]
    images = np.stack([r["image"] for r in records]).astype(np.uint8)
    labels = np.asarray([r["label"] for r in records], np.int32)
    if images.ndim == 3:
        images = images[..., None]
    return Split(images, labels, f"tfds:{name}/{split}")


# ---------------------------------------------------------------- entry point


def load(name: str, split: str, data_dir: str | Path | None = None) -> Split:
    """Load ``split`` ('train' or 'test') of dataset ``name``.

    Order of search: ``data_dir`` raw files if given; for ``fashion_mnist``,
    Debian's ``dataset-fashion-mnist`` files; a prepared tensorflow-datasets
    dataset; the download cache; a download (:mod:`jaxcnn.download`).
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}")
    if split not in IDX_FILES:
        raise DataError(f"unknown split '{split}'; choose 'train' or 'test'")
    reader = read_cifar_split if name == "cifar10" else read_idx_split
    directory = local_directory(name, data_dir)
    if directory is not None:
        if not directory.is_dir():
            raise DataError(f"--data-dir '{directory}' is not a directory")
        return reader(directory, split)
    prepared = read_tfds_split(name, split)
    if prepared is not None:
        return prepared
    from jaxcnn import download

    directory = download.cached(name) or download.fetch(name)
    return reader(directory, split)


def local_directory(name: str, data_dir: str | Path | None) -> Path | None:
    """The folder of raw files :func:`load` reads, where it reads files already on this
    machine (``data_dir``, or Debian's Fashion-MNIST): no tensorflow-datasets and no
    download, so the read can run in a thread beside the model's tracing. None otherwise."""
    if data_dir is not None:
        return Path(data_dir)
    if name == "fashion_mnist" and DEBIAN_FASHION_MNIST.is_dir():
        return DEBIAN_FASHION_MNIST
    return None


def permute_pixels(split: Split, seed: int = 0) -> Split:
    """Shuffle every image's pixels with one fixed permutation (seed 001 section 4).

    The same permutation (a function of ``seed`` and the image size only) is
    used for every image of every split, so the task stays learnable for a
    fully connected net while the spatial structure a CNN relies on is gone.
    """
    n, h, w, c = split.images.shape
    perm = np.random.default_rng(seed).permutation(h * w)
    images = split.images.reshape(n, h * w, c)[:, perm].reshape(n, h, w, c)
    return dataclasses.replace(split, images=images, source=split.source + " (pixels permuted)")


def check_compatible(split: Split, input_shape: tuple[int, int, int], model: str, dataset: str):
    """A clear error if images of this dataset cannot feed this model."""
    h, w, c = split.images.shape[1:]
    mh, mw, mc = input_shape
    if c != mc:
        raise DataError(
            f"model '{model}' takes {mc}-channel images but dataset '{dataset}' has {c} channels"
        )
    if (h, w) != (mh, mw) and not (h <= mh and w <= mw and (mh - h) % 2 == 0 and (mw - w) % 2 == 0):
        raise DataError(f"model '{model}' takes {mh}x{mw} images; dataset '{dataset}' has {h}x{w}")


def preprocess(
    images: jax.Array, input_shape: tuple[int, int, int], normalize: tuple[float, float] | None
) -> jax.Array:
    """uint8 [N,H,W,C] -> float32 model input, as the seed's transforms do.

    Zero padding of the raw image to the model's size first (28 -> 32 for LeNet-5
    and the blitz net: ``transforms.Pad(2)`` before ``ToTensor``, so the border is
    black background like the rest), then ``ToTensor`` (x/255), then
    ``Normalize(mean, std)`` if the recipe has it.
    """
    x = images.astype(jnp.float32) / 255.0
    dh, dw = input_shape[0] - x.shape[1], input_shape[1] - x.shape[2]
    if dh or dw:
        x = jnp.pad(x, ((0, 0), (dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2), (0, 0)))
    if normalize is not None:
        mean, std = normalize
        x = (x - mean) / std
    return x
