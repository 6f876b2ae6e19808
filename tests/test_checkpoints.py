"""Verified checkpoints: every kind of damage to any file of the newest checkpoint is
found; ``--resume`` continues from the newest intact one, ``evaluate`` refuses."""

import json
import shutil

import jax
import numpy as np
import pytest

from jaxcnn import checkpoint, experiment, train
from jaxcnn.checkpoint import Checkpoints
from jaxcnn.errors import UserError
from tests.helpers import make_idx_dir, run_script, sigint_handled


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("idx")
    make_idx_dir(directory, n=200)
    return directory


def config_of(idx_dir, epochs):
    return train.get_config(
        "basic_cnn", "mnist", epochs=epochs, batch_size=32, data_dir=str(idx_dir), seed=1
    )


@pytest.fixture(scope="module")
def runs(idx_dir, tmp_path_factory):
    """A finished 2-epoch run (checkpoints 1 and 2) and an uninterrupted 3-epoch one."""
    root = tmp_path_factory.mktemp("runs")
    experiment.train_and_evaluate(config_of(idx_dir, 2), root / "two", progress=False)
    experiment.train_and_evaluate(config_of(idx_dir, 3), root / "three", progress=False)
    return root


def damage(path, how):
    """Truncate, overwrite the middle (up to 5 KB, with other bytes) or delete a file."""
    raw = path.read_bytes()
    if how == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "overwrite":
        start, size = len(raw) // 4, min(5000, max(1, len(raw) // 2))
        junk = bytes((b + 1) % 256 for b in raw[start : start + size])
        path.write_bytes(raw[:start] + junk + raw[start + size :])
    else:
        path.unlink()


def newest_files(workdir):
    folder = workdir / "checkpoints" / "2"
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_checkpoint_holds_the_kinds_of_file_damage_is_tried_on(runs):
    names = newest_files(runs / "two")
    assert checkpoint.MANIFEST in names and "_CHECKPOINT_METADATA" in names
    assert "default/_METADATA" in names and any("/d/" in n for n in names), names
    listed = json.loads((runs / "two/checkpoints/2" / checkpoint.MANIFEST).read_text())["files"]
    assert sorted(listed) == sorted(n for n in names if n != checkpoint.MANIFEST)


@pytest.mark.parametrize("how", ["truncate", "overwrite", "delete"])
def test_any_damaged_file_is_found_and_the_previous_checkpoint_is_taken(
    runs, idx_dir, tmp_path, how
):
    for name in newest_files(runs / "two"):
        workdir = tmp_path / f"{how}-{name.replace('/', '_')}"
        shutil.copytree(runs / "two", workdir)
        target = workdir / "checkpoints" / "2" / name
        if target.stat().st_size == 0 and how != "delete":
            continue
        damage(target, how)
        ckpts = Checkpoints(workdir)
        epoch, bad = ckpts.newest_intact()
        assert (epoch, list(bad)) == (1, [2]), (name, how, bad)
        _, state = train.create_program(config_of(idx_dir, 2))
        with pytest.raises(UserError, match=r"checkpoints/2' is damaged: .*epoch 1 is intact"):
            ckpts.restore(state, 2)
        ckpts.close()


@pytest.mark.parametrize(
    ("name", "how"),
    [("default/_METADATA", "truncate"), ("default/_METADATA", "overwrite"),
     (checkpoint.MANIFEST, "delete"), ("data", "overwrite")],
)  # fmt: skip
def test_resume_continues_from_the_newest_intact_checkpoint(runs, idx_dir, tmp_path, name, how):
    """Never the damaged bytes: the result is the uninterrupted 3-epoch run's, bit for bit,
    and the damaged checkpoint is moved aside, not deleted."""
    workdir = tmp_path / "w"
    shutil.copytree(runs / "two", workdir)
    if name == "data":  # the largest array file
        name = max(
            newest_files(workdir), key=lambda n: (workdir / "checkpoints/2" / n).stat().st_size
        )
    damage(workdir / "checkpoints" / "2" / name, how)
    config = config_of(idx_dir, 3)
    experiment.train_and_evaluate(config, workdir, resume=True, progress=False)
    assert (workdir / "damaged-checkpoints" / "2").is_dir()
    _, state = train.create_program(config)
    ours = Checkpoints(workdir).restore(state)
    reference = Checkpoints(runs / "three").restore(state)
    for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(x, y)
    rows = [json.loads(r) for r in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_evaluate_refuses_a_damaged_checkpoint_in_one_line(runs, idx_dir, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(runs / "two", workdir)
    damage(workdir / "checkpoints" / "2" / "default" / "_METADATA", "truncate")
    out = run_script("evaluate.py", "--model", "basic_cnn", "--checkpoint", str(workdir),
                     "--dataset", "mnist", "--data-dir", str(idx_dir))  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "is damaged: 'default/_METADATA' holds " in lines[0], lines
    assert lines[0].endswith("the checkpoint of epoch 1 is intact")
    ok = run_script("evaluate.py", "--model", "basic_cnn", "--checkpoint",
                    str(workdir / "checkpoints" / "1"), "--dataset", "mnist",
                    "--data-dir", str(idx_dir))  # fmt: skip
    assert ok.returncode == 0, ok.stderr


def test_ctrl_c_during_a_save_lands_after_the_checkpoint_is_whole(tmp_path):
    """SIGINT while a checkpoint is written: the save and its manifest finish, then the
    interrupt is raised, and the checkpoint verifies."""
    import os
    import signal

    ckpts = Checkpoints(tmp_path / "w")
    state = {"w": jax.numpy.arange(4.0)}
    real_save = ckpts.manager.save

    def save_interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # arrives while the save runs
        return real_save(*args, **kwargs)

    ckpts.manager.save = save_interrupted
    with sigint_handled():
        with pytest.raises(KeyboardInterrupt):
            ckpts.save(1, state)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    assert ckpts.problem(1) is None  # saved and verified whole
    ckpts.close()
