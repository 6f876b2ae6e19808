"""The roofline view of each model's training step: FLOPs, bytes, time, top ops.

python scripts/profile_models.py [--models mnist_cnn resnet] [--steps 50] [--out results/profile]
    [--fuse] [--conv xla|im2col|gemm_wgrad|pallas_wgrad] [--pool xla|reshape] [--dtype bfloat16]
    [--xla-option xla_NAME=VALUE]

For each model at its seed batch size: XLA's cost_analysis() of one step (FLOPs
and bytes), the measured step time (median of 5 calls of a scanned run of
--steps steps, after a warm-up), achieved FLOP/s and bandwidth against the
device's peak, and from a profiler trace of 10 steps the top ops, the kernels per
step with their mean duration, and the share of the step the device is busy (the
rest is launch gaps). Writes OUT.json, OUT.md and OUT.png (achieved vs peak), and
the traces under OUT_traces/.
"""

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

from jaxcnn.cli import add_impl_flags, enable_compilation_cache, impl_overrides, run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        "--model",  # the spelling, `profile.py --model M`
        nargs="+",
        default=["mnist_cnn", "basic_cnn", "inception", "resnet"],
        help="models to profile (default: mnist_cnn basic_cnn inception resnet)",
    )
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", default="results/profile")
    add_impl_flags(parser)  # profile a speed option: --fuse, --conv, --pool, --dtype, --unroll
    args = parser.parse_args()

    enable_compilation_cache()
    import jax
    import numpy as np

    from jaxcnn import models, profiling, report, train
    from jaxcnn.errors import UserError

    if args.steps < 1:
        raise UserError("--steps must be at least 1")
    # every name and flag checked before the first model runs
    configs = [
        train.get_config(name, "fashion_mnist", **impl_overrides(args)) for name in args.models
    ]
    env = report.environment()
    peak = next((v for k, v in profiling.PEAKS.items() if k in env["device"]), None)
    out = Path(args.out)
    report.ensure_dir(out.parent, "--out folder")
    rows = []
    for name, config in zip(args.models, configs, strict=True):
        program, state = train.create_program(config)
        c = models.get_spec(name).input_shape[2]
        n = max(config.batch_size * args.steps, 1000)
        rng = np.random.default_rng(0)
        images = jax.device_put(rng.integers(0, 256, (n, 28, 28, c), np.uint8))
        labels = jax.device_put(rng.integers(0, 10, n).astype(np.int32))
        count_fn = None
        if models.conv_unavailable(config.conv, "cpu"):  # count the same math with XLA's convs
            count_program, _ = train.create_program(dataclasses.replace(config, conv="xla"))
            count_fn = profiling.make_steps_fn(count_program, 1)
        step_fn = profiling.make_steps_fn(program, 1)
        flops = profiling.cost(step_fn, state, images, labels, count_fn=count_fn)
        fn = profiling.make_steps_fn(program, args.steps)
        jax.block_until_ready(fn(state, images, labels))
        step_s = statistics.median(profiling.time_steps(fn, state, images, labels, args.steps))
        traces = Path(f"{out}_traces") / name
        profiling.profile_steps(program, state, images, labels, traces)
        events = profiling.op_events(traces)  # the trace is read once
        row = {
            "model": name,
            "batch_size": config.batch_size,
            "options": {k: getattr(config, k) for k in train.IMPL_FIELDS},
            "step_ms": 1000 * step_s,
            "mflop_per_step": flops["flops"] / 1e6,
            "mb_per_step": flops["bytes"] / 1e6,
            "achieved_tflops": flops["flops"] / step_s / 1e12,
            "achieved_tb_s": flops["bytes"] / step_s / 1e12,
            "top_ops": profiling.top_ops(events),
            **profiling.kernel_stats(events, profiling.TRACED_STEPS),
        }
        if peak:
            row["fp32_peak_fraction"] = row["achieved_tflops"] / peak["fp32_tflops"]
            row["hbm_peak_fraction"] = row["achieved_tb_s"] / peak["hbm_tb_s"]
        rows.append(row)
        print(
            f"{name}: {row['step_ms']:.3f} ms/step, {row['mflop_per_step']:.0f} MFLOP, "
            f"{row['mb_per_step']:.1f} MB, {row['achieved_tflops']:.2f} TFLOP/s"
        )
    (out.with_suffix(".json")).write_text(
        json.dumps({"environment": env, "models": rows}, indent=2)
    )
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
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plt = report.pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        intensity = r["mflop_per_step"] / max(r["mb_per_step"], 1e-9)
        ax.scatter(intensity, r["achieved_tflops"], label=r["model"])
    if peak:
        xs = np.logspace(-1, 3, 50)
        ax.plot(
            xs, np.minimum(peak["fp32_tflops"], xs * peak["hbm_tb_s"]), "k--", label="fp32 roof"
        )
    ax.set(xscale="log", yscale="log", xlabel="FLOP/byte", ylabel="TFLOP/s", title=env["device"])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=100)


if __name__ == "__main__":
    run_main(main)
