"""Where the time goes: profiler traces, optimized HLO, cost analysis, top ops.

``profile_steps`` runs a short scan of real training steps (the same
``train_step`` as an epoch) under ``jax.profiler.trace``, after a warm-up call,
so the trace shows steady-state kernels only. View it with Perfetto
(ui.perfetto.dev, open the ``*.trace.json.gz``), TensorBoard's profile plugin or
XProf (``tensorboard --logdir DIR``).
"""

from __future__ import annotations

import gzip
import json
import time
from collections import Counter
from pathlib import Path

import jax
import numpy as np

from jaxcnn import train

# Dense peak numbers from NVIDIA's data sheets (SXM parts), for the roofline view.
PEAKS = {
    "H100": {"fp32_tflops": 67.0, "tf32_tflops": 494.7, "hbm_tb_s": 3.35},
    "H200": {"fp32_tflops": 67.0, "tf32_tflops": 494.7, "hbm_tb_s": 4.8},
}


def make_steps_fn(program: train.Program, steps: int):
    """``fn(state, images, labels) -> (state, losses)``: ``steps`` batches in one scan."""
    batch = program.config.batch_size

    def fn(state, images, labels):
        idx = np.arange(steps * batch).reshape(steps, batch) % images.shape[0]
        keys = jax.random.split(jax.random.key(0), steps)

        def body(state, xs):
            i, key = xs
            return train.train_step(program, state, (images[i], labels[i]), key)

        unroll = max(1, min(program.config.unroll, steps))  # as the epoch loop does
        return jax.lax.scan(body, state, (idx, keys), unroll=unroll)

    return program.jit(fn)


def time_steps(fn, state, images, labels, steps: int, repeats: int = 5) -> list[float]:
    """Seconds per step for ``repeats`` calls of ``fn`` (after it was warmed up)."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(state, images, labels))
        out.append((time.perf_counter() - start) / steps)
    return out


TRACED_STEPS = 10  # steps per call that profile_steps traces
TRACED_CALLS = 3  # calls of that steps function in the trace


def profile_steps(
    program, state, images, labels, logdir: str | Path, steps: int = TRACED_STEPS
) -> Path:
    """Write a ``jax.profiler`` trace of ``steps`` steady-state training steps to ``logdir``."""
    fn = make_steps_fn(program, steps)
    jax.block_until_ready(fn(state, images, labels))  # compile and warm up outside the trace
    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    with jax.profiler.trace(str(logdir), create_perfetto_trace=True):
        for _ in range(TRACED_CALLS):
            jax.block_until_ready(fn(state, images, labels))
    return logdir


def dump_hlo(compiled, path: str | Path) -> Path:
    """The optimized (post-fusion) HLO of a compiled function, as text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(compiled.as_text())
    return path


def cost(fn, *args, count_fn=None) -> dict[str, float]:
    """FLOPs of the step's math and bytes moved by the compiled program (XLA's cost analysis).

    FLOPs are counted on a compile for the host CPU: on a GPU the convolutions
    become cuDNN custom calls that XLA's cost analysis does not count. Bytes come
    from the program compiled for the default device, which is what actually moves.
    ``count_fn``, the same math written for the host, is counted instead of ``fn``
    where ``fn`` holds kernels the host cannot compile (Pallas GPU kernels).
    """

    def analysis(compiled) -> dict:
        result = compiled.cost_analysis()
        return (result[0] if isinstance(result, list) else result) or {}  # older jax: per device

    on_device = analysis(fn.lower(*args).compile())
    cpu_args = jax.device_put(args, jax.devices("cpu")[0])
    on_cpu = analysis((count_fn or fn).lower(*cpu_args).compile())
    return {
        "flops": float(on_cpu.get("flops", 0.0)),
        "bytes": float(on_device.get("bytes accessed", 0.0)),
    }


def op_events(logdir: str | Path) -> list[tuple[str, float]]:
    """(name, milliseconds) of every kernel in the newest trace under ``logdir``: the
    device's kernels (memcpy and memset too) on a GPU, XLA's ops on a CPU.

    Reads the Perfetto JSON that ``profile_steps`` asks for, skipping the Python
    and runtime bookkeeping around the kernels.
    """
    traces = sorted(Path(logdir).rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not traces:
        return []
    with gzip.open(traces[-1], "rt") as fh:
        events = json.load(fh)
    events = events.get("traceEvents", events) if isinstance(events, dict) else events
    # Device kernels live in the trace's device processes ("/device:GPU:0 ..."); on a
    # CPU the XLA ops run on host threads, so fall back to everything there.
    names = {
        e["pid"]: e.get("args", {}).get("name", "")
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    device_pids = {pid for pid, name in names.items() if "/device:" in name}
    skip = ("$", "PjRt", "PJRT", "Pjit", "Common", "Thunk", "TraceMe", "jit_", "np.", "Python")
    # XLA:CPU's runtime also records its thread pool, waits and op-end markers
    skip += ("ThreadpoolListener", "SlinkyThreadPool", "Wait for", "end: ")
    out = []
    for ev in events:
        if ev.get("ph") != "X" or "dur" not in ev:
            continue
        if device_pids and ev.get("pid") not in device_pids:
            continue
        name = ev.get("name", "")
        if not name or name.startswith(skip) or name.startswith("[") or ".py" in name:
            continue
        out.append((name, ev["dur"] / 1000.0))
    return out


def top_ops(events: list[tuple[str, float]], limit: int = 12) -> list[tuple[str, float, int]]:
    """(name, total milliseconds, count) of the longest kernels among ``op_events``."""
    totals: Counter = Counter()
    counts: Counter = Counter()
    for name, ms in events:
        totals[name] += ms
        counts[name] += 1
    return [(name, ms, counts[name]) for name, ms in totals.most_common(limit)]


def kernel_stats(events: list[tuple[str, float]], steps: int) -> dict[str, float]:
    """Kernels launched and device-busy milliseconds per training step, from the
    ``op_events`` of a trace of ``steps`` steps (``profile_steps`` traces
    ``TRACED_CALLS`` calls of them).

    At the seeds' batch sizes a step is hundreds of kernels of a few microseconds
    each: their number, and the gaps between them (step time minus busy time),
    are what set the time, more than any one kernel.

    No events at all means the trace has no per-op records (XLA:CPU in older
    jax, e.g. 0.6, records only whole-program executions): both are then None,
    not a count of zero.
    """
    if not events:
        return {"kernels_per_step": None, "busy_ms_per_step": None}
    total = steps * TRACED_CALLS
    return {
        "kernels_per_step": len(events) / total,
        "busy_ms_per_step": sum(ms for _, ms in events) / total,
    }
