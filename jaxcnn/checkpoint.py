"""Orbax checkpoints of the train state, one per completed epoch, each verified.

Orbax writes a checkpoint to a temporary folder and renames it when complete, so
a kill mid-save never leaves half a checkpoint under its epoch's name. What the
rename cannot tell is whether the bytes are still the ones written: a disk, a
copy or a person may truncate or overwrite them later, and orbax then loads
garbage or fails with a TensorStore traceback. So after orbax finishes, a
manifest of every file's size and sha256 is written beside the data
(``checkpoints/<epoch>/jaxcnn-manifest.json``, atomically). Only a checkpoint
whose files match its manifest counts: ``--resume`` takes the newest such one,
setting the others aside (moved, never deleted) into ``damaged-checkpoints/``,
and ``evaluate`` refuses a damaged one, naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import threading
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from jaxcnn.errors import UserError, first_line

MANIFEST = "jaxcnn-manifest.json"
SET_ASIDE = "damaged-checkpoints"


class Checkpoints:
    """The checkpoints of one workdir, numbered by completed epoch."""

    def __init__(self, workdir: str | Path, keep: int = 2, primary: bool = True):
        self.directory = Path(workdir).absolute() / "checkpoints"
        if self.directory.exists() and not self.directory.is_dir():
            raise UserError(
                f"'{self.directory}' is a file, not the run's checkpoints folder; "
                "move it away or choose another --workdir"
            )
        self.primary = primary  # process 0 writes the manifests
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        )

    def epochs(self) -> list[int]:
        """Every epoch with a checkpoint folder, verified or not, oldest first."""
        return sorted(self.manager.all_steps())

    def latest_epoch(self) -> int | None:
        """The newest checkpoint's epoch, verified or not (None: no checkpoint)."""
        return self.manager.latest_step()

    def path(self, epoch: int) -> Path:
        return self.directory / str(epoch)

    def save(self, epoch: int, state) -> None:
        """Save, wait, then write the manifest: only then does the checkpoint count.

        Waiting also keeps the next epoch's donated buffers from being read by a writer.
        """
        with interrupts_deferred():
            self.manager.save(epoch, args=ocp.args.StandardSave(state))
            self.manager.wait_until_finished()
            if self.primary:
                write_manifest(self.path(epoch))

    def problem(self, epoch: int) -> str | None:
        """What is wrong with the checkpoint of ``epoch`` (None: intact)."""
        return verify(self.path(epoch))

    def newest_intact(self) -> tuple[int | None, dict[int, str]]:
        """The newest intact checkpoint's epoch (None: none), and each newer one's problem."""
        bad: dict[int, str] = {}
        for epoch in reversed(self.epochs()):
            problem = self.problem(epoch)
            if problem is None:
                return epoch, bad
            bad[epoch] = problem
        return None, bad

    def set_aside(self, epochs) -> list[Path]:
        """Move these checkpoints into ``damaged-checkpoints/`` (kept for a post-mortem,
        out of orbax's sight so their epochs can be saved again); returns where to."""
        moved = []
        for epoch in epochs:
            target = self.directory.parent / SET_ASIDE / str(epoch)
            n = 1
            while target.exists():
                n += 1
                target = target.with_name(f"{epoch}.{n}")
            target.parent.mkdir(exist_ok=True)
            os.replace(self.path(epoch), target)
            moved.append(target)
        self.reload()
        return moved

    def reload(self) -> None:
        """Read the folder again (after checkpoints were moved away, by any process)."""
        self.manager.reload()

    def restore(self, template, epoch: int | None = None):
        """The state saved after ``epoch`` (default: the newest), shaped like ``template``.

        Raises:
            UserError: no checkpoint; a damaged one (naming the file and, if there
                is one, the newest intact epoch); or one that fits another model.
        """
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise UserError(f"no checkpoint in '{self.directory}'")
        if not self.path(epoch).is_dir():
            raise UserError(f"no checkpoint of epoch {epoch} in '{self.directory}'")
        problem = self.problem(epoch)
        if problem is not None:
            intact = [e for e in self.epochs() if e != epoch and self.problem(e) is None]
            hint = f"; the checkpoint of epoch {intact[-1]} is intact" if intact else ""
            raise UserError(f"checkpoint '{self.path(epoch)}' is damaged: {problem}{hint}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        try:
            return self.manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
        except (ValueError, KeyError, FileNotFoundError) as err:
            raise UserError(
                f"checkpoint '{self.path(epoch)}' does not fit this model and "
                f"optimizer ({first_line(err)})"
            ) from None

    def close(self) -> None:
        self.manager.close()


@contextlib.contextmanager
def interrupts_deferred():
    """Ctrl-C (SIGINT) during the block lands when it ends: a checkpoint is then saved
    and verified whole, or not begun, and orbax's writer thread is never left mid-save
    by an interrupt (once, under CI's load, a run did not exit within 60 s of a SIGINT
    that could have landed there). Elsewhere than the main thread, or where SIGINT has
    another handler, the block runs as it is."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    caught = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Record the size and sha256 of every file under ``folder`` (atomically)."""
    entries = {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in _files(folder)
    }
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"files": entries}, indent=1) + "\n")
    os.replace(tmp, folder / MANIFEST)


def verify(folder: Path) -> str | None:
    """None if every file the manifest lists is there with its size and sha256; else
    what is wrong, in a few words. Files the manifest does not list are ignored."""
    try:
        entries = json.loads((folder / MANIFEST).read_text())["files"]
        items = [(name, int(e["size"]), str(e["sha256"])) for name, e in entries.items()]
    except FileNotFoundError:
        return f"it has no {MANIFEST} (its save did not finish, or an older jaxcnn wrote it)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"its {MANIFEST} is unreadable"
    for name, size, sha in items:
        path = folder / name
        if not path.is_file():
            return f"'{name}' is missing"
        if path.stat().st_size != size:
            return f"'{name}' holds {path.stat().st_size} bytes, {size} were written"
        if _sha256(path) != sha:
            return f"the bytes of '{name}' differ from those written (sha256)"
    return None


def find_checkpoint_dir(path: str | Path) -> tuple[Path, int | None]:
    """Accept a workdir, its ``checkpoints`` folder, or one numbered checkpoint."""
    path = Path(path).absolute()
    if (path / "checkpoints").is_dir():
        return path, None
    if path.name == "checkpoints" and path.is_dir():
        return path.parent, None
    if path.name.isdigit() and path.parent.name == "checkpoints":
        return path.parent.parent, int(path.name)
    raise UserError(
        f"'{path}' is not a jaxcnn workdir or checkpoint (expected a folder holding "
        "'checkpoints/<epoch>')"
    )
