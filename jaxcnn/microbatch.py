"""A training step's batch in parts: the gradient summed over micro-batches.

Why: a CPU step streams every activation through the caches. Where its largest
intermediate is far past them (convnet's Winograd product at batch 100, 31.6 MiB;
cifar_cnn's at batch 200, 25 MiB; this machine's L3 is 32 MiB and its L2 2 MiB a
core), every op reads and writes main memory; in two halves the same ops ran
faster. Whole steps paired in one process (2-core AMD EPYC Zen 4, jax 0.10.2):
convnet 1.25x in 2 parts (1.15x in 4), cifar_cnn 1.13x in 2 and 1.16-1.18x in 4
to 8. The other seeds' largest intermediates are 1.4-7.5 MiB, and in 2 parts they
lost up to 15% (inception 0.85x): more ops, each smaller. So ``auto`` splits only
past :data:`SPLIT_FROM`.

With the C++ Winograd form (:mod:`jaxcnn.kernels.direct`) those products stay in the
caches: convnet's largest intermediate is 14.1 MiB and cifar_cnn's 12.5, so both stay
whole, measured faster (paired: convnet in 2 parts 0.905x, cifar_cnn in 4 0.964x and
in 8 0.952x).

The parts run in one ``lax.scan``, which keeps one part's intermediates alive at a
time; unrolled, XLA interleaved the halves (convnet 1.09x). From :data:`PAIRED_FROM`
parts the scan runs two parts an iteration (:func:`parts_per_iteration`): XLA then
overlaps one part's small ops with the other's on the two cores, and the caches hold
two parts' intermediates. Paired steps (2-core AMD EPYC Zen 4, jax 0.10.2): cifar_cnn
in 8 parts 1.04-1.11x (five runs, median 1.10), in 4 parts 1.12x, convnet in 4 parts
1.08x; cifar_cnn's 8 parts four an iteration 1.07x and all in one 0.78x, convnet's 2
parts in one 0.83x.
The parts are equal, so the batch's gradient is the mean of theirs: the same sum up to
float rounding, and the optimizer steps once. Dropout draws each part's masks from
``fold_in(key, part)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

SPLIT_FROM = 16 * 2**20  # auto splits a batch whose largest intermediate passes this
PART_BYTES = 4 * 2**20  # ... into parts whose largest intermediate is about this
PARAM_PARTS = 3  # ... but at least this many times the parameters' bytes
PAIRED_FROM = 4  # from this many parts, the scan runs two parts an iteration


def count_parts(requested: int, batch: int) -> int:
    """The parts an explicit ``--microbatches`` count gives a batch of ``batch`` images:
    the largest divisor of the batch up to ``requested`` (an epoch's last, partial
    batch may not divide by the count)."""
    return max(d for d in range(1, requested + 1) if batch % d == 0)


def auto_parts(batch: int, largest: int, param_bytes: int) -> int:
    """The parts ``auto`` gives a batch of ``batch`` images whose largest intermediate
    is ``largest`` bytes, for a model of ``param_bytes``.

    Auto splits past :data:`SPLIT_FROM`, aiming at :data:`PART_BYTES` a part (the
    fewest parts that reach it, if a divisor of the batch lies within twice that),
    and stops where a part's largest intermediate would be under :data:`PARAM_PARTS`
    times the parameters: each part adds a pass over the gradient, and convnet's
    (4.8 MB) made 4 parts 7% slower than 2, where cifar_cnn's (0.14 MB) left 8 parts
    7% faster than 2.
    """
    if largest <= SPLIT_FROM:
        return 1
    need = math.ceil(largest / PART_BYTES)
    most = max(1, int(largest // (PARAM_PARTS * param_bytes)))
    above = [d for d in range(need, min(2 * need, most) + 1) if batch % d == 0]
    return above[0] if above else count_parts(min(need, most), batch)


def largest_intermediate(fn: Callable, *args) -> int:
    """Bytes of the largest array ``fn(*args)`` computes, in any nested jaxpr."""
    sizes = [0]

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            sizes.extend(
                math.prod(v.aval.shape) * v.aval.dtype.itemsize
                for v in eqn.outvars
                if isinstance(getattr(v.aval, "dtype", None), np.dtype)  # not PRNG keys
            )
            for sub in _subjaxprs(eqn):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return max(sizes)


def _subjaxprs(eqn):
    """The jaxprs an equation's parameters hold (scan, custom VJP, pjit, cond, ...)."""
    for value in eqn.params.values():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            inner = getattr(item, "jaxpr", item)  # a ClosedJaxpr holds its jaxpr
            if hasattr(inner, "eqns"):
                yield inner


def value_and_grad(loss_fn: Callable, requested: int | str, params, images, labels, key):
    """``jax.value_and_grad(loss_fn)(params, images, labels, key)`` in the parts that
    ``requested`` (``Compute.microbatches``) comes to for this batch: ``"auto"``
    traces the whole batch's gradient once more to find its largest intermediate
    (only when a program is compiled; a stored one is not traced)."""
    batch = images.shape[0]
    if requested == "auto":
        grad_fn = jax.value_and_grad(loss_fn)
        largest = largest_intermediate(grad_fn, params, images, labels, key)
        parts = auto_parts(batch, largest, sum(p.nbytes for p in jax.tree.leaves(params)))
    else:
        parts = count_parts(int(requested), batch)
    return loss_and_grads(loss_fn, params, images, labels, key, parts)


def loss_and_grads(loss_fn: Callable, params, images, labels, key, parts: int):
    """``jax.value_and_grad(loss_fn)(params, images, labels, key)``, over ``parts``
    equal parts of the batch: the mean of the parts' losses and gradients."""
    grad_fn = jax.value_and_grad(loss_fn)
    if parts == 1:
        return grad_fn(params, images, labels, key)

    def split(a):
        return a.reshape(parts, a.shape[0] // parts, *a.shape[1:])

    def part(total, xs):
        i, part_images, part_labels = xs
        loss, grads = grad_fn(params, part_images, part_labels, jax.random.fold_in(key, i))
        return jax.tree.map(jnp.add, total, grads), loss

    zeros = jax.tree.map(jnp.zeros_like, params)
    xs = (jnp.arange(parts), split(images), split(labels))
    grads, losses = jax.lax.scan(part, zeros, xs, unroll=parts_per_iteration(parts))
    return losses.mean(), jax.tree.map(lambda g: g / parts, grads)


def parts_per_iteration(parts: int) -> int:
    """How many parts one iteration of the scan runs: 2 from :data:`PAIRED_FROM` parts
    (module docstring), else 1; an odd count's last part runs alone."""
    return 2 if parts >= PAIRED_FROM else 1
