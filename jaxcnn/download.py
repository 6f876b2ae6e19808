"""Fetch MNIST, Fashion-MNIST and CIFAR-10 without TensorFlow, with pooch.

Preparing a tfds dataset needs TensorFlow (hundreds of MB for 11 MB of MNIST).
The raw files need nothing: pooch downloads each from the datasets' canonical
mirrors (the ones tfds and torchvision use), checks it against its published
MD5, and only then moves it into the cache, so an interrupted download never
leaves a file that looks complete. The existing IDX and CIFAR readers then read
the cache like any ``--data-dir``.

Cache: ``$JAXCNN_DATA_DIR``, else ``~/.cache/jaxcnn/datasets`` (under
``$XDG_CACHE_HOME`` when set), one folder per dataset. ``$JAXCNN_DATA_MIRROR``
names a base URL under which the files keep their names (an offline site's
copy, or a test's server); when it is set, it is the only place asked.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from jaxcnn.errors import UserError, first_line
from jaxcnn.report import cache_home


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a dataset's files come from: name -> published MD5, and the mirrors."""

    files: dict[str, str]
    mirrors: tuple[str, ...]
    archive: bool = False  # one .tar.gz to unpack (CIFAR-10's python batches)


SOURCES = {
    "mnist": Source(
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        (
            "https://storage.googleapis.com/cvdf-datasets/mnist/",  # tfds's
            "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's
        ),
    ),
    "fashion_mnist": Source(
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # tfds's, torchvision's
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
    ),
    "cifar10": Source(
        {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
        ("https://www.cs.toronto.edu/~kriz/",),
        archive=True,
    ),
}


def cache_root() -> Path:
    """``$JAXCNN_DATA_DIR``, else ``~/.cache/jaxcnn/datasets``."""
    if os.environ.get("JAXCNN_DATA_DIR"):
        return Path(os.environ["JAXCNN_DATA_DIR"]).expanduser()
    return cache_home() / "datasets"


def mirrors(name: str) -> tuple[str, ...]:
    """The base URLs to try for ``name``: ``$JAXCNN_DATA_MIRROR`` alone when set."""
    named = os.environ.get("JAXCNN_DATA_MIRROR")
    if named:
        return (named.rstrip("/") + "/",)
    return SOURCES[name].mirrors


def cached(name: str, source: Source | None = None) -> Path | None:
    """The folder to read ``name`` from if every file is already in the cache, else None.

    Files are only ever moved into the cache after their hash matched, so a
    file there is complete; this looks only at which files are there (no hashing),
    and :func:`fetch` would check each hash again.
    """
    source = source or SOURCES[name]
    folder = cache_root() / name
    if not all((folder / f).is_file() for f in source.files):
        return None
    return _readable(folder, source)


def fetch(name: str, source: Source | None = None) -> Path:
    """Download (or find in the cache) every file of ``name``; the folder to read.

    Raises:
        UserError: when no mirror answers (naming the URLs tried, the cache and
            ``--data-dir``), or a file does not match its published hash (the
            bad download is deleted).
    """
    import pooch

    source = source or SOURCES[name]
    folder = cache_root() / name
    for filename, md5 in source.files.items():
        tried = []
        for base in mirrors(name):
            url = base + filename
            tried.append(url)
            downloader = pooch.HTTPDownloader(progressbar=True, timeout=30)  # tqdm bars
            try:
                pooch.retrieve(
                    url, f"md5:{md5}", fname=filename, path=folder, downloader=downloader
                )
                break
            except ValueError as err:  # pooch: the hash does not match (the file is deleted)
                if "hash" not in str(err).lower():
                    raise
                raise UserError(
                    f"'{url}' does not match the published MD5 of {filename} ({md5}); the "
                    "download was deleted, as the mirror serves another file"
                ) from None
            except OSError as err:  # requests' errors are OSErrors: no network, 404, cut off
                reason = _reason(err)
        else:
            raise UserError(
                f"dataset '{name}' could not be downloaded (tried {', '.join(tried)}: {reason}); "
                f"once downloaded it is cached in '{folder}', or pass the files you have with "
                "--data-dir DIR; fashion_mnist also works offline from Debian's "
                "dataset-fashion-mnist package"
            )
    return _readable(folder, source)


def _readable(folder: Path, source: Source) -> Path:
    """The folder the readers take: for an archive, its unpacked copy (unpacked once)."""
    if not source.archive:
        return folder
    import shutil
    import tarfile

    (archive,) = source.files
    unpacked = folder / (archive + ".unpacked")
    if not unpacked.is_dir():
        tmp = folder / (archive + ".unpacking")
        shutil.rmtree(tmp, ignore_errors=True)  # what a killed run left half unpacked
        try:
            with tarfile.open(folder / archive) as tar:
                tar.extractall(tmp, filter="data")  # no paths outside tmp
        except (tarfile.TarError, OSError) as err:
            raise UserError(
                f"'{folder / archive}' cannot be unpacked ({first_line(err)})"
            ) from None
        tmp.rename(unpacked)  # complete, or not there
    return unpacked


def _reason(err: OSError) -> str:
    """A download failure in a few words: requests' own messages run to a paragraph."""
    import requests

    if isinstance(err, requests.HTTPError) and err.response is not None:
        return f"HTTP {err.response.status_code}"
    if isinstance(err, requests.ConnectionError) and "Connection refused" in str(err):
        return "connection refused"
    if isinstance(err, requests.Timeout):
        return "timed out"
    if isinstance(err, requests.ConnectionError):
        return "no connection (offline, or the host is unknown)"
    return first_line(err, 160)
