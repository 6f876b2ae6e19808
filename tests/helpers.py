"""Shared by the tests in tests/ and parity/: small IDX datasets and running the scripts."""

import contextlib
import gzip
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from jaxcnn import data

ROOT = Path(__file__).resolve().parents[1]
# No test reaches the internet: a dataset download goes to a closed loopback port
# (connection refused at once) and into a throw-away cache, unless a test says otherwise.
NO_NETWORK = {
    "JAXCNN_DATA_MIRROR": "http://127.0.0.1:9/",
    "JAXCNN_DATA_DIR": tempfile.mkdtemp(prefix="jaxcnn-test-data-"),
}
# Scripts run from the checkout, without the persistent cache (tests must not share state).
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "JAXCNN_CACHE_DIR": "off", **NO_NETWORK}


def variant(name: str, **more):
    """``compute.VARIANTS[name]`` (and ``more``) over the plain form, runnable here.

    Off a GPU, ``conv="pallas_wgrad"`` runs its kernel in Pallas's interpreter,
    which runs the same kernel program (indices, masks, loop) with XLA ops; on a
    GPU the tests run the compiled Triton kernel instead.
    """
    import dataclasses

    import jax

    from jaxcnn import compute

    interpret = jax.default_backend() != "gpu"
    return dataclasses.replace(
        compute.PLAIN, interpret=interpret, **compute.VARIANTS.get(name, {}), **more
    )


@pytest.fixture
def full_float32():
    """Full float32 matmuls and convolutions: on a GPU, XLA defaults to TF32 (10-bit
    mantissa), and two ways of computing the same thing would then differ by ~1e-3;
    no change on a CPU."""
    import jax

    with jax.default_matmul_precision("highest"):
        yield


@contextlib.contextmanager
def sigint_handled():
    """Python's own Ctrl-C handler inside the block, whatever this process inherited.

    A shell starts a background job with SIGINT ignored, and an ignored signal stays
    ignored in a child, where a handled one is reset to the default: so a test that
    sends SIGINT, to itself or to a process it starts here, tests the same thing
    however pytest was started.
    """
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, inherited)


def run_script(script: str, *args: str, env: dict | None = None, timeout: int = 300, cwd=None):
    """``python scripts/<script> args...`` (in ``cwd``), output captured."""
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args],
        capture_output=True,
        text=True,
        env=env or ENV,
        timeout=timeout,
        cwd=cwd,
    )


def run_python(code: str, *args: str, env: dict | None = None, timeout: int = 300):
    """``python -c code args...`` in a fresh interpreter, output captured."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env or ENV,
        timeout=timeout,
    )


def write_idx(path, array, compress=False):
    """An IDX file as published for MNIST: magic, big-endian dims, uint8 data."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def make_idx_dir(directory, n=20, compress=False, learnable=False):
    """Random train and test IDX files for ``n`` images each; returns what was written.

    ``learnable``: each image is its class's fixed random template plus noise, so
    a model learns and its gradients carry signal. With pure noise and random
    labels the loss sits at log(10) and training amplifies float rounding (max-pool
    near-ties, Adam dividing by tiny second moments): useless for comparing two
    ways of computing the same trajectory.
    """
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, (10, 28, 28))
    suffix = ".gz" if compress else ""
    splits = {}
    for split, (img, lab) in data.IDX_FILES.items():
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        if learnable:
            images = (0.5 * templates[labels] + 0.5 * images).astype(np.uint8)
        write_idx(directory / (img + suffix), images, compress)
        write_idx(directory / (lab + suffix), labels, compress)
        splits[split] = (images, labels)
    return splits
