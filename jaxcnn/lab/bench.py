"""The benchmark behind ``scripts/bench.py``: seeds' loop, PyTorch, jaxcnn and its variants.

Every arm trains the same model with the same recipe (optimizer, lr, loss,
batch size) on the same Fashion-MNIST arrays for the same number of epochs and
returns one row: seconds per epoch, start-up seconds and final test accuracy.
The first epoch is a warm-up; the median, min and max of the others are the
steady-state figures. Arms:

=====================  ===========================================================
``seed_loop``          the seeds' loop as written (torchvision dataset, DataLoader)
``torch_eager``        data resident on the device, eager step per batch
``torch_graph``        resident data, the whole step in one replayed CUDA graph
``torch_compile``      as ``torch_graph``, with the model ``torch.compile``\\ d (on a
                       CPU: the compiled model, stepped eagerly; inductor's C++ code)
``jaxcnn``             ``train.py`` with its defaults
``jaxcnn:<variant>``   ``train.py`` with speed options (``--fuse``, ``--conv``, ...)
=====================  ===========================================================
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import tempfile
import traceback
from functools import cache
from pathlib import Path

import numpy as np

from jaxcnn import compute, models
from jaxcnn.lab.inputs import dataset_for

TORCH_ARMS = ("seed_loop", "torch_eager", "torch_graph", "torch_compile")
REFERENCE = "jaxcnn"  # ratios are to this arm
# The issue's targets (H100, Fashion-MNIST epoch at the seeds' batch sizes).
TARGETS = {"mnist_cnn": 0.09, "inception": 0.45, "resnet": 0.18}
# jaxcnn speed variants: name -> train.get_config overrides (the one table of them).
# Variants that repeat the defaults on this backend or model are skipped (is_redundant).
DEFAULT_VARIANTS = compute.VARIANTS


@dataclasses.dataclass
class Row:
    """One (model, batch size, arm) measurement; ``status`` is ``ok`` or why not."""

    model: str
    batch_size: int
    arm: str
    status: str = "ok"
    epoch_seconds: list[float] = dataclasses.field(default_factory=list)
    startup_seconds: float | None = None
    test_accuracy: float | None = None
    options: dict = dataclasses.field(default_factory=dict)
    rounds: list[list[float]] = dataclasses.field(default_factory=list)  # --rounds 2 and up

    @property
    def round_medians(self) -> list[float]:
        """The median epoch after the warm-up of each round (the first is ``epoch_seconds``)."""
        every = [self.epoch_seconds, *self.rounds]
        return [statistics.median(r[1:] or r) for r in every if r]

    @property
    def steady(self) -> list[float]:
        """Epoch times after each round's warm-up epoch (all of them if there is only one)."""
        return [t for r in [self.epoch_seconds, *self.rounds] for t in (r[1:] or r)]

    @property
    def median(self) -> float | None:
        return statistics.median(self.steady) if self.steady else None

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        steady = self.steady
        out.update(
            median_seconds=self.median,
            min_seconds=min(steady) if steady else None,
            max_seconds=max(steady) if steady else None,
        )
        return out


parse_variant = compute.parse_variant


def effective(name: str, options: dict, backend: str) -> compute.Compute:
    """What ``options`` amount to for model ``name`` on ``backend``: resolved as
    ``train.get_config`` resolves them (``auto`` chosen), with ``fuse`` dropped where
    the model has no fused form and the XLA options of other backends dropped."""
    resolved = compute.resolve(options, backend=backend)
    # XLA ignores the options of other backends (xla_gpu_* on a CPU)
    others = tuple(f"xla_{b}_" for b in ("cpu", "gpu", "tpu") if b != backend)
    xla = tuple(o for o in resolved.xla_options if not o[0].startswith(others))
    fuse = resolved.fuse and models.get_spec(name).fusable
    return dataclasses.replace(resolved, xla_options=xla, fuse=fuse)


def is_redundant(name: str, options: dict, before: list[dict] = (), *, backend: str) -> bool:
    """True when ``options`` compute exactly what ``train.py``'s defaults, or one of the
    variants in ``before``, compute here.

    E.g. ``fuse`` for a model without a fused form, or ``conv=im2col`` on a CPU
    where ``auto`` already picks it: running them would only repeat a row.
    """
    mine = effective(name, options, backend)
    return any(mine == effective(name, other, backend) for other in [{}, *before])


def run_jaxcnn(name: str, batch_size: int, epochs: int, source: Source, options: dict, **kw) -> Row:
    """``train.py``'s trainer (``experiment.train_and_evaluate``) with ``options``."""
    from jaxcnn import experiment, train

    config = train.get_config(
        name, source.dataset, batch_size=batch_size, epochs=epochs, data_dir=source.data_dir,
        **kw, **options,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as workdir:
        summary = experiment.train_and_evaluate(config, workdir, progress=False)
    return Row(
        name,
        batch_size,
        "jaxcnn",
        epoch_seconds=summary["epoch_seconds"],
        startup_seconds=summary["compile_seconds"],
        test_accuracy=summary["test_accuracy"],
        options=options,
    )


def run_torch(arm: str, name: str, batch_size: int, epochs: int, arrays, raw_root, seed) -> Row:
    """One PyTorch arm on the same arrays (or, for ``seed_loop``, the same files)."""
    import torch

    from parity import reference_train as ref

    device = "cuda" if torch.cuda.is_available() else "cpu"
    kw = {"seed": seed, "epochs": epochs, "batch_size": batch_size}
    if arm == "seed_loop":
        result = ref.train_seed_loop(name, raw_root(), device=device, **kw)
    elif arm == "torch_eager":
        result = ref.train_resident(name, *arrays, device=device, **kw)
    else:  # off a GPU, torch_compile is the compiled model stepped eagerly (no graph)
        result = ref.train_graphed(
            name, *arrays, compile_model=arm == "torch_compile", device=device,
            capture=device == "cuda", **kw,
        )  # fmt: skip
    return Row(
        name,
        batch_size,
        arm,
        epoch_seconds=result["epoch_seconds"],
        startup_seconds=result["startup_seconds"],
        test_accuracy=result["test_accuracy"][-1],
    )


def skip_reason(arm: str, options: dict | None = None, synthetic: bool = False) -> str | None:
    """Why ``arm`` (with a jaxcnn variant's ``options``) cannot run on this machine, or
    None. ``synthetic``: the model trains on :func:`synthetic_cifar` data."""
    if arm == "seed_loop" and synthetic:
        return "skipped: the seeds' loop reads the real CIFAR-10 (torchvision)"
    if arm not in TORCH_ARMS:
        import jax

        why = compute.options_unavailable(options or {}, jax.default_backend())
        return f"skipped: {why}" if why else None
    try:
        import torch
    except ImportError:
        return "skipped: torch is not installed"
    if arm == "torch_graph" and not torch.cuda.is_available():
        return "skipped: CUDA graphs need a CUDA GPU"
    if arm == "torch_compile" and not torch.cuda.is_available() and not shutil.which("c++"):
        return "skipped: torch.compile on a CPU needs a C++ compiler (c++)"
    if arm == "seed_loop":
        try:
            import torchvision  # noqa: F401
        except Exception as err:  # a torchvision built for another torch fails oddly
            return f"skipped: torchvision does not import ({type(err).__name__})"
    return None


def failed(model: str, batch_size: int, arm: str, err: BaseException) -> Row:
    """A row that records an arm's failure in one line (the traceback goes to stderr)."""
    traceback.print_exc()
    return Row(model, batch_size, arm, status=f"failed: {type(err).__name__}: {err}"[:300])


def with_ratios(rows: list[Row]) -> list[dict]:
    """Rows as JSON, each with ``ratio_to_jaxcnn`` (its median over jaxcnn's, same model/batch)."""
    ref = {(r.model, r.batch_size): r.median for r in rows if r.arm == REFERENCE and r.median}
    out = []
    for row in rows:
        item = row.to_json()
        base = ref.get((row.model, row.batch_size))
        item["ratio_to_jaxcnn"] = row.median / base if row.median and base else None
        out.append(item)
    return out


def markdown(rows: list[Row], env: dict, note: str = "") -> str:
    """The results table, and the targets of the issue checked against the fastest jaxcnn."""
    header = (
        f"Fashion-MNIST, {env.get('device')}"
        + (f" (driver {env['driver']})" if "driver" in env else f" ({env.get('host')})")
        + ", "
        f"jax {env.get('jax')}, flax {env.get('flax')}, optax {env.get('optax')}, "
        f"torch {env.get('torch', '-')}, Python {env.get('python')}. {note}".rstrip()
    )
    lines = [
        header,
        "",
        "| model | batch | arm | s/epoch median | min-max | start-up s | test acc % | x jaxcnn |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for item in with_ratios(rows):
        if item["status"] != "ok":
            lines.append(
                f"| `{item['model']}` | {item['batch_size']} | {item['arm']} | {item['status']} "
                "| | | | |"
            )
            continue
        ratio = f"{item['ratio_to_jaxcnn']:.2f}" if item["ratio_to_jaxcnn"] else "-"
        startup, accuracy = item["startup_seconds"], item["test_accuracy"]
        lines.append(
            f"| `{item['model']}` | {item['batch_size']} | {item['arm']} "
            f"| {item['median_seconds']:.3f} | {item['min_seconds']:.3f}-{item['max_seconds']:.3f} "
            f"| {'-' if startup is None else f'{startup:.1f}'} "
            f"| {'-' if accuracy is None else f'{100 * accuracy:.2f}'} | {ratio} |"
        )
    lines += ["", *speed_lines(rows)]
    if "H100" in str(env.get("device")):
        lines += ["", *target_lines(rows)]
    else:
        lines += [
            "",
            f"The issue's speed targets are for an H100; not checked on {env.get('device')}.",
        ]
    return "\n".join(lines) + "\n"


FAST_TORCH_ARMS = ("torch_eager", "torch_graph", "torch_compile")


def speed_lines(rows: list[Row]) -> list[str]:
    """Per (model, batch): jaxcnn's defaults against the best PyTorch arm that ran, as a
    speed ratio (best torch s/epoch over jaxcnn's: above 1, jaxcnn is faster).

    With several rounds the ratio is paired: within each round, the fastest torch arm's
    median over jaxcnn's; the line gives the median of those and their range, so load
    that drifts between rounds cancels out.
    """
    out = []
    for key in dict.fromkeys((r.model, r.batch_size) for r in rows):
        same = [r for r in rows if (r.model, r.batch_size) == key and r.median]
        mine = next((r for r in same if r.arm == REFERENCE), None)
        torch_rows = [r for r in same if r.arm in FAST_TORCH_ARMS]
        if mine is None or not torch_rows:
            continue
        best = min(torch_rows, key=lambda r: r.median)
        line = (
            f"- `{key[0]}` (batch {key[1]}): jaxcnn {mine.median:.3f} s/epoch, best PyTorch "
            f"arm {best.arm} {best.median:.3f} s: speed ratio "
        )
        ratios = paired_ratios(mine, torch_rows)
        if len(ratios) < 2:
            out.append(line + f"{best.median / mine.median:.2f}")
        else:
            out.append(
                line + f"{statistics.median(ratios):.2f} (paired over {len(ratios)} rounds: "
                f"{min(ratios):.2f}-{max(ratios):.2f})"
            )
    return out


def paired_ratios(mine: Row, torch_rows: list[Row]) -> list[float]:
    """Per round that every row ran: the fastest torch arm's median over ``mine``'s."""
    count = min(len(r.round_medians) for r in [mine, *torch_rows])
    return [
        min(r.round_medians[i] for r in torch_rows) / mine.round_medians[i] for i in range(count)
    ]


def target_lines(rows: list[Row]) -> list[str]:
    """Each target model at its seed batch size: fastest float32 jaxcnn vs target and torch."""
    out = []
    for name, target in TARGETS.items():
        batch = models.get_spec(name).recipe.batch_size
        mine = [
            r
            for r in rows
            if r.model == name and r.batch_size == batch and r.arm.startswith("jaxcnn")
            and r.median and r.options.get("dtype", "float32") == "float32"
        ]  # fmt: skip
        if not mine:
            continue
        best = min(mine, key=lambda r: r.median)
        label = best.arm if best.arm != "jaxcnn" else "jaxcnn (defaults)"
        parts = [
            f"`{name}` (batch {batch}): {label} {best.median:.3f} s/epoch, target <= {target} s: "
            f"{'met' if best.median <= target else 'NOT met'}"
        ]
        for arm, factor in (("torch_graph", 2), ("seed_loop", 50)):
            other = next(
                (r for r in rows if (r.model, r.batch_size, r.arm) == (name, batch, arm)), None
            )
            if other is not None and other.median:
                speedup = other.median / best.median
                verdict = "met" if speedup >= factor else "NOT met"
                parts.append(f"{speedup:.1f}x faster than {arm} ({verdict}, target >= {factor}x)")
        out.append("- " + "; ".join(parts))
    return out


def plot(rows: list[Row], path: Path) -> bool:
    """Grouped bars of median s/epoch (log scale), one panel per batch-size kind."""
    from jaxcnn import report

    plt = report.pyplot()
    ok = [r for r in rows if r.median]
    if plt is None or not ok:
        return False
    seed_sizes = {r.model: models.get_spec(r.model).recipe.batch_size for r in ok}
    panels = {
        "seed batch sizes": [r for r in ok if r.batch_size == seed_sizes[r.model]],
        "large batch": [r for r in ok if r.batch_size != seed_sizes[r.model]],
    }
    panels = {k: v for k, v in panels.items() if v}
    arms = list(dict.fromkeys(r.arm for r in ok))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, (title, panel) in zip(axes[0], panels.items(), strict=True):
        names = list(dict.fromkeys(r.model for r in panel))
        width = 0.8 / len(arms)
        for i, arm in enumerate(arms):
            values = {r.model: r.median for r in panel if r.arm == arm}
            xs = [j + i * width for j, n in enumerate(names) if n in values]
            ax.bar(xs, [values[n] for n in names if n in values], width, label=arm)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))])
        ax.set_xticklabels(
            [f"{n}\n(batch {next(r.batch_size for r in panel if r.model == n)})" for n in names]
        )
        ax.set_yscale("log")
        ax.set_ylabel("seconds per epoch (median)")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def arrays(tr, te, train_limit: int | None):
    """The (train images, train labels, test images, test labels) every torch arm gets."""
    return (tr.images[:train_limit], np.asarray(tr.labels[:train_limit]), te.images, te.labels)


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a model's rows get their data: the trainer's ``--dataset``/``--data-dir``
    and the arrays the torch arms get (:func:`arrays`)."""

    dataset: str
    data_dir: str
    torch_data: tuple
    synthetic: bool = False


SYNTHETIC_TRAIN = 4096  # images per synthetic CIFAR-10 train split (without --train-limit)
SYNTHETIC_TEST = 1000


def synthetic_cifar(directory: Path, n_train: int, seed: int = 0) -> Path:
    """Random 32x32x3 images and labels as CIFAR-10 python batches in ``directory``.

    CIFAR-10 cannot be downloaded on the machines this is built on, and the
    models that take 32x32x3 input (``cifar_cnn``) are benchmarked for speed
    only: every arm trains on the same random arrays, whose accuracy means
    nothing. The five train batches share ``n_train`` images; the test batch
    holds :data:`SYNTHETIC_TEST`.
    """
    import pickle

    from jaxcnn import data

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    sizes = [len(part) for part in np.array_split(np.arange(n_train), 5)]
    for name, n in zip(
        data.CIFAR_FILES["train"] + data.CIFAR_FILES["test"], [*sizes, SYNTHETIC_TEST], strict=True
    ):
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist(),
        }
        (directory / name).write_bytes(pickle.dumps(batch))
    return directory


def run(
    model_names: list[str],
    batch_sizes: list[str],
    epochs: int,
    arms: list[str],
    extra_variants: list[str],
    *,
    no_variants: bool,
    train_limit: int | None,
    seed: int,
    data_dir: str,
    out: Path,
    keep: bool,
    rounds: int = 1,
    busy: int = 0,
) -> str:
    """``scripts/bench.py``: every (model, batch size, arm) row, written to OUT.json and
    OUT.md after each one and plotted to OUT.png at the end; returns the table.

    ``batch_sizes``: ``"seed"`` (each recipe's) or positive integers, as strings.
    ``rounds``: how often each model's arms run, back to back, in rotating order
    (:func:`run_rows`). ``busy``: processes that keep a core busy while the rows run
    (:mod:`jaxcnn.lab.busy`); a run continued with ``keep`` must use the same count.
    """
    from jaxcnn import report, train
    from jaxcnn.errors import UserError
    from jaxcnn.lab.busy import busy_processes

    for name in model_names:  # names, --epochs and --train-limit, as the trainer checks them
        train.get_config(name, "fashion_mnist", epochs=epochs, train_limit=train_limit)
    variants = {} if no_variants else dict(DEFAULT_VARIANTS)
    variants.update(parse_variant(v) for v in extra_variants)
    if rounds < 1:
        raise UserError(f"--rounds must be at least 1, got {rounds}")
    if busy < 0:
        raise UserError(f"--busy must be 0 or more, got {busy}")
    for value in batch_sizes:
        if value != "seed" and not (value.isdigit() and int(value) > 0):
            raise UserError(f"--batch-sizes: expected 'seed' or a positive integer, got '{value}'")
    json_path = out.with_suffix(".json")
    if json_path.exists() and not keep:
        raise UserError(f"'{json_path}' exists; pass --keep to continue it or choose another --out")
    check_same_load(json_path, busy)
    report.ensure_dir(out.parent, "--out folder")
    with tempfile.TemporaryDirectory(prefix="jaxcnn-bench-") as scratch:
        sources = make_sources(model_names, data_dir, train_limit, seed, Path(scratch))
        with busy_processes(busy):
            return run_rows(
                model_names, batch_sizes, epochs, arms, variants, sources, out,
                train_limit=train_limit, seed=seed, data_dir=data_dir, rounds=rounds, busy=busy,
            )  # fmt: skip


def check_same_load(json_path: Path, busy: int) -> None:
    """A run continued with ``--keep`` ran beside as many busy processes as this one:
    rows measured under different loads would share one table."""
    from jaxcnn.errors import UserError

    if not json_path.exists():
        return
    try:
        before = json.loads(json_path.read_text())["environment"].get("busy_processes", 0)
    except (ValueError, KeyError, AttributeError, TypeError):
        raise UserError(f"'{json_path}' is not a benchmark's JSON; choose another --out") from None
    if before != busy:
        raise UserError(
            f"'{json_path}' was measured with --busy {before}; continue it with --busy {before} "
            "or choose another --out"
        )


def run_note(epochs: int, rounds: int, busy: int, train_limit: int | None, sources) -> str:
    """The markdown header's account of how the numbers were taken: epochs, rounds,
    busy processes, the training images used and which models ran on synthetic data."""
    note = f"{epochs} epochs per arm (first = warm-up)"
    if rounds > 1:
        note += f", {rounds} rounds in rotating order"
    if busy:
        note += f", {busy} busy process{'es' if busy > 1 else ''} beside it (--busy)"
    if train_limit:
        note += f", first {train_limit} training images only"
    synthetic = [name for name, source in sources.items() if source.synthetic]
    if synthetic:
        note += (
            f"; {', '.join(synthetic)} on synthetic 32x32x3 data "
            f"({len(sources[synthetic[0]].torch_data[0])} random images: accuracy means nothing)"
        )
    return note


def run_rows(
    model_names, batch_sizes, epochs, arms, variants, sources, out, *,
    train_limit: int | None, seed: int, data_dir: str, rounds: int = 1, busy: int = 0,
) -> str:  # fmt: skip
    """:func:`run`'s rows, once the options are checked and the data is loaded.

    Each (model, batch size) runs its arms ``rounds`` times, the rounds back to back
    and the arms' order rotated by one each round, so that no arm always runs first
    after a model's data is loaded, or always last. Later rounds add their epochs to
    the row (``Row.rounds``); their start-up and accuracy are the first round's.
    """
    from jaxcnn import report

    json_path = out.with_suffix(".json")
    env = environment()
    env["busy_processes"] = busy
    results = finished_rows(json_path)  # --keep: finished rows stay
    note = run_note(epochs, rounds, busy, train_limit, sources)

    @cache
    def raw_root() -> str:
        from parity.reference_train import torchvision_root

        return torchvision_root(Path(data_dir))

    jobs = plan(model_names, batch_sizes, arms, variants)
    order = {job[:3]: i for i, job in enumerate(jobs)}

    def save() -> list[Row]:
        rows = sorted(results.values(), key=lambda r: order.get((r.model, r.batch_size, r.arm), -1))
        report.write_json(json_path, {"environment": env, "rows": with_ratios(rows)})
        report.write_atomic(out.with_suffix(".md"), markdown(rows, env, note))
        return rows

    for r, (name, batch, arm, options) in rotated(jobs, rounds):
        key = (name, batch, arm)
        before = results.get(key)
        if before is not None and (before.status != "ok" or len(before.round_medians) > r):
            continue  # done (--keep), or a row that did not run in the first round
        reason = skip_reason(arm, options, sources[name].synthetic)
        if reason:
            results[key] = Row(name, batch, arm, status=reason)
        else:
            report.log(f"bench: {name}, batch {batch}, {arm}" + (f", round {r + 1}" if r else ""))
            row = run_arm(name, batch, arm, options, epochs, sources[name], raw_root,
                          seed=seed, train_limit=train_limit)  # fmt: skip
            if before is None:
                results[key] = row
            elif row.status == "ok":
                before.rounds.append(row.epoch_seconds)
            else:  # the first round's numbers stay; the row says what went wrong later
                report.log(f"bench: round {r + 1} of {name}, {arm}: {row.status}")
        save()
    plot(save(), out.with_suffix(".png"))
    return out.with_suffix(".md").read_text()


def make_sources(
    model_names: list[str], data_dir: str, train_limit: int | None, seed: int, scratch: Path
) -> dict[str, Source]:
    """Each model's :class:`Source`: Fashion-MNIST from ``data_dir`` for the 28x28x1
    models, one shared :func:`synthetic_cifar` folder under ``scratch`` for 32x32x3."""
    from jaxcnn import data

    loaded: dict[str, Source] = {}
    out = {}
    for name in model_names:
        kind = dataset_for(name)
        if kind not in loaded:
            where = data_dir
            if kind == "cifar10":
                n_train = train_limit or SYNTHETIC_TRAIN
                where = str(synthetic_cifar(scratch / "cifar10", n_train, seed))
            tr, te = data.load(kind, "train", where), data.load(kind, "test", where)
            torch_data = arrays(tr, te, train_limit)
            loaded[kind] = Source(kind, where, torch_data, synthetic=kind == "cifar10")
        out[name] = loaded[kind]
    return out


def environment() -> dict:
    """The machine and versions a benchmark ran on, torch's too where it imports."""
    from jaxcnn import report

    env = report.environment()
    try:
        import torch

        env["torch"] = torch.__version__
    except ImportError:
        pass
    return env


def rotated(jobs: list[tuple], rounds: int) -> list[tuple[int, tuple]]:
    """(round, job) in the order to run them: per (model, batch size), its jobs
    ``rounds`` times, the order rotated by one job each round."""
    from jaxcnn.lab.paired import rotation

    groups: dict[tuple, list[tuple]] = {}
    for job in jobs:
        groups.setdefault(job[:2], []).append(job)
    return [
        (r, job) for group in groups.values() for r in range(rounds) for job in rotation(group, r)
    ]


def finished_rows(json_path: Path) -> dict[tuple, Row]:
    """(model, batch size, arm) -> row, for the finished rows of an earlier run's JSON
    (skipped and failed ones run again)."""
    results: dict[tuple, Row] = {}
    if json_path.exists():
        fields = set(Row.__dataclass_fields__)
        for item in json.loads(json_path.read_text())["rows"]:
            row = Row(**{k: v for k, v in item.items() if k in fields})
            if row.status == "ok":
                results[(row.model, row.batch_size, row.arm)] = row
    return results


def plan(model_names, batch_sizes, arms, variants: dict) -> list[tuple]:
    """(model, batch size, arm, options) for every row to run, in table order: each
    jaxcnn variant that computes differently from the defaults and the variants before
    it on this backend, and the ones this machine cannot run (as rows saying why)."""
    import jax

    jobs = []
    for name in model_names:
        seed_batch = models.get_spec(name).recipe.batch_size
        for value in dict.fromkeys(seed_batch if v == "seed" else int(v) for v in batch_sizes):
            for arm in arms:
                jobs.append((name, value, arm, {}))
                if arm != "jaxcnn":
                    continue
                kept: list[dict] = []
                for label, options in variants.items():
                    if skip_reason(arm, options):  # a row that says why
                        jobs.append((name, value, f"jaxcnn:{label}", options))
                    elif not is_redundant(name, options, kept, backend=jax.default_backend()):
                        kept.append(options)
                        jobs.append((name, value, f"jaxcnn:{label}", options))
    return jobs


def run_arm(name, batch, arm, options, epochs, source: Source, raw_root, **kw) -> Row:
    """One row; an arm that fails becomes a row saying so, not a lost run."""
    from jaxcnn.errors import UserError

    try:
        if arm.startswith("jaxcnn"):
            row = run_jaxcnn(name, batch, epochs, source, options, **kw)
            row.arm = arm
            return row
        return run_torch(arm, name, batch, epochs, source.torch_data, raw_root, kw["seed"])
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as err:  # one arm failing must not lose the others' numbers
        return failed(name, batch, arm, err)
