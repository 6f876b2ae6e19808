"""Where the time goes: step timing, cost analysis, and the kernels of a trace.

The traces themselves come from :func:`jaxcnn.trace.profile_steps` (what
``train.py --profile`` writes); this module reads them for
``scripts/profile_models.py``.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import statistics
import time
from collections import Counter
from pathlib import Path

import jax
import numpy as np

from jaxcnn.trace import TRACED_CALLS, TRACED_STEPS, make_steps_fn, profile_steps

__all__ = ["TRACED_STEPS", "make_steps_fn", "profile_steps"]  # re-exported for the scripts

# Dense peak numbers from NVIDIA's data sheets (SXM parts), for the roofline view.
PEAKS = {
    "H100": {"fp32_tflops": 67.0, "tf32_tflops": 494.7, "hbm_tb_s": 3.35},
    "H200": {"fp32_tflops": 67.0, "tf32_tflops": 494.7, "hbm_tb_s": 4.8},
}


def time_steps(fn, state, images, labels, steps: int, repeats: int = 5) -> list[float]:
    """Seconds per step for ``repeats`` calls of ``fn`` (after it was warmed up)."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(state, images, labels))
        out.append((time.perf_counter() - start) / steps)
    return out


def cost(fn, *args, count_fn=None) -> dict[str, float]:
    """FLOPs of the step's math and bytes moved by the compiled program (XLA's cost analysis).

    FLOPs are counted on a compile for the host CPU: on a GPU the convolutions
    become cuDNN custom calls that XLA's cost analysis does not count. Bytes come
    from the program compiled for the default device, which is what actually moves.
    ``count_fn``, the same math written for the host, is counted instead of ``fn``
    where ``fn`` holds kernels the host cannot compile (Pallas GPU kernels) or whose
    FLOPs XLA does not see (the direct convolution's custom calls).
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


def profile_models(names: list[str], steps: int, out: Path, requested: dict) -> str:
    """``scripts/profile_models.py``: each model's step profiled (:func:`profile_model`)
    at its seed batch size, computing as ``requested``; writes OUT.json, OUT.md, OUT.png
    and the traces under OUT_traces/, and returns the table."""
    from jaxcnn import report, train
    from jaxcnn.errors import UserError
    from jaxcnn.lab.inputs import dataset_for

    if steps < 1:
        raise UserError("--steps must be at least 1")
    # every name and flag checked before the first model runs
    configs = [train.get_config(name, dataset_for(name), **requested) for name in names]
    env = report.environment()
    peak = next((v for k, v in PEAKS.items() if k in env["device"]), None)
    report.ensure_dir(out.parent, "--out folder")
    rows = []
    for config in configs:
        row = profile_model(config, steps, Path(f"{out}_traces") / config.model)
        if peak:
            row["fp32_peak_fraction"] = row["achieved_tflops"] / peak["fp32_tflops"]
            row["hbm_peak_fraction"] = row["achieved_tb_s"] / peak["hbm_tb_s"]
        rows.append(row)
        print(
            f"{config.model}: {row['step_ms']:.3f} ms/step, {row['mflop_per_step']:.0f} MFLOP, "
            f"{row['mb_per_step']:.1f} MB, {row['achieved_tflops']:.2f} TFLOP/s"
        )
    out.with_suffix(".json").write_text(json.dumps({"environment": env, "models": rows}, indent=2))
    table = markdown(rows, env)
    out.with_suffix(".md").write_text(table)
    roofline_plot(rows, env, peak, out.with_suffix(".png"))
    return table


def plain_count(config, one_step, args: tuple):
    """One step of ``config``'s math with XLA's convolutions, to count where XLA's cost
    analysis cannot see the step's kernels (Pallas GPU kernels, the direct kernel's
    custom calls), else None."""
    from jaxcnn import compute, train

    calls_direct = "jaxcnn_direct_" in one_step.lower(*args).as_text()
    if not (compute.unavailable(config.compute, "cpu") or calls_direct):
        return None
    plain = dataclasses.replace(config.compute, conv="xla")
    count_program, _ = train.create_program(dataclasses.replace(config, compute=plain))
    return make_steps_fn(count_program, 1)


def profile_model(config, steps: int, traces: Path) -> dict:
    """FLOPs and bytes of one step, its measured time, and the kernels of a trace."""
    from jaxcnn import train
    from jaxcnn.lab.inputs import random_split

    program, state = train.create_program(config)
    images, labels = random_split(config.dataset, max(config.batch_size * steps, 1000))
    one_step = make_steps_fn(program, 1)
    count_fn = plain_count(config, one_step, (state, images, labels))
    flops = cost(one_step, state, images, labels, count_fn=count_fn)
    fn = make_steps_fn(program, steps)
    jax.block_until_ready(fn(state, images, labels))
    step_s = statistics.median(time_steps(fn, state, images, labels, steps))
    profile_steps(program, state, images, labels, traces)
    events = op_events(traces)  # the trace is read once
    return {
        "model": config.model,
        "batch_size": config.batch_size,
        "options": config.compute.to_json(),
        "step_ms": 1000 * step_s,
        "mflop_per_step": flops["flops"] / 1e6,
        "mb_per_step": flops["bytes"] / 1e6,
        "achieved_tflops": flops["flops"] / step_s / 1e12,
        "achieved_tb_s": flops["bytes"] / step_s / 1e12,
        "top_ops": top_ops(events),
        **kernel_stats(events, TRACED_STEPS),
    }


def markdown(rows: list[dict], env: dict) -> str:
    """The profile table: one row per model."""
    lines = [
        f"{env['device']}, jax {env['jax']}",
        "",
        "| model | batch | ms/step | MFLOP/step | MB/step | TFLOP/s | TB/s "
        "| kernels/step | µs/kernel | busy % | top op |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        top = f"`{r['top_ops'][0][0][:40]}`" if r["top_ops"] else "-"
        kernels = "n/a | n/a | n/a"  # a trace without per-op events (older jax on a CPU)
        if r["kernels_per_step"] is not None:
            kernel_us = 1000 * r["busy_ms_per_step"] / r["kernels_per_step"]
            busy = 100 * r["busy_ms_per_step"] / r["step_ms"]
            kernels = f"{r['kernels_per_step']:.0f} | {kernel_us:.1f} | {busy:.0f}"
        lines.append(
            f"| `{r['model']}` | {r['batch_size']} | {r['step_ms']:.3f} | "
            f"{r['mflop_per_step']:.0f} | {r['mb_per_step']:.1f} | "
            f"{r['achieved_tflops']:.2f} | {r['achieved_tb_s']:.3f} | {kernels} | {top} |"
        )
    return "\n".join(lines) + "\n"


def roofline_plot(rows: list[dict], env: dict, peak: dict | None, path: Path) -> None:
    """Achieved TFLOP/s against arithmetic intensity, under the device's roofs if known."""
    from jaxcnn import report

    plt = report.pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        intensity = r["mflop_per_step"] / max(r["mb_per_step"], 1e-9)
        ax.scatter(intensity, r["achieved_tflops"], label=r["model"])
    if peak:
        xs = np.logspace(-1, 3, 50)
        roof = np.minimum(peak["fp32_tflops"], xs * peak["hbm_tb_s"])
        ax.plot(xs, roof, "k--", label="fp32 roof")
    ax.set(xscale="log", yscale="log", xlabel="FLOP/byte", ylabel="TFLOP/s", title=env["device"])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
