"""Downloads without TensorFlow (jaxcnn.download), against a server on 127.0.0.1.

The server is started by each test and serves files the test made (or Debian's real
Fashion-MNIST); ``$JAXCNN_DATA_MIRROR`` points the downloads at it, so no test
touches the internet. The tests' hashes replace the published ones for their files.
"""

import dataclasses
import functools
import hashlib
import http.server
import io
import json
import pickle
import tarfile
import threading

import numpy as np
import pytest

from jaxcnn import UserError, data, download, experiment, train
from tests.helpers import make_idx_dir, run_python


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves its folder; a file named in ``cut`` is sent only half, then the
    connection is dropped (its Content-Length still promises the whole)."""

    cut: frozenset = frozenset()

    def do_GET(self):
        name = self.path.lstrip("/")
        if name not in self.cut:
            return super().do_GET()
        body = (self.directory_path / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True
        return None

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture
def serve(monkeypatch):
    """``serve(folder, cut=())``: an HTTP server for ``folder`` on 127.0.0.1, set as the
    mirror; stopped after the test."""
    servers = []

    def start(folder, cut=()):
        handler = type("H", (Handler,), {"cut": frozenset(cut), "directory_path": folder})
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        monkeypatch.setenv("JAXCNN_DATA_MIRROR", f"http://127.0.0.1:{server.server_port}/")
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXCNN_DATA_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def idx_source(folder) -> download.Source:
    files = {p.name: md5(p) for p in sorted(folder.glob("*.gz"))}
    return download.Source(files, mirrors=("http://127.0.0.1:9/",))  # never asked: the mirror is


def test_idx_files_download_once_and_train_from_the_cache(tmp_path, serve, cache, monkeypatch):
    """Through the trainer: MNIST from the mirror, checked, cached; then from the cache."""
    (tmp_path / "site").mkdir()
    made = make_idx_dir(tmp_path / "site", n=64, compress=True)
    monkeypatch.setitem(download.SOURCES, "mnist", idx_source(tmp_path / "site"))
    server = serve(tmp_path / "site")
    config = train.get_config("basic_cnn", "mnist", epochs=1, batch_size=32)
    summary = experiment.train_and_evaluate(config, tmp_path / "run", progress=False)
    assert summary["data_source"] == str(cache / "mnist")
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(
        download.SOURCES["mnist"].files
    )
    split = data.load("mnist", "test")
    np.testing.assert_array_equal(split.images[..., 0], made["test"][0])
    server.shutdown()  # the second time nothing is asked of the network
    assert data.load("mnist", "train").labels.tolist() == made["train"][1].tolist()


def test_train_py_downloads_through_the_mirror(tmp_path, serve, cache):
    """``scripts/train.py`` itself, as a user runs it, with ``$JAXCNN_DATA_MIRROR`` and this
    test's hashes in place of the published ones (the only change made to the process)."""
    import os

    from tests.helpers import ENV, ROOT

    (tmp_path / "site").mkdir()
    make_idx_dir(tmp_path / "site", n=64, compress=True)
    files = idx_source(tmp_path / "site").files
    serve(tmp_path / "site")
    code = (
        "import runpy, sys; from jaxcnn import download; "
        f"download.SOURCES['mnist'] = download.Source({files!r}, mirrors=()); "
        "sys.argv = ['train.py'] + sys.argv[1:]; "
        f"runpy.run_path({str(ROOT / 'scripts' / 'train.py')!r}, run_name='__main__')"
    )
    env = {**ENV, **{k: os.environ[k] for k in ("JAXCNN_DATA_MIRROR", "JAXCNN_DATA_DIR")}}
    args = ["--model", "mlp", "--dataset", "mnist", "--epochs", "1", "--no-progress",
            "--workdir", str(tmp_path / "run")]  # fmt: skip
    out = run_python(code, *args, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"mlp on mnist ({cache / 'mnist'})" in out.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data_source"] == str(cache / "mnist") and summary["test_accuracy"] >= 0
    assert "Downloading" in out.stderr  # pooch's one line per file: the download happened


def cifar_archive(folder):
    """A CIFAR-10 python archive of 2 images per batch, as published (pickled dicts)."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in [*data.CIFAR_FILES["train"], *data.CIFAR_FILES["test"]]:
            batch = {b"data": rng.integers(0, 256, (2, 3072), np.uint8), b"labels": [3, 7]}
            raw = pickle.dumps(batch)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    path = folder / "cifar-10-python.tar.gz"
    path.write_bytes(buf.getvalue())
    return path


def test_cifar_archive_is_downloaded_and_unpacked(tmp_path, serve, cache, monkeypatch):
    (tmp_path / "site").mkdir()
    archive = cifar_archive(tmp_path / "site")
    source = download.Source({archive.name: md5(archive)}, mirrors=(), archive=True)
    monkeypatch.setitem(download.SOURCES, "cifar10", source)
    serve(tmp_path / "site")
    train_split = data.load("cifar10", "train")
    assert train_split.images.shape == (10, 32, 32, 3) and train_split.labels.tolist() == [3, 7] * 5
    assert data.load("cifar10", "test").images.shape == (2, 32, 32, 3)
    assert not list(cache.glob("cifar10/*.unpacking"))


def test_a_wrong_byte_is_refused_and_deleted(tmp_path, serve, cache):
    (tmp_path / "site").mkdir()
    make_idx_dir(tmp_path / "site", n=8, compress=True)
    source = idx_source(tmp_path / "site")
    path = tmp_path / "site" / "train-images-idx3-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    serve(tmp_path / "site")
    with pytest.raises(UserError, match="does not match the published MD5") as err:
        download.fetch("mnist", source)
    assert len(str(err.value).splitlines()) == 1 and "deleted" in str(err.value)
    left = {p.name for p in (cache / "mnist").iterdir()}
    assert "train-images-idx3-ubyte.gz" not in left
    assert left <= set(source.files)  # no temporary file either: only the good ones


def test_a_connection_dropped_halfway_leaves_no_file(tmp_path, serve, cache):
    (tmp_path / "site").mkdir()
    make_idx_dir(tmp_path / "site", n=300, compress=True)
    source = idx_source(tmp_path / "site")
    serve(tmp_path / "site", cut={"train-images-idx3-ubyte.gz"})
    with pytest.raises(UserError, match="could not be downloaded"):
        download.fetch("mnist", source)
    left = {p.name for p in (cache / "mnist").iterdir()}
    assert "train-images-idx3-ubyte.gz" not in left and left <= set(source.files)
    assert download.cached("mnist", source) is None  # nothing that looks complete


def test_an_unreachable_mirror_is_one_sentence(cache, monkeypatch):
    monkeypatch.setenv("JAXCNN_DATA_MIRROR", "http://127.0.0.1:9")
    with pytest.raises(UserError) as err:
        download.fetch("fashion_mnist")
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(
        "dataset 'fashion_mnist' could not be downloaded (tried "
        "http://127.0.0.1:9/train-images-idx3-ubyte.gz: connection refused)"
    )
    assert str(cache / "fashion_mnist") in message and "--data-dir" in message


def test_the_published_sources_name_every_file_the_readers_need():
    for name, source in download.SOURCES.items():
        assert source.mirrors and all(url.endswith("/") for url in source.mirrors), name
        assert all(len(h) == 32 and int(h, 16) >= 0 for h in source.files.values()), name
        if not source.archive:
            stems = {stem for pair in data.IDX_FILES.values() for stem in pair}
            assert {f.removesuffix(".gz") for f in source.files} == stems, name


@pytest.mark.skipif(not data.DEBIAN_FASHION_MNIST.is_dir(), reason="needs dataset-fashion-mnist")
def test_real_fashion_mnist_over_loopback_trains_as_from_disk(tmp_path, serve, cache, monkeypatch):
    """Debian's files served over HTTP: the same metrics as reading them from disk."""
    source = idx_source(data.DEBIAN_FASHION_MNIST)  # Debian recompressed them: own hashes
    monkeypatch.setitem(download.SOURCES, "fashion_mnist", source)
    serve(data.DEBIAN_FASHION_MNIST)
    config = train.get_config("mnist_cnn", "fashion_mnist", epochs=1, train_limit=500)
    from_disk = dataclasses.replace(config, data_dir=str(data.DEBIAN_FASHION_MNIST))
    disk = experiment.train_and_evaluate(from_disk, tmp_path / "disk", progress=False)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-here")
    fetched = experiment.train_and_evaluate(config, tmp_path / "net", progress=False)
    assert fetched["data_source"] == str(cache / "fashion_mnist")

    def losses(run):  # the metrics rows without their timings
        rows = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(r).items() if "second" not in k} for r in rows]

    assert losses("disk") == losses("net") and len(losses("net")) == 1
    assert fetched["test_accuracy"] == disk["test_accuracy"]
