"""Compiling for an H100 without one (jaxcnn/lab/aot.py, scripts/gpu_census.py).

The census tests compile real epochs with XLA's GPU compiler and Triton, which
needs jax's CUDA plugin: ``.ci/run`` installs it beside the environment and sets
``JAXCNN_CUDA_PLUGIN``; without that variable they are skipped (the rest runs
anywhere). Compiling, not running: they show that every kernel fits the device
(Triton's shared-memory and register limits) and which kernels a step launches.
"""

import json
import os

import jax
import jax.numpy as jnp
import pytest

from jaxcnn import UserError, compute, train
from jaxcnn.lab import aot
from tests.helpers import ENV, run_python, run_script

PLUGIN = os.environ.get("JAXCNN_CUDA_PLUGIN")
needs_plugin = pytest.mark.skipif(not PLUGIN, reason="JAXCNN_CUDA_PLUGIN is not set")


def test_resolving_for_a_gpu_answers_as_a_gpu_would():
    """The backend is an argument: the same request resolves per backend, here too."""
    assert compute.resolve({}, backend="cpu").conv == "im2col"
    assert compute.resolve({}, backend="cpu").pool == "reshape"
    with pytest.raises(UserError, match="GPU kernel"):
        compute.resolve({"conv": "pallas_wgrad"}, backend="cpu")
    assert compute.resolve({}, backend="gpu").conv == "xla"
    assert compute.resolve({}, backend="gpu").pool == "xla"
    assert compute.resolve({"conv": "pallas_wgrad"}, backend="gpu").conv == "pallas_wgrad"
    assert aot.gpu_config("inception", conv="pallas_wgrad").compute.conv == "pallas_wgrad"
    # and what this process runs on is untouched by it
    here = train.get_config("inception", "mnist").compute
    assert here == compute.resolve({}, backend=jax.default_backend())


def test_census_counts_the_loop_body_per_step_and_the_rest_once():
    """On this CPU's own HLO: the step's work is in the scan's body, once per unrolled step."""
    counts = {}
    for unroll in (1, 2):
        config = train.get_config("basic_cnn", "mnist", batch_size=8, unroll=unroll)
        program, state = train.create_program(config)
        images = jnp.zeros((8 * 4 + 3, 28, 28, 1), jnp.uint8)  # 4 full batches and a partial
        labels = jnp.zeros(8 * 4 + 3, jnp.int32)
        compiled = train.make_epoch_fn(program).lower(state, images, labels, 0).compile()
        counts[unroll] = aot.census(compiled.as_text(), unroll)
    one, two = counts[1], counts[2]
    assert one.step_total > 0
    assert sum(one.outside.values()) > 0  # the permutation and the partial batch's step
    # two steps per iteration: per step, at most what one step per iteration launches
    # (XLA may fuse across the two), and more than half of it, which is what an
    # unroll that did nothing would count (one step's body divided by two)
    assert 0.75 * one.step_total < two.step_total <= one.step_total


def test_census_reads_tuple_shaped_instructions_and_names_custom_calls():
    hlo = """HloModule m

%body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p = (s32[], f32[4]{0}) parameter(0)
  %a = f32[4]{0} get-tuple-element(%p), index=1
  %c = (f32[4]{0}, u8[0]{0}) custom-call(%a), custom_call_target="__cudnn$convBackwardFilter"
  %f = f32[4]{0} fusion(%a), kind=kLoop, calls=%x
  %g = f32[4]{0} fusion(%a), kind=kCustom, calls=%y, backend_config={"fusion_backend_config":{"kind":"__triton_gemm"}}
  %k = (f32[4]{0}, f32[2]{0}) custom-call(%a), custom_call_target="__gpu$xla.gpu.triton"
  ROOT %t = (s32[], f32[4]{0}) tuple(%p, %f)
}

ENTRY %main (x: f32[4]) -> f32[4] {
  %x = f32[4]{0} parameter(0)
  %w = (s32[], f32[4]{0}) while(%x), condition=%cond, body=%body
  %s = f32[4]{0} copy(%x)
  ROOT %r = f32[4]{0} get-tuple-element(%w), index=1
}
"""  # noqa: E501
    counts = aot.census(hlo)
    assert counts.per_step == {
        "cuDNN conv weight grad": 1,
        "XLA fusion (elementwise)": 1,
        "XLA gemm (Triton)": 1,
        "Pallas kernel (Triton)": 1,
    }
    assert counts.outside == {"copy": 1}


def test_a_missing_plugin_is_one_line():
    out = run_script("gpu_census.py", "--models", "mnist_cnn", "--plugin-dir", "/nonexistent")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "jax_plugins" in out.stderr
    env = {k: v for k, v in ENV.items() if k != "JAXCNN_CUDA_PLUGIN"}
    out = run_script("gpu_census.py", "--models", "mnist_cnn", env=env)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: compiling for a GPU needs")


@needs_plugin
def test_every_model_compiles_for_an_h100_with_the_kernels_each_option_promises(tmp_path):
    """XLA's GPU compiler and Triton build each model's epoch under the GPU options.

    pallas_wgrad: one Triton kernel per convolution, no cuDNN weight gradient (in
    float32 and bfloat16, whose Triton dots differ) and no extra copy; gemm_wgrad: no cuDNN
    weight gradient either; fused inception: fewer cuDNN forward convolutions;
    pool="reshape": fewer launches. convnet (two convolutions, as mnist_cnn
    has) is left out: its 6 of the 24 GPU compiles checked nothing the others do not,
    and this test was the suite's longest (448 s on the 2-core EPYC).
    """
    convs = {"mnist_cnn": 2, "inception": 16, "resnet": 6}  # the models, and their convolutions
    out = tmp_path / "census"
    proc = run_script(
        "gpu_census.py", "--models", *convs,
        "--no-variants", "--variant", "pallas:conv=pallas_wgrad",
        "--variant", "pallas_bf16:conv=pallas_wgrad,dtype=bfloat16",
        "--variant", "gemm:conv=gemm_wgrad", "--variant", "pool:pool=reshape",
        "--variant", "fused:fuse=1", "--plugin-dir", PLUGIN, "--out", str(out),
        env={**ENV, "JAX_PLATFORMS": "cpu"}, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["environment"]["compiled_for"] == "NVIDIA H100 80GB HBM3"
    rows = {(r["model"], r["variant"]): r["per_step"] for r in result["rows"]}
    for name, count in convs.items():
        plain = rows[(name, "default")]
        assert plain.get("cuDNN conv weight grad", 0) > 0, name
        for variant in ("pallas", "pallas_bf16"):
            assert rows[(name, variant)].get("Pallas kernel (Triton)") == count, (name, variant)
            assert "cuDNN conv weight grad" not in rows[(name, variant)], (name, variant)
        # dW leaves the kernel in the byte order XLA keeps the weights in: no copies
        # beyond the plain form's (HWIO order cost resnet 6 more per step)
        assert rows[(name, "pallas")].get("copy", 0) <= plain.get("copy", 0), name
        assert "cuDNN conv weight grad" not in rows[(name, "gemm")], name
        # a pool's gradient without its zeroed buffer and select_and_scatter
        assert sum(rows[(name, "pool")].values()) < sum(plain.values()), name
    fwd = "cuDNN conv forward"
    assert rows[("inception", "fused")][fwd] < rows[("inception", "default")][fwd]
    assert "| `inception` | 64 | pallas |" in out.with_suffix(".md").read_text()


@needs_plugin
def test_a_kernel_over_the_devices_shared_memory_does_not_compile(tmp_path):
    """The compile really is the device's: a launch shape whose tiles need 768 KiB of
    shared memory (an H100 block has 227 KiB) is refused by Triton's compilation."""
    code = f"""
import os, sys
sys.path.insert(0, {PLUGIN!r})
os.environ.update(JAX_PLATFORMS="cpu", JAX_SKIP_CUDA_CONSTRAINTS_CHECK="1")
import jax, jax.numpy as jnp
from jaxcnn.lab import aot
from jaxcnn.kernels import pallas_wgrad as pw
sharding = jax.sharding.SingleDeviceSharding(aot.topology().devices[0])
x = jax.ShapeDtypeStruct((64, 12, 12, 512), jnp.float32, sharding=sharding)
dy = jax.ShapeDtypeStruct((64, 8, 8, 512), jnp.float32, sharding=sharding)
f = jax.jit(lambda x, dy: pw.weight_and_bias_grad(x, dy, (5, 5), 1, 0))
f.lower(x, dy).compile()
print("compiled at the default launch shape")
big = pw.Launch(max_channel_block=512, tile_elements=1 << 20)
f = jax.jit(lambda x, dy: pw.weight_and_bias_grad(x, dy, (5, 5), 1, 0, launch=big))
f.lower(x, dy).compile()
"""
    proc = run_python(code, timeout=600)
    assert "compiled at the default launch shape" in proc.stdout, proc.stderr[-2000:]
    assert proc.returncode != 0
    assert "Shared memory size limit exceeded" in proc.stderr


def test_census_needs_the_epochs_loop():
    hlo = "HloModule m\n\nENTRY %main (x: f32[]) -> f32[] {\n  %x = f32[] parameter(0)\n}\n"
    with pytest.raises(ValueError, match="while loop"):
        aot.census(hlo)


def test_unknown_target_is_a_user_error():
    with pytest.raises(UserError, match="h100"):
        aot.topology("a100")
