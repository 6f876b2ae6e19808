"""Orbax checkpoints of the train state, one per completed epoch, and resume.

Orbax writes each checkpoint to a temporary directory and renames it when it is
complete, so a run killed mid-save (even with SIGKILL) leaves the previous
epoch's checkpoint as the latest one, never a half-written one.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from jaxcnn.errors import UserError, first_line


class Checkpoints:
    """The checkpoints of one workdir, numbered by completed epoch."""

    def __init__(self, workdir: str | Path, keep: int = 2):
        self.directory = Path(workdir).absolute() / "checkpoints"
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        )

    def latest_epoch(self) -> int | None:
        return self.manager.latest_step()

    def save(self, epoch: int, state) -> None:
        """Save and wait: the next epoch's donated buffers must not be read by a writer."""
        self.manager.save(epoch, args=ocp.args.StandardSave(state))
        self.manager.wait_until_finished()

    def restore(self, template, epoch: int | None = None):
        """The state saved after ``epoch`` (default: the latest), shaped like ``template``."""
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise UserError(f"no checkpoint in '{self.directory}'")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        try:
            return self.manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
        except (ValueError, KeyError, FileNotFoundError) as err:
            raise UserError(
                f"checkpoint '{self.directory / str(epoch)}' does not fit this model and "
                f"optimizer ({first_line(err)})"
            ) from None

    def close(self) -> None:
        self.manager.close()


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
