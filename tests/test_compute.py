"""How a step computes: one value, resolved for a backend given as an argument."""

import argparse
import dataclasses

import jax
import pytest
from flax import nnx

from jaxcnn import UserError, compute, models, train
from jaxcnn.errors import first_line


def test_auto_is_resolved_per_backend_and_explicit_choices_stay():
    cpu, gpu = compute.resolve({}, backend="cpu"), compute.resolve({}, backend="gpu")
    assert (cpu.conv, cpu.pool, cpu.fuse) == ("im2col", "reshape", True)
    assert (gpu.conv, gpu.pool, gpu.fuse) == ("xla", "xla", False)
    assert compute.resolve({"fuse": False}, backend="cpu").fuse is False
    assert compute.resolve({"conv": "xla", "pool": None}, backend="cpu").pool == "reshape"
    asked = {"conv": "gemm_wgrad", "fuse": True, "unroll": 3, "dtype": "bfloat16"}
    got = compute.resolve(asked, backend="cpu")
    assert {k: getattr(got, k) for k in asked} == asked


@pytest.mark.parametrize(
    ("requested", "message"),
    [
        ({"conv": "winograd"}, "unknown --conv 'winograd'; choose one of: xla, im2col"),
        ({"pool": "avg"}, "unknown --pool 'avg'"),
        ({"dx_form": "fft"}, "unknown --dx-form 'fft'"),
        ({"unroll": 0}, "--unroll must be at least 1"),
        ({"speed": 11}, "unknown compute option(s) speed"),
        ({"conv": "pallas_wgrad"}, "'pallas_wgrad' is a GPU kernel and this backend is cpu"),
    ],
)
def test_bad_requests_are_one_sentence(requested, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compute.resolve(requested, backend="cpu")


def test_the_cli_flags_are_the_fields():
    """Every flag field is a flag, and what the flags parse resolves to that field."""
    parser = argparse.ArgumentParser()
    compute.add_flags(parser)
    flags = [f for f, field in compute.FIELDS.items() if field.metadata["flag"]]
    assert set(flags) <= set(vars(parser.parse_args([])))
    args = parser.parse_args(["--conv", "xla", "--fuse", "--unroll", "2", "--dx-form", "col2im"])
    got = compute.resolve(compute.from_flags(args), backend="cpu")
    assert (got.conv, got.fuse, got.unroll, got.dx_form, got.pool) == (
        "xla",
        True,
        2,
        "col2im",
        "reshape",
    )
    assert compute.from_flags(parser.parse_args([]))["fuse"] is None  # unset: the default
    no_fuse = compute.from_flags(parser.parse_args(["--no-fuse"]))
    assert compute.resolve(no_fuse, backend="cpu").fuse is False


def test_model_variants_are_the_exact_rewrites():
    names = compute.model_variants()
    assert "xla" not in names  # the plain form itself
    assert "bf16" not in names and "unroll4" not in names  # not a model's trace
    assert {"im2col", "fused", "reshape_pool", "pallas_wgrad"} <= set(names)


def test_models_keep_the_compute_they_are_built_with():
    how = compute.Compute(conv="im2col", pool="reshape", fuse=True)
    model = models.create("inception", compute=how)
    held = {type(m).__name__: m.compute for _, m in nnx.iter_graph(model) if hasattr(m, "compute")}
    assert held and set(held.values()) == {how}
    # static: the parameters are the plain model's, whatever the compute
    plain = models.create("inception")
    shapes = jax.tree.map(lambda a: a.shape, nnx.state(model, nnx.Param))
    assert shapes == jax.tree.map(lambda a: a.shape, nnx.state(plain, nnx.Param))


def test_the_run_places_compute_on_its_mesh_and_records_it_without():
    config = train.get_config("basic_cnn", "mnist", conv="xla")
    program, _ = train.create_program(config)
    assert program.graphdef is not None and config.compute.mesh is None
    recorded = config.to_json()["compute"]
    assert "mesh" not in recorded and recorded["conv"] == "xla"
    assert dataclasses.replace(config.compute, **recorded) == config.compute


def test_first_line_of_an_exception():
    assert first_line(RuntimeError("one\ntwo")) == "one"
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(OSError("x" * 500), 10) == "x" * 10
