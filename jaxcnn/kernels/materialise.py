"""Arrays XLA:CPU must write out once rather than recompute inside each consumer.

XLA fuses an elementwise producer into every consumer, and a consumer that reads
each element several times (a max pool's backward reads each pooled gradient for
all k*k window positions) recomputes it that many times. Where the producer is
costly (a row form's shifted sums, Winograd's overlap-add), writing it out once
is faster.
"""

from __future__ import annotations

import jax
from jax import lax

MATERIALISE_MIN = 1 << 18  # elements from which an output is worth writing out
# ... or elements per image, for outputs whose choice must not move with the batch size
MATERIALISE_MIN_PER_IMAGE = 4000


def materialise(a: jax.Array, token: jax.Array) -> jax.Array:
    """``a``, as the output of a conditional: XLA fuses nothing across one, so what made
    ``a`` is computed once and written out, not recomputed inside each consumer's fusion.

    ``lax.optimization_barrier`` does not do this on a CPU (XLA:CPU drops it before
    fusing: steps within 3% of none). The predicate is read from ``token``, a
    floating-point array (a kernel: replicated, so a batch-sharded program needs no
    collective for it), so that XLA cannot fold it: ``t == t`` is false for NaN
    (on integers XLA folds it to true, and the conditional vanishes). Both branches
    give ``a`` unchanged, whichever runs.
    """
    first = token[(0,) * token.ndim]
    return lax.cond(first == first, lambda a: a, lambda a: a * 1, a)


def materialise_if_large(a: jax.Array, token: jax.Array, *, per_image: bool = False) -> jax.Array:
    """:func:`materialise` for ``a`` of at least :data:`MATERIALISE_MIN` elements, ``a``
    as it is below: for a small array the recomputing costs less than the conditional.

    ``per_image``: count the elements of one image (``a``'s leading axis) against
    :data:`MATERIALISE_MIN_PER_IMAGE`, so that a batch run in parts
    (``jaxcnn.microbatch``) makes the choice the whole batch made.
    """
    if per_image:
        per_image_size = a.size // a.shape[0]  # from the shape: a[0] would trace a slice
        return materialise(a, token) if per_image_size >= MATERIALISE_MIN_PER_IMAGE else a
    return materialise(a, token) if a.size >= MATERIALISE_MIN else a
