"""``train_and_evaluate``: the host side of a run (data, epochs, files, resume).

The compiled math lives in :mod:`jaxcnn.train`; this module only moves data to
the device once, calls an epoch's few compiled chunks and one compiled
evaluation per epoch, and writes what a user keeps: ``config.json``,
``metrics.jsonl``, ``summary.json``, ``checkpoints/<epoch>``, ``curves.png`` and
``predictions.png``, in a workdir it holds locked (:mod:`jaxcnn.workdir`).
:func:`train_and_evaluate` reads as its steps.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxcnn import data, memory, parallel, report, trace, train
from jaxcnn import workdir as workdirs
from jaxcnn.checkpoint import Checkpoints
from jaxcnn.errors import UserError
from jaxcnn.executables import Executables


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
    predicted: jax.Array | None = None  # the last evaluation's class per test image
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
    executables: Executables | None = None,
) -> dict[str, Any]:
    """Train ``config`` to completion, evaluating and checkpointing after every epoch.

    Args:
        config: from :func:`jaxcnn.train.get_config`.
        workdir: where the run's files go (created if missing; locked while it runs).
        resume: continue from the workdir's newest intact checkpoint.
        init_model: a model (or its ``nnx.Param`` state) whose parameters to start
            from instead of a fresh init, e.g. ``parity.load_torch_checkpoint(...)``.
        progress: show a progress bar over the steps.
        profile_dir: write a profiler trace of a few steady-state steps here.
        hlo_dir: write the optimized HLO of the epoch and eval functions here.
        executables: load and keep the compiled programs there (the scripts' cache).

    Returns:
        The summary (also written to ``workdir/summary.json``).
    """
    workdir = Path(workdir).absolute()
    lock = workdirs.WorkdirLock(workdir)
    try:
        run = start(config, workdir, lock, resume, init_model, profile_dir, hlo_dir, executables)
        epoch_fn, eval_fn = compile_programs(run, hlo_dir)
        train_epochs(run, epoch_fn, eval_fn, progress)
        run.ckpts.close()
        if profile_dir is not None:
            directory = trace.profile_steps(
                run.program, run.state, *run.device_data[:2], profile_dir
            )
            run.log(f"profile of {trace.TRACED_STEPS} steady-state steps in {directory} (Perfetto)")
        return finish(run)
    finally:
        lock.release()


def start(
    config, workdir: Path, lock, resume: bool, init_model, profile_dir, hlo_dir, executables
) -> Run:
    """Program, data and workdir (locked), checked in that order before any work is done."""
    primary = parallel.is_primary()
    with parallel.all_or_none():
        splits = read_splits(config)
        program, state = train.create_program(config, init_model, executables)
        # Data first: a run that cannot start leaves no half-made workdir behind.
        train_split, test_split = load_data(config, program.input_shape, splits())
    with parallel.all_or_none():  # processes that see the workdir differently all stop
        # The output folders before any epoch: a bad --profile or --dump-hlo path
        # would otherwise fail only after training, before summary.json is written.
        # Every process traces its own steps; process 0 alone dumps HLO.
        if profile_dir is not None:
            report.ensure_dir(profile_dir, "--profile folder")
        if hlo_dir is not None and primary:
            report.ensure_dir(hlo_dir, "--dump-hlo folder")
        workdirs.prepare(workdir)
        if primary:  # the run's lock is process 0's
            lock.acquire()
        ckpts = Checkpoints(workdir, primary=primary)
        workdirs.check_resumable(workdir, config, resume, ckpts.latest_epoch())
        epoch, damaged = ckpts.newest_intact() if resume else (None, {})
    if lock.note:
        report.log(lock.note)
    run = Run(config, workdir, program, state, train_split, test_split, (), ckpts, primary=primary)
    # Every process has verified (the block above ends in a barrier); process 0 moves
    # the damaged checkpoints aside, and this block's barrier holds the others until then.
    with parallel.all_or_none():
        if damaged and primary:
            moved = ckpts.set_aside(damaged)
            for where, (bad, problem) in zip(moved, damaged.items(), strict=True):
                report.log(f"warning: the checkpoint of epoch {bad} is damaged ({problem}); "
                           f"moved to '{where}'")  # fmt: skip
    ckpts.reload()
    if epoch is not None:
        run.start_epoch = epoch
        run.state = ckpts.restore(state, epoch)
        run.log(f"resuming {config.model} from epoch {epoch} in {workdir}")
    run.rows = report.read_metrics(workdir / "metrics.jsonl", upto_epoch=run.start_epoch)
    sharding = parallel.replicated(program.mesh) if program.mesh is not None else None
    arrays = (train_split.images, train_split.labels, test_split.images, test_split.labels)
    run.device_data = tuple(jax.device_put(a, sharding) for a in arrays)
    return run


def read_splits(config: train.Config) -> Callable[[], tuple[data.Split, data.Split]]:
    """Start reading the train and test splits; the returned function waits for them.

    Files on this machine are read in a thread while the model is traced: the gzip
    inflate releases the GIL, and Fashion-MNIST's 0.3 s then overlaps the initial
    state's tracing. tensorflow-datasets and downloads stay in the caller's thread,
    where Ctrl-C reaches them and a library may install signal handlers. The
    thread is a daemon: a run that stops early does not wait for it.
    """

    def read():
        return (data.load(config.dataset, s, config.data_dir) for s in ("train", "test"))

    if data.local_directory(config.dataset, config.data_dir) is None:
        return lambda: tuple(read())
    outcome: dict[str, Any] = {}

    def work():
        try:
            outcome["splits"] = tuple(read())
        except BaseException as err:  # re-raised in the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=work, name="jaxcnn-data", daemon=True)
    thread.start()

    def wait() -> tuple[data.Split, data.Split]:
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["splits"]

    return wait


def load_data(
    config: train.Config, input_shape, splits: tuple[data.Split, data.Split] | None = None
) -> tuple[data.Split, data.Split]:
    """Train and test splits on the host (``splits``: as already read), checked against
    the model and the batch size."""
    if splits is None:
        splits = read_splits(config)()
    train_split, test_split = splits
    data.check_compatible(train_split, input_shape, config.model, config.dataset)
    if config.permute_pixels:
        train_split, test_split = data.permute_pixels(train_split), data.permute_pixels(test_split)
    if config.train_limit:
        train_split = dataclasses.replace(
            train_split,
            images=train_split.images[: config.train_limit],
            labels=train_split.labels[: config.train_limit],
        )
    n = len(train_split.labels)
    if config.batch_size > n:
        raise UserError(
            f"--batch-size {config.batch_size} is larger than the {n} training images; "
            f"lower it to {n} or less"
        )
    return train_split, test_split


def compile_programs(run: Run, hlo_dir) -> tuple:
    """The chunked epoch and the eval program, compiled ahead of time and checked to fit
    in memory (their seconds are reported)."""
    images, labels, test_images, test_labels = run.device_data
    batch_size = run.config.batch_size
    with memory.out_of_memory_is_an_error(batch_size):
        epoch = train.make_chunked_epoch(run.program, run.state, images, labels)
        eval_fn, run.eval_compile_seconds = train.timed_compile(
            run.program, "eval", train.make_eval_fn(run.program), run.state.params, test_images,
            test_labels,
        )  # fmt: skip
    run.compile_seconds = epoch.compile_seconds
    memory.check_fits({"training": epoch.chunk or epoch.tail, "evaluation": eval_fn}, batch_size)
    if hlo_dir is not None and run.primary:
        trace.dump_hlo(
            epoch.chunk or epoch.tail, Path(hlo_dir) / f"{run.config.model}_epoch.hlo.txt"
        )
        trace.dump_hlo(eval_fn, Path(hlo_dir) / f"{run.config.model}_eval.hlo.txt")
    config = run.config
    processes = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
    run.log(
        f"{config.model} on {config.dataset} ({run.train_split.source}): {len(labels)} train / "
        f"{len(test_labels)} test images, {config.optimizer} lr {config.lr}, batch "
        f"{config.batch_size}, {config.epochs} epochs, {config.devices} device(s){processes}; "
        f"compiled in {run.compile_seconds + run.eval_compile_seconds:.1f}s"
    )
    return epoch, eval_fn


def train_epochs(run: Run, epoch_fn: train.ChunkedEpoch, eval_fn, progress: bool) -> None:
    """Every remaining epoch: train, check, evaluate, then metrics row and checkpoint.

    Ctrl-C lands between compiled calls (seconds apart) and says what was kept.
    """
    config = run.config
    if run.primary:  # once the programs are compiled and fit: the run is on
        report.write_json(run.workdir / "config.json", config.to_json())
    bar = None
    if progress and run.primary:
        from tqdm import tqdm

        bar = tqdm(
            total=config.epochs * epoch_fn.steps,
            initial=run.start_epoch * epoch_fn.steps,
            unit="step",
            dynamic_ncols=True,
        )
    epoch = run.start_epoch
    try:
        for epoch in range(run.start_epoch + 1, config.epochs + 1):
            row = run_epoch(run, epoch_fn, eval_fn, epoch, bar)
            line = (
                f"epoch {epoch}/{config.epochs}: train loss {row['train_loss']:.4f}, test "
                f"accuracy {100 * row['test_accuracy']:.2f}%, {row['seconds']:.2f}s "
                f"({row['images_per_second']:,.0f} img/s)"
            )
            if bar is None:
                run.log(line)
                continue
            bar.set_postfix(epoch=epoch, loss=f"{row['train_loss']:.4f}",
                            acc=f"{100 * row['test_accuracy']:.2f}%")  # fmt: skip
            bar.write(line)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        raise KeyboardInterrupt(f"interrupted in epoch {epoch}; {kept(run)}") from None
    if bar is not None:
        bar.close()


def kept(run: Run) -> str:
    """What an interrupted or failed run leaves to continue from, in words."""
    epoch, _ = run.ckpts.newest_intact()
    if epoch is None:
        return "no epoch was completed, so there is no checkpoint to continue from"
    return (
        f"epochs 1-{epoch} are kept (checkpoint '{run.ckpts.path(epoch)}'); continue with --resume"
    )


def run_epoch(run: Run, epoch_fn: train.ChunkedEpoch, eval_fn, epoch: int, bar=None) -> dict:
    """One epoch and its evaluation; the row is written before the checkpoint."""
    images, labels, test_images, test_labels = run.device_data
    start = time.perf_counter()
    state, parts = run.state, []
    with memory.out_of_memory_is_an_error(run.config.batch_size):
        for call in epoch_fn.calls(run.state, images, labels, epoch):
            state, losses, _ = call
            parts.append(losses)
            check_finite(run, losses, sum(map(len, parts)) - len(losses), epoch)
            if bar is not None:
                bar.update(len(losses))
    seconds = time.perf_counter() - start
    losses = np.concatenate(parts)
    run.state = state
    accuracy, test_loss, predicted = eval_fn(run.state.params, test_images, test_labels)
    accuracy, test_loss = float(accuracy), float(test_loss)
    run.predicted = predicted  # of run.state, for the prediction grid
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


def check_finite(run: Run, losses: np.ndarray, first_step: int, epoch: int) -> None:
    """Stop at the first non-finite loss, naming the checkpoint that really is good."""
    if np.all(np.isfinite(losses)):
        return
    bad = int(np.argmin(np.isfinite(losses)))
    good, _ = run.ckpts.newest_intact()
    kept = (
        f"the checkpoint of epoch {good} in '{run.ckpts.directory}' is the last good one"
        if good is not None
        else "no checkpoint was written before it"
    )
    raise NonFiniteLossError(
        f"loss became {losses[bad]} at step {first_step + bad + 1} of epoch {epoch}; "
        f"stopped, {kept} (try a smaller --lr)"
    )


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
    if run.predicted is not None:  # the last evaluation's, of this state
        predicted = np.asarray(run.predicted[:n])
    else:  # a resumed run with no epoch left to train
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
