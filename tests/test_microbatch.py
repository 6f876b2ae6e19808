"""A batch in parts (``--microbatches``): the same gradient, and auto's choice of parts."""

import argparse

import jax
import numpy as np
import pytest

from jaxcnn import compute, microbatch, train
from jaxcnn.errors import UserError
from jaxcnn.kernels import direct
from jaxcnn.lab.inputs import random_split
from jaxcnn.objectives import seed_loss

MIB = 2**20


def test_a_count_is_the_largest_divisor_of_the_batch_up_to_it():
    assert microbatch.count_parts(4, 200) == 4
    assert microbatch.count_parts(3, 100) == 2
    assert microbatch.count_parts(8, 97) == 1  # a prime partial batch runs whole
    assert microbatch.count_parts(1, 64) == 1


def test_auto_splits_only_past_the_threshold_and_not_below_the_parameters():
    auto = microbatch.auto_parts
    assert auto(100, 7.5 * MIB, 1_000_000) == 1  # mnist_cnn: stays whole
    assert auto(200, 25 * MIB, 140_000) == 8  # cifar_cnn: ~3 MiB parts of 25 images
    assert auto(100, 31.6 * MIB, 4_800_000) == 2  # convnet: its 4.8 MB gradient caps it
    assert auto(97, 40 * MIB, 1000) == 1  # no divisor: whole
    assert auto(96, 40 * MIB, 1000) == 12  # the fewest parts of at most 4 MiB that divide 96


def _loss_fn(program):
    def loss_fn(params, images, labels, key):
        return seed_loss(program.apply(params, images, key), labels, program.config.loss)

    return loss_fn


def _cifar_gradient(batch: int):
    """cifar_cnn's loss function and ``loss_and_grads``' arguments for a random batch."""
    config = train.get_config("cifar_cnn", "cifar10", batch_size=batch, microbatches=1)
    program, state = train.create_program(config)
    images, labels = random_split("cifar10", batch)
    return _loss_fn(program), (state.params, images, labels, jax.random.key(0))


@pytest.mark.parametrize("parts", [2, 4])
def test_parts_give_the_batch_gradient(parts):
    loss_fn, args = _cifar_gradient(8)
    loss, grads = microbatch.loss_and_grads(loss_fn, *args, 1)
    split_loss, split_grads = microbatch.loss_and_grads(loss_fn, *args, parts)
    assert np.isclose(split_loss, loss, rtol=1e-6)
    for whole, split in zip(jax.tree.leaves(grads), jax.tree.leaves(split_grads), strict=True):
        scale = float(np.abs(whole).max())
        assert scale > 0 and np.abs(np.asarray(split) - np.asarray(whole)).max() <= 1e-5 * scale


def test_a_training_step_in_parts_steps_as_the_whole_batch():
    """Through ``train_step`` and the flag: SGD's step is lr times the gradient."""
    images, labels = random_split("mnist", 16)
    states = {}
    for parts in (1, 4):
        config = train.get_config("basic_cnn", "mnist", batch_size=16, microbatches=parts)
        program, state = train.create_program(config)
        step = jax.jit(lambda s, x, y, p=program: train.train_step(p, s, (x, y), jax.random.key(0)))
        states[parts] = jax.tree.leaves(step(state, images, labels)[0].params)
    for whole, split in zip(states[1], states[4], strict=True):
        assert np.allclose(split, whole, rtol=1e-5, atol=1e-7)


@pytest.fixture
def parts_seen(monkeypatch):
    """The part counts that ``train_step`` hands to ``loss_and_grads``, in call order."""
    seen = []
    loss_and_grads = microbatch.loss_and_grads
    monkeypatch.setattr(
        microbatch, "loss_and_grads", lambda *a: seen.append(a[-1]) or loss_and_grads(*a)
    )
    return seen


def _trace_step(program, state, n):
    images, labels = random_split(program.config.dataset, n)
    key = jax.random.key(0)
    jax.eval_shape(lambda s: train.train_step(program, s, (images, labels), key), state)


@pytest.mark.parametrize(
    ("model", "cpp_winograd", "parts"),
    [("convnet", False, 2), ("convnet", True, None), ("mnist_cnn", True, 1)],
)
def test_auto_splits_the_seed_steps_with_large_intermediates(
    model, cpp_winograd, parts, parts_seen, monkeypatch
):
    # convnet's conv2 in Winograd's XLA form (no C++ compiler) writes a 31.6 MiB product
    # at batch 100; the C++ form keeps it in the caches, and the step stays whole (1 part:
    # 1.10x faster than 2, paired, docs/speed.md)
    if not cpp_winograd:
        monkeypatch.setattr(direct, "WINOGRAD_AUTO", set())
    if parts is None:
        parts = 1 if direct.available() else 2
    config = train.get_config(model, "mnist", backend="cpu")
    assert config.compute.microbatches == "auto"
    program, state = train.create_program(config)
    _trace_step(program, state, config.batch_size)
    assert parts_seen == [parts]


def test_a_count_reaches_the_step_and_a_partial_batch_takes_a_divisor(parts_seen):
    config = train.get_config("basic_cnn", "mnist", batch_size=16, microbatches=4)
    program, state = train.create_program(config)
    for n in (16, 6):  # a full batch, and an epoch's last of 6 images
        _trace_step(program, state, n)
    assert parts_seen == [4, 3]


def test_the_flag_takes_auto_or_a_count():
    parser = argparse.ArgumentParser()
    compute.add_flags(parser)
    assert parser.parse_args(["--microbatches", "4"]).microbatches == 4
    assert parser.parse_args(["--microbatches", "auto"]).microbatches == "auto"
    for bad in ("0", "x", "-2"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--microbatches", bad])
    assert compute.resolve({"microbatches": "auto"}, backend="gpu").microbatches == 1
    with pytest.raises(UserError, match="--microbatches takes auto or a count"):
        compute.resolve({"microbatches": 0}, backend="cpu")
    with pytest.raises(UserError, match="--microbatches needs --devices 1"):
        train.get_config("basic_cnn", "mnist", batch_size=8, devices=2, microbatches=2)


def test_a_batch_in_parts_keeps_the_kernels_choices(monkeypatch):
    """Winograd's input gradient is written out by its size per image (a conditional,
    ``kernels.materialise``), so cifar_cnn's batch in 8 parts keeps the whole batch's.
    Its conv2 in Winograd's XLA form, as where there is no C++ compiler (the C++ form
    writes nothing out)."""
    monkeypatch.setattr(direct, "WINOGRAD_AUTO", set())
    images, labels = random_split("cifar10", 200)
    key = jax.random.key(0)
    conds = {}
    for parts in (1, 8):
        config = train.get_config("cifar_cnn", "cifar10", microbatches=parts)
        program, state = train.create_program(config)
        jaxpr = jax.make_jaxpr(lambda s, p=program: train.train_step(p, s, (images, labels), key))
        conds[parts] = str(jaxpr(state)).count("cond[")
    assert conds[8] == conds[1] == 2  # the forward's output and the input gradient


def _scan_unrolls(parts: int) -> list[int]:
    """The ``unroll`` of every scan in the jaxpr of a cifar_cnn gradient in ``parts``."""
    loss_fn, args = _cifar_gradient(24)
    jaxpr = jax.make_jaxpr(lambda *a: microbatch.loss_and_grads(loss_fn, *a, parts))
    return [e.params["unroll"] for e in jaxpr(*args).jaxpr.eqns if e.primitive.name == "scan"]


@pytest.mark.parametrize(("parts", "unroll"), [(2, 1), (3, 1), (4, 2), (8, 2)])
def test_from_four_parts_the_scan_runs_two_an_iteration(parts, unroll):
    assert _scan_unrolls(parts) == [unroll]
