"""What the lab's measurements train on: each model's dataset and random batches of it.

``scripts/ab.py`` and ``scripts/profile_models.py`` time steps on random uint8
images rather than a dataset's files, so they run where no data is. The images
have the dataset's raw size (28x28x1 for Fashion-MNIST, 32x32x3 for CIFAR-10),
not the model's input size, so the step pads them inside the program as it does
in training (LeNet-5's 28 -> 32).
"""

from __future__ import annotations

import jax
import numpy as np

# The raw [H, W, C] of each dataset's images, before the step's preprocessing.
RAW_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


def dataset_for(model: str) -> str:
    """The dataset the lab measures ``model`` on: CIFAR-10 for 3-channel models,
    Fashion-MNIST (the one real dataset on the project's machines) otherwise."""
    from jaxcnn import models

    return "cifar10" if models.get_spec(model).input_shape[2] == 3 else "fashion_mnist"


def random_split(dataset: str, n: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """``n`` random uint8 images of ``dataset``'s raw size and int32 labels, on the device."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *RAW_SHAPES[dataset]), np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int32)
    return jax.device_put(images), jax.device_put(labels)
