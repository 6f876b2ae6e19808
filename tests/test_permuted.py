"""Seed 001 section 4: one fixed pixel permutation, the same for every image and split."""

import json

import numpy as np
from flax import nnx

from jaxcnn import data, experiment, models, train
from tests.helpers import make_idx_dir


def test_one_fixed_permutation_for_all_images(tmp_path):
    make_idx_dir(tmp_path, n=5)
    split = data.load("mnist", "test", tmp_path)
    permuted = data.permute_pixels(split)
    flat, flat_p = split.images.reshape(5, -1), permuted.images.reshape(5, -1)
    perm = np.random.default_rng(0).permutation(28 * 28)
    np.testing.assert_array_equal(flat_p, flat[:, perm])
    np.testing.assert_array_equal(data.permute_pixels(split).images, permuted.images)
    assert not np.array_equal(flat_p, flat)


def losses(workdir):
    return [
        json.loads(r)["train_loss"] for r in (workdir / "metrics.jsonl").read_text().splitlines()
    ]


def test_mlp_is_blind_to_the_permutation(tmp_path):
    """An MLP on permuted pixels with its first-layer rows permuted alike is the same net."""
    (tmp_path / "idx").mkdir()
    make_idx_dir(tmp_path / "idx", n=200)
    kw = {"epochs": 2, "data_dir": str(tmp_path / "idx"), "seed": 1}
    plain = train.get_config("mlp", "mnist", **kw)
    experiment.train_and_evaluate(plain, tmp_path / "plain", progress=False)

    model = models.create("mlp", rngs=nnx.Rngs(params=1, dropout=1))
    perm = np.random.default_rng(0).permutation(28 * 28)
    first = model.network.layers[0].kernel
    first[...] = np.asarray(first[...])[perm]  # row i now reads pixel perm[i]
    shuffled = train.get_config("mlp", "mnist", permute_pixels=True, **kw)
    experiment.train_and_evaluate(shuffled, tmp_path / "perm", init_model=model, progress=False)

    np.testing.assert_allclose(losses(tmp_path / "perm"), losses(tmp_path / "plain"), rtol=1e-5)
