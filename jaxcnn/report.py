"""What a run leaves in its workdir: metrics.jsonl, summary.json and two PNGs."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from jaxcnn.errors import UserError


def cache_home() -> Path:
    """``$XDG_CACHE_HOME/jaxcnn``, else ``~/.cache/jaxcnn``: the folder of jaxcnn's caches
    (compiled programs, datasets, the direct convolution kernel)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jaxcnn"


def environment() -> dict[str, str]:
    """Device and library versions, for summary.json and benchmark headers."""
    import flax
    import jax
    import optax

    device = jax.devices()[0]
    env = {
        "device": getattr(device, "device_kind", str(device)),
        "platform": jax.default_backend(),
        "device_count": str(jax.device_count()),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "host": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    if jax.default_backend() == "gpu":
        env["driver"] = _nvidia_driver()
    if os.environ.get("XLA_FLAGS"):  # numbers measured under flags say so
        env["xla_flags"] = os.environ["XLA_FLAGS"]
    return env


def _nvidia_driver() -> str:
    """The NVIDIA driver version from nvidia-smi, or "unknown"."""
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else "unknown"


def ensure_dir(path: str | Path, what: str) -> Path:
    """``path`` as a folder this process can write into, made if missing.

    Called before the work whose results go there, so a mistyped ``--workdir``,
    ``--out`` or ``--profile`` costs a line, not a finished run's outputs.

    Raises:
        UserError: naming ``what`` and the path, when it cannot be made or written.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the {what} '{path}': {err.strerror or err}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into the {what} '{path}': permission denied")
    return path


def write_atomic(path: Path, text: str) -> None:
    """Write atomically (temp file + rename): a killed run never leaves half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_metrics(path: Path, upto_epoch: int | None = None) -> list[dict]:
    """The metrics lines, keeping only epochs <= ``upto_epoch`` (resume drops the rest)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: the epoch is re-run anyway
            continue
        if upto_epoch is None or row["epoch"] <= upto_epoch:
            rows.append(row)
    return rows


def write_metrics(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def figure(width: float, height: float):
    """A matplotlib ``Figure`` drawn by the Agg canvas (files only), or None if
    matplotlib is missing.

    Built without pyplot, and laid out with fixed margins rather than
    ``tight_layout``: at the end of every run both took about 0.5 s of a
    short run's ~9 s (2-core EPYC), and neither adds anything to a PNG.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def plot_curves(path: Path, rows: list[dict], title: str) -> bool:
    """Train loss and test accuracy per epoch; False if matplotlib is missing."""
    fig = figure(9, 3.5)
    if fig is None:
        return False
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [r["train_loss"] for r in rows], "o-")
    ax1.set(xlabel="epoch", ylabel="train loss", title="loss")
    ax2.plot(epochs, [100 * r["test_accuracy"] for r in rows], "o-", color="C1")
    ax2.set(xlabel="epoch", ylabel="test accuracy (%)", title="accuracy")
    for ax in (ax1, ax2):  # whole epochs only, with room around a single point
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(min(epochs, default=1) - 0.5, max(epochs, default=1) + 0.5)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.8, wspace=0.3)
    fig.savefig(path, dpi=100)
    return True


def plot_predictions(
    path: Path, images: np.ndarray, labels, predictions, title: str, class_names=None
) -> bool:
    """A grid of test images titled with their predicted class (and the true one where
    it is wrong, in red), as seed 001 shows; ``class_names[label]`` names a class."""
    n, cols = len(images), 5
    rows = -(-n // cols)
    fig = figure(2 * cols, 2.7 * rows)
    if fig is None:
        return False
    axes = fig.subplots(rows, cols, squeeze=False)
    name = (lambda c: class_names[c]) if class_names else str
    for ax, img, y, p in zip(np.ravel(axes), images, labels, predictions, strict=False):
        ax.imshow(img.squeeze(), cmap="gray" if img.shape[-1] == 1 else None)
        text = name(int(p)) if p == y else f"{name(int(p))}\n(true: {name(int(y))})"
        ax.set_title(text, color="black" if p == y else "red", fontsize=9)
    for ax in np.ravel(axes):
        ax.axis("off")
    fig.suptitle(title)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.5 / (2.7 * rows), hspace=0.4)
    fig.savefig(path, dpi=100)
    return True


def log(message: str) -> None:
    print(message, file=sys.stderr if message.startswith("warning") else sys.stdout, flush=True)
