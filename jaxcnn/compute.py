"""How a step computes: one frozen value, resolved once, passed to the models.

Every choice here changes *how* a training step is computed, never *what*: the
parameters, the checkpoints and the torch converter are the same under all of
them. A :class:`Compute` is built by :func:`resolve` from what was asked (CLI
flags, a benchmark variant, a test) and the backend the program is built for,
which is an argument, not the process's global state: ``jaxcnn.lab.aot``
resolves for a GPU on a CPU host. The models receive it at construction, as
flax's imagenet example passes ``dtype`` (``models.create(name, compute=...)``).

The fields are the one table of options: the CLI flags (:func:`add_flags`),
the benchmark's ``--variant NAME:key=value`` syntax (:func:`parse_variant`) and
``train.get_config`` are all read off them, and :data:`VARIANTS` names the
combinations the benchmark, the GPU census and the tests run. Adding an option
is a field here plus its kernel in ``jaxcnn.kernels``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax

from jaxcnn import microbatch
from jaxcnn.errors import UserError, first_line

CONVS = ("xla", "im2col", "gemm_wgrad", "pallas_wgrad")  # jaxcnn.kernels.conv2d
POOLS = ("xla", "reshape")  # jaxcnn.kernels.max_pool2d
DX_FORMS = ("auto", "correlation", "col2im")  # jaxcnn.kernels.im2col
PATCH_FORMS = ("auto", "full", "rows", "tiles", "winograd", "direct")  # jaxcnn.kernels.*.applies
LINEARS = ("xla", "swapped")  # jaxcnn.kernels.dense
DTYPES = ("float32", "bfloat16")


def _option(default, help: str, *, choices=None, auto=None, flag=True):
    """A field of :class:`Compute`. ``auto``: backend -> value that ``"auto"`` means
    there (other backends: ``default``); ``flag``: whether the CLI offers it."""
    meta = {"help": help, "choices": choices, "auto": auto, "flag": flag}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Compute:
    """How a step computes. ``Compute()`` is the plain form: XLA's own ops, float32.

    Hashable and static: models keep it as a graph attribute, so it selects
    which computation is traced and is not part of the parameter state.
    """

    conv: str = _option(
        "xla",
        "convolution algorithm (auto: im2col on a CPU, xla elsewhere)",
        choices=CONVS,
        auto={"cpu": "im2col"},
    )
    pool: str = _option(
        "xla",
        "pooling algorithm, max and stride-1 average (auto: reshape on a CPU, xla elsewhere)",
        choices=POOLS,
        auto={"cpu": "reshape"},
    )
    fuse: bool = _option(
        False,
        "algebraically identical fused forms, InceptionA's 1x1 convs as one matmul "
        "(under im2col: each 1x1 composed with the kxk after it) "
        "(default: on for a CPU, where it measured 3-10%% faster; --no-fuse: off)",
        auto={"cpu": True},
    )
    dtype: str = _option("float32", "compute dtype; parameters stay float32", choices=DTYPES)
    unroll: int = _option(1, "copies of the training step per iteration of the epoch's loop")
    microbatches: int | str = _option(
        1,
        f"parts each training batch runs in, in turn (two at a time from "
        f"{microbatch.PAIRED_FROM} parts), the gradient their mean (a count that divides "
        f"the batch size; auto: on a CPU, parts where the step's largest intermediate "
        f"passes {microbatch.SPLIT_FROM // 2**20} MiB, jaxcnn.microbatch)",
        auto={"cpu": "auto"},
    )
    dx_form: str = _option(
        "auto", "im2col's input-gradient form (auto: by the elements written)", choices=DX_FORMS
    )
    patch_form: str = _option(
        "auto",
        "im2col's patches: full (kh*kw taps), rows (kw taps, the row shifts summed after "
        "the GEMM), tiles (a tile of output columns a patch, the kernel block-Toeplitz), "
        "winograd (F(4x4, r x r) for 3x3 and 5x5 kernels, float32) or direct (C++ kernels "
        "built on first use, no patches; a CPU, outputs a multiple of 16; Winograd's form "
        "in C++ for 3x3 and 5x5 kernels with inputs a multiple of 16 too); "
        "rows, tiles, winograd and direct at stride 1 only; auto: direct for resnet's, "
        "convnet's and cifar_cnn's first layers and their 16-64 channel 3x3 and 5x5 layers "
        "(resnet's second block aside), "
        "winograd for enough channels (r*r*C*O >= 4000), tiles for few (first "
        "convolutions), rows where they write little enough",
        choices=PATCH_FORMS,
    )
    linear: str = _option(
        "xla",
        "Linear layers' kernel gradient: xla (autodiff's x^T dy) or swapped (dy^T x, then "
        "transposed: the wide GEMM, for layers of at most 16 outputs) (auto: swapped on a CPU)",
        choices=LINEARS,
        auto={"cpu": "swapped"},
    )
    # XLA compiler options for the training and evaluation programs, as (name, value)
    # pairs: DebugOptions fields such as xla_gpu_enable_command_buffer.
    xla_options: tuple[tuple[str, Any], ...] = _option((), "", flag=False)
    # Run Pallas kernels in Pallas's interpreter (tests off a GPU; slow).
    interpret: bool = _option(False, "", flag=False)
    # The data-parallel mesh, for kernels XLA cannot partition by itself (Pallas):
    # set by train.create_program from --devices, never asked for.
    mesh: jax.sharding.Mesh | None = _option(None, "", flag=False)  # noqa: RUF009

    def to_json(self) -> dict:
        """The fields a run records (the mesh is where it ran, not how)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "mesh"}


PLAIN = Compute()  # the plain form: what every model computes unless told otherwise
FIELDS = {f.name: f for f in dataclasses.fields(Compute)}
# The fields a model reads; the others (dtype, unroll, XLA options) belong to the step.
MODEL_FIELDS = ("conv", "pool", "fuse", "dx_form", "patch_form", "linear", "interpret", "mesh")

# XLA's CUDA-graph command buffers with the epoch's scan loop (WHILE) and its
# conditionals inside them too: the whole epoch one graph launch (GPU only).
WHOLE_EPOCH_GRAPH = "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"

# The named forms: each computes what the plain form computes, another way. The
# benchmark's jaxcnn variants, the GPU census's rows and the tests against the
# plain form and against torch all iterate this table.
VARIANTS: dict[str, dict[str, Any]] = {
    "xla": {"conv": "xla", "pool": "xla"},  # the plain form
    "im2col": {"conv": "im2col"},
    "im2col_full": {"conv": "im2col", "patch_form": "full"},  # the full patch matrix only
    "winograd": {"conv": "im2col", "patch_form": "winograd"},  # F(4x4, 3x3 or 5x5) where it exists
    "direct": {"conv": "im2col", "patch_form": "direct"},  # the C++ kernel where it runs (CPU)
    "fused": {"fuse": True},
    "fused+im2col": {"fuse": True, "conv": "im2col"},
    "gemm_wgrad": {"conv": "gemm_wgrad"},
    "pallas_wgrad": {"conv": "pallas_wgrad"},
    "reshape_pool": {"pool": "reshape"},
    "swapped_linear": {"linear": "swapped"},
    "unroll4": {"unroll": 4},
    "bf16": {"dtype": "bfloat16"},
    "cmdbuf_while": {"xla_options": (("xla_gpu_enable_command_buffer", WHOLE_EPOCH_GRAPH),)},
    # The fewest launches per step in the H100 census: inception 94 against 152 (GPU only).
    "fewest_launches": {"fuse": True, "conv": "pallas_wgrad", "pool": "reshape", "unroll": 4},
}


def model_variants() -> list[str]:
    """The variants that change only what a model traces (not the dtype, not the
    loop) and are not the plain form: the exact rewrites the tests hold to it."""
    return [
        name
        for name, v in VARIANTS.items()
        if set(v) <= set(MODEL_FIELDS) and dataclasses.replace(PLAIN, **v) != PLAIN
    ]


def resolve(requested: Mapping[str, Any] | None = None, *, backend: str) -> Compute:
    """The checked :class:`Compute` for ``requested`` options on ``backend``.

    Unset (or None) options take ``"auto"`` where they have an automatic choice
    (measured per backend: README, "Speed options") and their default otherwise.

    Raises:
        UserError: for an unknown option or value, and for a kernel ``backend``
            cannot run.
    """
    values = {k: v for k, v in (requested or {}).items() if v is not None}
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise UserError(
            f"unknown compute option(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}"
        )
    for name, field in FIELDS.items():
        choices, auto = field.metadata["choices"], field.metadata["auto"]
        value = values.get(name, "auto" if auto else field.default)
        if auto and value == "auto":
            value = auto.get(backend, field.default)
        if choices and value not in choices:
            flag = name.replace("_", "-")
            raise UserError(f"unknown --{flag} '{value}'; choose one of: {', '.join(choices)}")
        values[name] = value
    if not isinstance(values["unroll"], int) or values["unroll"] < 1:
        raise UserError(f"--unroll must be at least 1, got {values['unroll']}")
    parts = values["microbatches"]
    if parts != "auto" and (not isinstance(parts, int) or isinstance(parts, bool) or parts < 1):
        raise UserError(f"--microbatches takes auto or a count of at least 1, got {parts}")
    values["xla_options"] = tuple(tuple(item) for item in values["xla_options"])
    compute = Compute(**values)
    why = unavailable(compute, backend)
    if why:
        raise UserError(why)
    check_xla_options(compute.xla_options)
    return compute


def unavailable(compute: Compute, backend: str) -> str | None:
    """Why ``compute`` cannot run on ``backend``, in one sentence, or None.

    ``pallas_wgrad`` is a GPU kernel; elsewhere it runs only in Pallas's
    interpreter (``interpret=True``), which is for tests. The direct convolution
    is a C++ kernel for a CPU, built on first use (:mod:`jaxcnn.kernels.direct`).
    """
    if compute.conv == "pallas_wgrad" and backend != "gpu" and not compute.interpret:
        return (
            f"conv algorithm 'pallas_wgrad' is a GPU kernel and this backend is {backend}; "
            "choose another --conv"
        )
    if compute.conv == "im2col" and compute.patch_form == "direct":
        from jaxcnn.kernels import direct  # imports jax's FFI; only when asked for

        if backend != "cpu":
            return (
                f"patch form 'direct' is a CPU kernel and this backend is {backend}; "
                "choose another --patch-form"
            )
        why = direct.unavailable()
        if why:
            return f"patch form 'direct' cannot run here: {why}; choose another --patch-form"
    return None


def options_unavailable(options: Mapping[str, Any], backend: str) -> str | None:
    """:func:`unavailable` for a variant's options (``VARIANTS``' values), unresolved."""
    kernels = {k: options[k] for k in ("conv", "patch_form") if options.get(k, "auto") != "auto"}
    return unavailable(dataclasses.replace(PLAIN, **kernels), backend)


def parse_xla_options(items: list[str]) -> tuple[tuple[str, Any], ...]:
    """``["xla_name=value", ...]`` -> (name, value) pairs for ``jax.jit(compiler_options=)``.

    XLA reads ints and enum lists from strings but wants a real bool, so
    ``true``/``false`` become bools; every other value stays a string. An
    option given twice keeps its last value, as a repeated command-line flag does.
    """
    options: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("xla_"):
            raise UserError(f"--xla-option '{item}': expected xla_NAME=VALUE")
        lowered = value.lower()
        options[name] = lowered == "true" if lowered in ("true", "false") else value
    return tuple(options.items())


@functools.cache  # resolved per model and variant; one compile per option set
def check_xla_options(options: tuple[tuple[str, Any], ...]) -> None:
    """Compile a trivial program with ``options``, so a misspelt name or a bad value
    stops the run before it starts, in XLA's own words.

    Options of another backend (``xla_gpu_*`` on a CPU) are checked too: XLA
    keeps one set of options for all backends and ignores those not its own.
    """
    if not options:
        return
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(0).compile()
    except Exception as err:  # XLA raises JaxRuntimeError (INVALID_ARGUMENT)
        message = first_line(err).removeprefix("INVALID_ARGUMENT: ")
        raise UserError(f"--xla-option: {message}") from None


def parse_variant(text: str) -> tuple[str, dict]:
    """``"name:fuse=1,conv=im2col,unroll=4"`` -> ``("name", {...})`` of :func:`resolve` options.

    Keys are the CLI's options (:class:`Compute`'s flag fields). ``xla_NAME=VALUE``
    items are XLA compiler options; as their values may be comma lists themselves,
    items without ``=`` right after one continue its value:
    ``"cb:xla_gpu_enable_command_buffer=FUSION,WHILE,unroll=4"``.
    """
    name, _, spec = text.partition(":")
    options: dict = {}
    xla: list[str] = []
    continues = False  # the item before was an XLA option
    flags = [n for n, f in FIELDS.items() if f.metadata["flag"]]
    for item in filter(None, spec.split(",")):
        key, sep, value = item.partition("=")
        if not sep and continues:
            xla[-1] += f",{item}"
            continue
        continues = bool(sep) and key.startswith("xla_")
        if not sep:
            raise UserError(f"--variant '{text}': expected key=value items, got '{item}'")
        if key.startswith("xla_"):
            xla.append(item)
        elif key in flags:
            options[key] = _parse_value(text, key, value)
        else:
            raise UserError(
                f"--variant '{text}': unknown option '{key}' ({', '.join(flags)}, xla_*)"
            )
    if xla:
        options["xla_options"] = parse_xla_options(xla)
    if not name or not options:
        raise UserError(f"--variant '{text}': expected NAME:key=value[,key=value]")
    return name, options


def _parse_value(text: str, key: str, value: str):
    kind = type(FIELDS[key].default)
    if value == "auto" and FIELDS[key].metadata["auto"]:
        return value
    if kind is bool:
        return value.lower() in ("1", "true", "yes")
    if kind is int:
        if not value.isdigit():
            raise UserError(f"--variant '{text}': {key} takes a positive integer")
        return int(value)
    return value


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One CLI flag per option (``--conv``, ``--pool``, ``--fuse``, ...) and ``--xla-option``."""
    for name, field in FIELDS.items():
        meta = field.metadata
        if not meta["flag"]:
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(field.default, bool):
            action = argparse.BooleanOptionalAction if meta["auto"] else "store_true"
            parser.add_argument(flag, action=action, default=None, help=meta["help"])
        elif meta["auto"] and meta["choices"] is None:  # a count or auto
            parser.add_argument(flag, type=_count_or_auto, metavar="{auto,N}", help=meta["help"])
        elif meta["auto"]:
            parser.add_argument(flag, choices=["auto", *meta["choices"]], help=meta["help"])
        else:
            kind = type(field.default)
            parser.add_argument(flag, type=kind, choices=meta["choices"], help=meta["help"])
    parser.add_argument(
        "--xla-option",
        action="append",
        default=[],
        metavar="xla_NAME=VALUE",
        help="an XLA compiler option for the training and evaluation programs, e.g. "
        "xla_gpu_enable_command_buffer=FUSION,CUDNN,WHILE; repeatable",
    )


def _count_or_auto(text: str) -> int | str:
    """``--microbatches``'s value: ``auto`` or a positive count (argparse's type)."""
    if text == "auto" or (text.isdigit() and int(text) >= 1):
        return text if text == "auto" else int(text)
    raise argparse.ArgumentTypeError(f"expected auto or a count of at least 1, got '{text}'")


def from_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The options :func:`add_flags` parsed (None: not given, so auto or the default)."""
    out = {n: getattr(args, n) for n, f in FIELDS.items() if f.metadata["flag"]}
    out["xla_options"] = parse_xla_options(args.xla_option) or None
    return out
