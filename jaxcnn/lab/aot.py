"""Compile a training epoch for an H100 on a host without a GPU, and count its kernels.

Why: a GPU is rarely at hand, yet XLA's GPU compiler runs on any x86-64 host
given the CUDA PJRT plugin and a description of the device (XLA's "deviceless"
ahead-of-time compilation). It runs the same passes as on the GPU: fusion,
layout assignment, the rewrite of convolutions into cuDNN calls, and Triton's
compilation of the Pallas kernels to machine code, with the device's real limits
(shared memory, registers). So without a GPU this shows two things:

* that a configuration compiles for the device at all;
* the kernels XLA will launch per training step, counted in the optimized HLO of
  the epoch's loop body. On these small models the time is set by that count
  (README, "Speed options").

What it cannot show: any time, and what a cuDNN call becomes. Choosing among
cuDNN's engines needs the device (autotuning), and one cuDNN call can be several
kernels (the H100 profile had ``wgrad_alg0`` plus a ``Memset`` per weight
gradient). The counts are launches as XLA sees them: a lower bound on the kernels.

The plugin must be importable (``pip install --no-deps --target DIR
jax-cuda12-plugin==V jax-cuda12-pjrt==V``, V = jaxlib's version, DIR on
``PYTHONPATH``) and jax started with ``JAX_PLATFORMS=cpu`` (the plugin then skips its
check for a driver); ``scripts/gpu_census.py`` sets that up.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections import Counter
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxcnn import models, train
from jaxcnn.errors import UserError, first_line

# The device description XLA compiles for: an H100 SXM (80 GB HBM3) as its CUDA
# driver reports it (132 SMs, 228 KiB of shared memory per SM, compute capability
# 9.0), with cuDNN 9.8 and CUDA 12.8 for the libraries' versions.
H100 = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32
  shared_memory_per_block: 49152 shared_memory_per_core: 233472
  shared_memory_per_block_optin: 232448
  threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000 l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: 84929347584
  cuda_compute_capability { major: 9 minor: 0 }
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 }
runtime_version { major: 12 minor: 8 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""
TARGETS = {"h100": H100}
TRAIN_IMAGES = {"mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000}

# HLO instructions that launch nothing: bookkeeping, views, constants.
FREE = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all"}
FUSION_KINDS = {"kLoop": "elementwise", "kInput": "reduction", "kCustom": "custom"}
CUDNN = {
    "__cudnn$convForward": "cuDNN conv forward",
    "__cudnn$convBiasActivationForward": "cuDNN conv forward",
    "__cudnn$convBackwardInput": "cuDNN conv data grad",
    "__cudnn$convBackwardFilter": "cuDNN conv weight grad",
}


def topology(target: str = "h100"):
    """The (one-device) topology of ``target``, to compile for; the plugin must be loaded.

    Raises:
        UserError: for an unknown target, or when jax has no CUDA plugin to compile with.
    """
    from jax.experimental import topologies

    if target not in TARGETS:
        raise UserError(f"unknown target '{target}'; choose one of: {', '.join(TARGETS)}")
    try:
        return topologies.get_topology_desc(
            platform="cuda", target_config=TARGETS[target], topology="1x1x1"
        )
    except (NotImplementedError, RuntimeError) as err:
        raise UserError(
            "compiling for a GPU needs jax's CUDA plugin (jax-cuda12-plugin and "
            f"jax-cuda12-pjrt {jax.__version__}) importable and JAX_PLATFORMS=cpu set "
            f"before jax starts ({type(err).__name__}: {first_line(err)})"
        ) from None


def compile_epoch(config: train.Config, topo):
    """The epoch function of ``config``, compiled for the device of ``topo``.

    Same program as ``train.py`` builds (``train.make_epoch_fn``), over the
    dataset's training split; ``config`` should be resolved for a GPU
    (:func:`gpu_config`).
    """
    sharding = jax.sharding.SingleDeviceSharding(topo.devices[0])

    def spec(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    n = TRAIN_IMAGES[config.dataset]
    h, w, c = models.get_spec(config.model).input_shape
    program, state = train.create_program(config)
    args = (
        jax.tree.map(lambda a: spec(a.shape, a.dtype), state),  # params, optimizer
        spec((n, h, w, c), jnp.uint8),  # images
        spec((n,), jnp.int32),  # labels
        spec((), jnp.int32),  # epoch
    )
    return train.make_epoch_fn(program).lower(*args).compile()


def gpu_config(model: str, dataset: str = "fashion_mnist", **overrides) -> train.Config:
    """``train.get_config`` resolved for a GPU (``conv="auto"`` is cuDNN's there)."""
    return train.get_config(model, dataset, backend="gpu", **overrides)


@dataclasses.dataclass
class Census:
    """Kernel launches of one compiled epoch: per training step, and outside the loop."""

    per_step: Counter
    outside: Counter

    @property
    def step_total(self) -> float:
        return sum(self.per_step.values())


def census(hlo: str, unroll: int = 1) -> Census:
    """Count the launches in optimized GPU HLO text (``compiled.as_text()``) of an epoch.

    The epoch's training steps are the body of its scan, the ``while`` loop of the
    entry computation with the largest body (jax's permutation can add a small
    loop of its own), ``unroll`` steps per iteration; everything else in the entry
    computation (the permutation, a final partial batch) runs once per epoch.
    """
    computations = _computations(hlo)
    entry = next(name for name in computations if name.startswith("ENTRY "))
    bodies = [
        re.search(r"body=%?([\w.\-]+)", line).group(1)
        for line in computations[entry]
        if _opcode(line) == "while"
    ]
    if not bodies:
        raise ValueError("expected the epoch's while loop in the entry computation, found none")
    body = max(bodies, key=lambda name: len(computations[name]))
    per_iteration = _launches(computations[body])
    per_step = Counter({k: v / unroll for k, v in per_iteration.items()})
    return Census(per_step, _launches(computations[entry]) - Counter(loop=1))


def _computations(hlo: str) -> dict[str, list[str]]:
    """Computation name (``ENTRY name`` for the entry) -> its instruction lines."""
    out: dict[str, list[str]] = {}
    current = None
    for line in hlo.splitlines():
        header = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            current = (header.group(1) or "") + header.group(2)
            out[current] = []
        elif current and line.startswith("  ") and " = " in line:
            out[current].append(line)
    return out


def _opcode(line: str) -> str:
    """The opcode of an HLO instruction line (``%x = f32[2]{0} add(%a, %b), ...``)."""
    rhs = line.split(" = ", 1)[1]
    if rhs.startswith("("):  # a tuple shape: skip to its closing parenthesis
        depth = 0
        for i, ch in enumerate(rhs):
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0:
                rhs = rhs[i + 1 :]
                break
    match = re.match(r"\s*(?:\S+\s+)?([a-z][\w\-]*)\(", rhs)
    return match.group(1) if match else "?"


def _launches(lines: list[str]) -> Counter:
    """Launch kinds of a computation's top-level instructions (one each)."""
    out: Counter = Counter()
    for line in lines:
        op = _opcode(line)
        if op in FREE:
            continue
        if op == "custom-call":
            target = re.search(r'custom_call_target="([^"]+)"', line).group(1)
            if target in CUDNN:
                op = CUDNN[target]
            elif target.startswith("__cublas"):
                op = "cuBLAS gemm"
            elif target == "__gpu$xla.gpu.triton":
                op = "Pallas kernel (Triton)"
            else:
                op = f"custom call {target}"
        elif op == "fusion":
            kind = re.search(r"kind=(k\w+)", line).group(1)
            custom = re.search(r'"fusion_backend_config":\{"kind":"_*([^"]+)"', line)
            if "gemm" in (custom.group(1) if custom else ""):
                op = "XLA gemm (Triton)"
            else:
                op = f"XLA fusion ({FUSION_KINDS.get(kind, kind)})"
        elif op == "while":
            op = "loop"
        out[op] += 1
    return out


COLUMNS = {  # markdown column -> the launch kinds it adds up
    "XLA fusions": ("XLA fusion (elementwise)", "XLA fusion (reduction)", "XLA fusion (custom)"),
    "cuDNN fwd": ("cuDNN conv forward",),
    "cuDNN dgrad": ("cuDNN conv data grad",),
    "cuDNN wgrad": ("cuDNN conv weight grad",),
    "GEMMs": ("XLA gemm (Triton)", "cuBLAS gemm"),
    "Pallas": ("Pallas kernel (Triton)",),
    "copies": ("copy",),
}


def markdown(rows: list[dict], env: dict) -> str:
    """``scripts/gpu_census.py``'s table: launches per step by kind, one row per config."""
    lines = [
        f"Compiled for {env.get('compiled_for')} on {env.get('host')} (no GPU), "
        f"jax {env.get('jax')}, jaxlib {env.get('jaxlib')}, CUDA plugin "
        f"{env.get('cuda_plugin')}. Kernel launches per training step in the optimized HLO "
        "of the epoch's loop; a cuDNN call may launch more than one kernel on the device.",
        "",
        f"| model | batch | variant | launches/step | {' | '.join(COLUMNS)} | other "
        "| outside the loop | compile s |",
        "|---|---|---|---|" + "---|" * len(COLUMNS) + "---|---|---|",
    ]
    for row in rows:
        head = f"| `{row['model']}` | {row['batch_size']} | {row['variant']}"
        if row["status"] != "ok":
            lines.append(f"{head} | {row['status']} |" + " |" * (len(COLUMNS) + 3))
            continue
        counts = row["per_step"]
        cells = [sum(counts.get(k, 0) for k in kinds) for kinds in COLUMNS.values()]
        other = sum(counts.values()) - sum(cells)
        lines.append(
            f"{head} | {row['launches_per_step']:g} | "
            + " | ".join(f"{c:g}" for c in cells)
            + f" | {other:g} | {row['launches_outside_loop']} | {row['compile_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def run_census(
    model_names: list[str], target: str, extra_variants: list[str], no_variants: bool, out: Path
) -> list[dict]:
    """``scripts/gpu_census.py``: each model under each variant that differs on a GPU,
    compiled for ``target`` and counted; rows written to OUT.json as they come and the
    table to OUT.md. A configuration that fails to compile is a row saying so."""
    import jaxlib

    from jaxcnn import compute, report
    from jaxcnn.lab import bench

    topo = topology(target)  # a missing plugin stops here, in one line
    variants = {"default": {}, **({} if no_variants else compute.VARIANTS)}
    variants.update(compute.parse_variant(v) for v in extra_variants)
    jobs = []
    for name in model_names:
        gpu_config(name)  # the name checked before any compile
        kept: list[dict] = []
        for label, options in variants.items():  # what the variants amount to on a GPU
            if compute.options_unavailable(options, "gpu"):  # a CPU kernel
                continue
            if label == "default" or not bench.is_redundant(name, options, kept, backend="gpu"):
                kept.append(options)
                jobs.append((name, label, options))
    report.ensure_dir(out.parent, "--out folder")
    env = {
        **report.environment(),
        "compiled_for": topo.devices[0].device_kind,
        "jaxlib": jaxlib.__version__,
        "cuda_plugin": _plugin_version(),
    }
    rows = []
    for name, label, options in jobs:
        report.log(f"gpu_census: {name}, {label}")
        rows.append(census_row(name, label, options, topo))
        report.write_json(out.with_suffix(".json"), {"environment": env, "rows": rows})
    report.write_atomic(out.with_suffix(".md"), markdown(rows, env))
    print(out.with_suffix(".md").read_text())
    return rows


def census_row(name: str, label: str, options: dict, topo) -> dict:
    """One model and variant compiled for ``topo``: its launches, or why it failed."""
    config = gpu_config(name, **options)
    row = {"model": name, "variant": label, "batch_size": config.batch_size, "options": options}
    start = time.perf_counter()
    try:
        compiled = compile_epoch(config, topo)
    except Exception as err:  # one failing compile must not hide the others' counts
        row["status"] = f"failed: {type(err).__name__}: {first_line(err)}"[:300]
        return row
    row["status"] = "ok"
    row["compile_seconds"] = time.perf_counter() - start
    counts = census(compiled.as_text(), config.compute.unroll)
    row["per_step"] = dict(counts.per_step.most_common())
    row["launches_per_step"] = counts.step_total
    row["launches_outside_loop"] = sum(counts.outside.values())
    return row


def _plugin_version() -> str:
    try:
        return metadata.version("jax-cuda12-plugin")
    except metadata.PackageNotFoundError:  # a plugin of another name that still loaded
        return "unknown"
