"""The lab's random inputs: each model's dataset, and images of that dataset's raw size."""

import numpy as np
import pytest

from jaxcnn import models
from jaxcnn.lab.inputs import RAW_SHAPES, dataset_for, random_split


@pytest.mark.parametrize(
    ("model", "dataset"),
    [("cifar_cnn", "cifar10"), ("lenet5", "fashion_mnist"), ("inception", "fashion_mnist")],
)
def test_dataset_follows_the_model_channels(model, dataset):
    assert dataset_for(model) == dataset
    assert RAW_SHAPES[dataset][2] == models.get_spec(model).input_shape[2]


@pytest.mark.parametrize("dataset", sorted(RAW_SHAPES))
def test_random_split_has_the_raw_size_and_repeats(dataset):
    images, labels = random_split(dataset, 7)
    assert images.shape == (7, *RAW_SHAPES[dataset]) and images.dtype == np.uint8
    assert labels.shape == (7,) and labels.dtype == np.int32
    assert int(labels.min()) >= 0 and int(labels.max()) < 10
    again, _ = random_split(dataset, 7)
    other, _ = random_split(dataset, 7, seed=1)
    assert np.array_equal(images, again) and not np.array_equal(images, other)
