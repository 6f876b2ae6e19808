"""``train_and_evaluate``: the host side of a run (data, epochs, files, resume).

The compiled math lives in :mod:`jaxcnn.train`; this module only moves data to
the device once, calls one compiled epoch and one compiled evaluation per epoch,
and writes what a user keeps: ``config.json``, ``metrics.jsonl``,
``summary.json``, ``checkpoints/<epoch>``, ``curves.png`` and
``predictions.png``. :func:`train_and_evaluate` reads as its steps.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxcnn import data, parallel, report, trace, train
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


@dataclasses.dataclass
class Run:
    """One run in progress: its program and state, its data on the device, its files."""

    config: train.Config
    workdir: Path
    program: train.Program
    state: train.TrainState
    train_split: data.Split
    test_split: data.Split
    device_data: tuple[jax.Array, jax.Array, jax.Array, jax.Array]  # train, test: [N,H,W,C], [N]
    ckpts: Checkpoints
    start_epoch: int = 0
    rows: list[dict] = dataclasses.field(default_factory=list)
    compile_seconds: float = 0.0
    eval_compile_seconds: float = 0.0
    primary: bool = True  # process 0 of the run: the one that writes files and talks

    def log(self, message: str) -> None:
        if self.primary:
            report.log(message)


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
        init_model: a model (or its ``nnx.Param`` state) whose parameters to start
            from instead of a fresh init, e.g. ``parity.load_torch_checkpoint(...)``.
        progress: show a progress bar over the epochs.
        profile_dir: write a profiler trace of a few steady-state steps here.
        hlo_dir: write the optimized HLO of the epoch and eval functions here.

    Returns:
        The summary (also written to ``workdir/summary.json``).
    """
    run = start(config, Path(workdir).absolute(), resume, init_model, profile_dir, hlo_dir)
    epoch_fn, eval_fn = compile_programs(run, hlo_dir)
    train_epochs(run, epoch_fn, eval_fn, progress)
    run.ckpts.close()
    if profile_dir is not None:
        directory = trace.profile_steps(run.program, run.state, *run.device_data[:2], profile_dir)
        run.log(f"profile of {trace.TRACED_STEPS} steady-state steps in {directory} (Perfetto)")
    return finish(run)


def start(config, workdir: Path, resume: bool, init_model, profile_dir, hlo_dir) -> Run:
    """Program, data and workdir, checked in that order before any work is done."""
    primary = parallel.is_primary()
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
        check_workdir(workdir, config, resume, ckpts)
    run = Run(config, workdir, program, state, train_split, test_split, (), ckpts, primary=primary)
    if resume and ckpts.latest_epoch() is not None:
        run.start_epoch = ckpts.latest_epoch()
        run.state = ckpts.restore(state)
        run.log(f"resuming {config.model} from epoch {run.start_epoch} in {workdir}")
    if primary:
        report.write_json(workdir / "config.json", config.to_json())
    run.rows = report.read_metrics(workdir / "metrics.jsonl", upto_epoch=run.start_epoch)
    sharding = parallel.replicated(program.mesh) if program.mesh is not None else None
    arrays = (train_split.images, train_split.labels, test_split.images, test_split.labels)
    run.device_data = tuple(jax.device_put(a, sharding) for a in arrays)
    return run


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


def default_workdir(model: str, dataset: str, resume: bool) -> tuple[Path, str | None]:
    """``runs/<model>-<dataset>``, or, when that holds a run and this is not a resume, the
    first ``runs/<model>-<dataset>-N`` that holds none; and a line saying so (or None).

    So the quickstart can be run twice; an explicit ``--workdir`` is never renamed.
    """
    base = Path("runs") / f"{model}-{dataset}"
    if resume or not holds_run(base):
        return base, None
    n = 2
    while holds_run(base.with_name(f"{base.name}-{n}")):
        n += 1
    fresh = base.with_name(f"{base.name}-{n}")
    return fresh, f"'{base}' holds a run; this one goes to '{fresh}' (--resume continues that one)"


def holds_run(workdir: Path) -> bool:
    """Whether ``workdir`` holds a run's checkpoint or files."""
    checkpoints = workdir / "checkpoints"
    if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
        return True
    return (workdir / "config.json").exists() or (workdir / "metrics.jsonl").exists()


def check_workdir(workdir: Path, config: train.Config, resume: bool, ckpts: Checkpoints):
    """Refuse to overwrite a run, and to resume one with another recipe."""
    saved = workdir / "config.json"
    if ckpts.latest_epoch() is not None and not resume:
        raise UserError(
            f"workdir '{workdir}' already holds a run (checkpoint of epoch "
            f"{ckpts.latest_epoch()}); pass --resume to continue it or choose another --workdir"
        )
    if resume and saved.exists():
        old = resume_view(json.loads(saved.read_text()))
        new = resume_view(config.to_json())
        diff = [k for k in RESUME_KEYS if json.dumps(old[k]) != json.dumps(new[k])]
        if diff:
            raise UserError(
                f"--resume: this run's {', '.join(diff)} differ from the run in '{workdir}' "
                f"({', '.join(f'{k}={old.get(k)}' for k in diff)})"
            )


def resume_view(saved: dict) -> dict:
    """The :data:`RESUME_KEYS` of a ``config.json``, older layouts included (``dtype``
    was a top-level field before it moved into ``compute``)."""
    defaults = {f.name: f.default for f in dataclasses.fields(train.Config)}
    defaults["dtype"] = train.PLAIN.dtype
    flat = {**saved, **saved.get("compute", {})}
    return {k: flat.get(k, defaults.get(k)) for k in RESUME_KEYS}


def compile_programs(run: Run, hlo_dir) -> tuple:
    """The epoch and eval programs, compiled ahead of time (their seconds are reported)."""
    images, labels, test_images, test_labels = run.device_data
    epoch_fn, run.compile_seconds = train.timed_compile(
        train.make_epoch_fn(run.program), run.state, images, labels, 0
    )
    eval_fn, run.eval_compile_seconds = train.timed_compile(
        train.make_eval_fn(run.program), run.state.params, test_images, test_labels
    )
    if hlo_dir is not None and run.primary:
        trace.dump_hlo(epoch_fn, Path(hlo_dir) / f"{run.config.model}_epoch.hlo.txt")
        trace.dump_hlo(eval_fn, Path(hlo_dir) / f"{run.config.model}_eval.hlo.txt")
    config = run.config
    processes = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
    run.log(
        f"{config.model} on {config.dataset} ({run.train_split.source}): {len(labels)} train / "
        f"{len(test_labels)} test images, {config.optimizer} lr {config.lr}, batch "
        f"{config.batch_size}, {config.epochs} epochs, {config.devices} device(s){processes}; "
        f"compiled in {run.compile_seconds + run.eval_compile_seconds:.1f}s"
    )
    return epoch_fn, eval_fn


def train_epochs(run: Run, epoch_fn, eval_fn, progress: bool) -> None:
    """Every remaining epoch: train, check, evaluate, then metrics row and checkpoint."""
    config = run.config
    bar = None
    if progress and run.primary:
        from tqdm import tqdm

        bar = tqdm(total=config.epochs, initial=run.start_epoch, unit="epoch", dynamic_ncols=True)
    for epoch in range(run.start_epoch + 1, config.epochs + 1):
        row = run_epoch(run, epoch_fn, eval_fn, epoch)
        line = (
            f"epoch {epoch}/{config.epochs}: train loss {row['train_loss']:.4f}, test accuracy "
            f"{100 * row['test_accuracy']:.2f}%, {row['seconds']:.2f}s "
            f"({row['images_per_second']:,.0f} img/s)"
        )
        if bar is None:
            run.log(line)
            continue
        bar.set_postfix(
            loss=f"{row['train_loss']:.4f}",
            acc=f"{100 * row['test_accuracy']:.2f}%",
            img_s=f"{row['images_per_second']:,.0f}",
        )
        bar.update(1)
        bar.write(line)
    if bar is not None:
        bar.close()


def run_epoch(run: Run, epoch_fn, eval_fn, epoch: int) -> dict:
    """One epoch and its evaluation; the row is written before the checkpoint."""
    images, labels, test_images, test_labels = run.device_data
    start = time.perf_counter()
    new_state, losses = epoch_fn(run.state, images, labels, epoch)
    losses = np.asarray(losses)  # waits for the epoch: the timing below is honest
    seconds = time.perf_counter() - start
    if not np.all(np.isfinite(losses)):
        bad = int(np.argmin(np.isfinite(losses)))
        raise NonFiniteLossError(
            f"loss became {losses[bad]} at step {bad + 1} of epoch {epoch}; stopped, the "
            f"checkpoint of epoch {epoch - 1} in '{run.ckpts.directory}' is the last good one "
            "(try a smaller --lr)"
        )
    run.state = new_state
    accuracy, test_loss = (float(v) for v in eval_fn(run.state.params, test_images, test_labels))
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
    run.rows.append(row)
    if run.primary:
        report.write_metrics(run.workdir / "metrics.jsonl", run.rows)
    run.ckpts.save(epoch, run.state)
    return row


def finish(run: Run) -> dict[str, Any]:
    """``summary.json``, the curves and the prediction grid; returns the summary."""
    config, rows, test = run.config, run.rows, run.test_split
    summary = {
        "model": config.model,
        "dataset": config.dataset,
        "data_source": run.train_split.source,
        "epochs": config.epochs,
        "test_accuracy": rows[-1]["test_accuracy"] if rows else None,
        "epoch_seconds": [r["seconds"] for r in rows],
        "compile_seconds": run.compile_seconds,
        "eval_compile_seconds": run.eval_compile_seconds,
        "processes": jax.process_count(),
        "config": config.to_json(),
        **report.environment(),
    }
    n = min(10, len(test.labels))
    predicted = train.predict(run.program, run.state.params, test.images[:n])  # a collective
    if run.primary:
        report.write_json(run.workdir / "summary.json", summary)
        title = f"{config.model} on {config.dataset}"
        report.plot_curves(run.workdir / "curves.png", rows, title)
        report.plot_predictions(
            run.workdir / "predictions.png", test.images[:n], test.labels[:n], predicted, title,
            data.CLASS_NAMES.get(config.dataset),
        )  # fmt: skip
    return summary
