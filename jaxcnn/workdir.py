"""A run's workdir: one run at a time (a lock), entries of the right kind, resume rules.

The lock is an ``fcntl.flock`` on ``workdir/.lock``, a file that also names its
holder (host, pid, start time). The kernel drops a flock when its process ends,
however it ends (``kill -9`` included), so a lock is never stale in the kernel's
eyes; a holder line left behind by a killed run is only a note, read to say
that its lock was taken over. On file systems without ``flock`` (some network
mounts) the run says so and goes on unlocked rather than refusing to start.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from jaxcnn import report, train
from jaxcnn.errors import UserError

LOCK = ".lock"
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
# What a run writes at the top of its workdir, and the kind each must be.
ENTRIES = {
    "config.json": "file",
    "metrics.jsonl": "file",
    "summary.json": "file",
    "curves.png": "file",
    "predictions.png": "file",
    "checkpoints": "folder",
    LOCK: "file",
}


class WorkdirLock:
    """Held from the start of a run to its end; ``release`` (or process exit) frees it."""

    def __init__(self, workdir: Path):
        self.path = workdir / LOCK
        self.fd: int | None = None
        self.note: str | None = None  # a line to print: a killed run's lock taken over

    def acquire(self) -> WorkdirLock:
        """Take the lock or raise a :class:`UserError` naming the run that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise UserError(
                f"workdir '{self.path.parent}' is in use by another run ({holder}); wait "
                "for it to finish or choose another --workdir"
            ) from None
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            os.close(fd)
            self.note = f"warning: cannot lock '{self.path}' on this file system; not locked"
            return self
        previous = _read_holder(fd)
        if previous:
            self.note = (
                f"took over the lock of a run that stopped without releasing it ({previous})"
            )
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%c")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Clear the holder line and unlock; a finished run leaves no note behind."""
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def _read_holder(fd: int) -> str:
    """``host H, pid P, since T`` from a lock file's holder line ('' when empty)."""
    raw = os.pread(fd, 4096, 0)
    if not raw.strip():
        return ""
    try:
        h = json.loads(raw)
        return f"host {h['host']}, pid {h['pid']}, since {h['since']}"
    except (ValueError, KeyError, TypeError):
        return "its holder note is unreadable"


def check_entries(workdir: Path) -> None:
    """Each file a run writes must not be a folder, and ``checkpoints`` not a file."""
    for name, kind in ENTRIES.items():
        path = workdir / name
        if not path.exists():
            continue
        if (kind == "folder") != path.is_dir():
            other = "folder" if path.is_dir() else "file"
            raise UserError(
                f"'{path}' is a {other} where the run keeps its {name} {kind}; "
                "move it away or choose another --workdir"
            )


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


def check_resumable(workdir: Path, config: train.Config, resume: bool, latest: int | None):
    """Refuse to overwrite a run, to resume none, and to resume one with another recipe."""
    saved = workdir / "config.json"
    if latest is not None and not resume:
        raise UserError(
            f"workdir '{workdir}' already holds a run (checkpoint of epoch {latest}); "
            "pass --resume to continue it or choose another --workdir"
        )
    if not resume:
        return
    if not saved.exists():
        raise UserError(
            f"--resume: '{workdir}' holds no run (no config.json); check the --workdir, "
            "or leave out --resume to start one there"
        )
    try:
        old = resume_view(json.loads(saved.read_text()))
    except (ValueError, AttributeError):
        raise UserError(f"--resume: '{saved}' is not a run's config (unreadable JSON)") from None
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


def prepare(workdir: Path) -> None:
    """The workdir as a writable folder whose entries are of the right kinds."""
    report.ensure_dir(workdir, "workdir")
    check_entries(workdir)
