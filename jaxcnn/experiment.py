"""``train_and_evaluate``: the host side of a run (data, epochs, files, resume).

The compiled math lives in :mod:`jaxcnn.train`; this module only moves data to
the device once, calls one compiled epoch and one compiled evaluation per epoch,
and writes what a user keeps: ``config.json``, ``metrics.jsonl``,
``summary.json``, ``checkpoints/<epoch>``, ``curves.png`` and
``predictions.png``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxcnn import data, parallel, profiling, report, train
from jaxcnn.checkpoint import Checkpoints
from jaxcnn.errors import UserError

# Fields that must match for --resume to continue a run rather than start another.
RESUME_KEYS = (
    "model",
    "dataset",
    "batch_size",
    "lr",
    "optimizer",
    "momentum",
    "loss",
    "seed",
    "permute_pixels",
    "dtype",
)


class NonFiniteLossError(UserError):
    """Training diverged; the last good checkpoint is kept."""


def load_data(config: train.Config, input_shape) -> tuple[data.Split, data.Split]:
    """Train and test splits on the host, checked against the model's input."""
    train_split = data.load(config.dataset, "train", config.data_dir)
    test_split = data.load(config.dataset, "test", config.data_dir)
    data.check_compatible(train_split, input_shape, config.model, config.dataset)
    if config.permute_pixels:
        train_split, test_split = data.permute_pixels(train_split), data.permute_pixels(test_split)
    if config.train_limit:
        train_split = dataclasses.replace(
            train_split,
            images=train_split.images[: config.train_limit],
            labels=train_split.labels[: config.train_limit],
        )
    return train_split, test_split


def _processes() -> str:
    count = jax.process_count()
    return f" in {count} processes" if count > 1 else ""


def _check_workdir(workdir: Path, config: train.Config, resume: bool, ckpts: Checkpoints):
    saved = workdir / "config.json"
    if ckpts.latest_epoch() is not None and not resume:
        raise UserError(
            f"workdir '{workdir}' already holds a run (checkpoint of epoch "
            f"{ckpts.latest_epoch()}); pass --resume to continue it or choose another --workdir"
        )
    if resume and saved.exists():
        defaults = {f.name: f.default for f in dataclasses.fields(train.Config)}
        old = {k: json.loads(saved.read_text()).get(k, defaults.get(k)) for k in RESUME_KEYS}
        new = dataclasses.asdict(config)
        diff = [k for k in RESUME_KEYS if json.dumps(old[k]) != json.dumps(new.get(k))]
        if diff:
            raise UserError(
                f"--resume: this run's {', '.join(diff)} differ from the run in '{workdir}' "
                f"({', '.join(f'{k}={old.get(k)}' for k in diff)})"
            )


def train_and_evaluate(
    config: train.Config,
    workdir: str | Path,
    *,
    resume: bool = False,
    init_model=None,
    progress: bool = True,
    profile_dir: str | Path | None = None,
    hlo_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``config`` to completion, evaluating and checkpointing after every epoch.

    Args:
        config: from :func:`jaxcnn.train.get_config`.
        workdir: where the run's files go (created if missing).
        resume: continue from the workdir's last complete epoch.
        init_model: an NNX model to start from instead of a fresh init
            (e.g. ``parity.load_torch_checkpoint(...)``).
        progress: show a progress bar over the epochs.
        profile_dir: write a profiler trace of a few steady-state steps here.
        hlo_dir: write the optimized HLO of the epoch and eval functions here.

    Returns:
        The summary (also written to ``workdir/summary.json``).
    """
    workdir = Path(workdir).absolute()
    # In a multi-process run every process computes; process 0 alone writes and talks.
    primary = parallel.is_primary()
    log = report.log if primary else (lambda message: None)
    progress = progress and primary
    with parallel.all_or_none():
        program, state = train.create_program(config, init_model)
        # Data first: a run that cannot start leaves no half-made workdir behind.
        train_split, test_split = load_data(config, program.input_shape)
    with parallel.all_or_none():  # processes that see the workdir differently all stop
        # The output folders before any epoch: a bad --profile or --dump-hlo path
        # would otherwise fail only after training, before summary.json is written.
        # Every process traces its own steps; process 0 alone dumps HLO.
        if profile_dir is not None:
            report.ensure_dir(profile_dir, "--profile folder")
        if hlo_dir is not None and primary:
            report.ensure_dir(hlo_dir, "--dump-hlo folder")
        report.ensure_dir(workdir, "workdir")
        ckpts = Checkpoints(workdir)
        _check_workdir(workdir, config, resume, ckpts)
    start_epoch = 0
    if resume and ckpts.latest_epoch() is not None:
        start_epoch = ckpts.latest_epoch()
        state = ckpts.restore(state)
        log(f"resuming {config.model} from epoch {start_epoch} in {workdir}")
    if primary:
        report.write_json(workdir / "config.json", dataclasses.asdict(config))
    metrics_path = workdir / "metrics.jsonl"
    rows = report.read_metrics(metrics_path, upto_epoch=start_epoch)

    sharding = parallel.replicated(program.mesh) if program.mesh is not None else None
    images = jax.device_put(train_split.images, sharding)
    labels = jax.device_put(train_split.labels, sharding)
    test_images = jax.device_put(test_split.images, sharding)
    test_labels = jax.device_put(test_split.labels, sharding)

    epoch_fn, compile_s = train.timed_compile(
        train.make_epoch_fn(program), state, images, labels, 0
    )
    eval_fn, eval_compile_s = train.timed_compile(
        train.make_eval_fn(program), state.params, test_images, test_labels
    )
    if hlo_dir is not None and primary:
        profiling.dump_hlo(epoch_fn, Path(hlo_dir) / f"{config.model}_epoch.hlo.txt")
        profiling.dump_hlo(eval_fn, Path(hlo_dir) / f"{config.model}_eval.hlo.txt")
    log(
        f"{config.model} on {config.dataset} ({train_split.source}): {len(labels)} train / "
        f"{len(test_labels)} test images, {config.optimizer} lr {config.lr}, batch "
        f"{config.batch_size}, {config.epochs} epochs, {config.devices} device(s)"
        f"{_processes()}; "
        f"compiled in {compile_s + eval_compile_s:.1f}s"
    )

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.epochs, initial=start_epoch, unit="epoch", dynamic_ncols=True)
    for epoch in range(start_epoch + 1, config.epochs + 1):
        start = time.perf_counter()
        new_state, losses = epoch_fn(state, images, labels, epoch)
        losses = np.asarray(losses)  # waits for the epoch: the timing below is honest
        seconds = time.perf_counter() - start
        if not np.all(np.isfinite(losses)):
            bad = int(np.argmin(np.isfinite(losses)))
            raise NonFiniteLossError(
                f"loss became {losses[bad]} at step {bad + 1} of epoch {epoch}; stopped, the "
                f"checkpoint of epoch {epoch - 1} in '{ckpts.directory}' is the last good one "
                "(try a smaller --lr)"
            )
        state = new_state
        accuracy, test_loss = (float(v) for v in eval_fn(state.params, test_images, test_labels))
        row = {
            "epoch": epoch,
            "train_loss": float(losses.mean()),
            "test_loss": test_loss,
            "test_accuracy": accuracy,
            "seconds": seconds,
            "images_per_second": len(labels) / seconds,
        }
        # The metrics row before the checkpoint: a kill between the two then costs a
        # re-run of the epoch (resume drops rows past the last checkpoint), where the
        # other order left a checkpoint whose row was never written (seen under load).
        rows.append(row)
        if primary:
            report.write_metrics(metrics_path, rows)
        ckpts.save(epoch, state)
        line = (
            f"epoch {epoch}/{config.epochs}: train loss {row['train_loss']:.4f}, test accuracy "
            f"{100 * accuracy:.2f}%, {seconds:.2f}s ({row['images_per_second']:,.0f} img/s)"
        )
        if bar is not None:
            bar.set_postfix(
                loss=f"{row['train_loss']:.4f}",
                acc=f"{100 * accuracy:.2f}%",
                img_s=f"{row['images_per_second']:,.0f}",
            )
            bar.update(1)
            bar.write(line)
        else:
            log(line)
    if bar is not None:
        bar.close()
    ckpts.close()
    if profile_dir is not None:
        trace_dir = profiling.profile_steps(program, state, images, labels, profile_dir)
        stats = profiling.kernel_stats(profiling.op_events(trace_dir), profiling.TRACED_STEPS)
        counted = (
            f"{stats['kernels_per_step']:.0f} kernels per step, "
            f"{stats['busy_ms_per_step']:.3f} ms of them"
            if stats["kernels_per_step"] is not None
            else "no per-kernel events in it to count (this jax's CPU runtime records none)"
        )
        log(
            f"profile of {profiling.TRACED_STEPS} steady-state steps in {trace_dir} "
            f"(Perfetto/TensorBoard): {counted}"
        )

    summary = {
        "model": config.model,
        "dataset": config.dataset,
        "data_source": train_split.source,
        "epochs": config.epochs,
        "test_accuracy": rows[-1]["test_accuracy"] if rows else None,
        "epoch_seconds": [r["seconds"] for r in rows],
        "compile_seconds": compile_s,
        "eval_compile_seconds": eval_compile_s,
        "processes": jax.process_count(),
        "config": dataclasses.asdict(config),
        **report.environment(),
    }
    n = min(10, len(test_labels))
    predicted = train.predict(program, state.params, test_split.images[:n])  # a collective
    if primary:
        report.write_json(workdir / "summary.json", summary)
        title = f"{config.model} on {config.dataset}"
        report.plot_curves(workdir / "curves.png", rows, title)
        report.plot_predictions(
            workdir / "predictions.png",
            test_split.images[:n],
            test_split.labels[:n],
            predicted,
            title,
        )
    return summary
