"""Every tolerance the parity tests use, stated once with its reason.

On CPU both frameworks compute in float32 with different summation orders
(oneDNN vs XLA:CPU convolutions), which leaves differences of a few ULPs of the
largest partial sums: measured ~5e-7 on logits of magnitude <= 3.

On a GPU, both sides run with full float32 precision: ``conftest.py`` sets
``jax_default_matmul_precision='highest'`` and turns TF32 off in torch
(``allow_tf32 = False`` for cuDNN and cuBLAS). The same tolerances then
hold; with TF32 (10-bit mantissa) they would not, by three orders of magnitude.
"""

# Logits (or log-probabilities): max |jax - torch| over the batch.
LOGITS_ATOL = 1e-5

# Gradients of the seed's loss, per parameter tensor:
# max |g_jax - g_torch| <= rtol * max |g_torch| (+ GRAD_ATOL for all-but-zero grads).
# Relative to the tensor's largest entry, not element-wise: element-wise relative
# error is undefined for entries that are zero on one side and 1e-12 on the other.
# CPU: measured <= 5e-6. GPU (H100, full float32 on both sides): a first-layer
# weight gradient sums N*24*24 products with heavy cancellation, and there
# cuDNN's and XLA's float32 kernels are *each* up to 1.9e-3 away from the float64
# answer (measured against torch in float64 on CPU), so they can differ by ~2e-3
# between themselves; every other tensor agrees to ~1e-6. A wrong port is off by
# O(1), so 5e-3 still catches every porting bug the CPU bound catches.
GRAD_RTOL_CPU = 1e-5
GRAD_RTOL_GPU = 5e-3
GRAD_ATOL = 1e-9


# Parameters after optimizer steps, per tensor:
# max |p_jax - p_torch| <= STEP_RTOL * max |p_after - p_before| + PARAM_ULPS * eps32 * max |p|.
# The first term bounds the error of the step the optimizer decided (measured
# ~1e-7 relative); the second is float32 rounding of p + dp itself, a few ULPs
# of the parameter, which no implementation can avoid (measured 3 ULPs).
STEP_RTOL = 1e-5
PARAM_ULPS = 8

# The 20-step SGD training test (identical init and batches).
TRAJECTORY_RTOL = 1e-4
