"""Every failure a user can reach is one sentence and exit 2 (130 for Ctrl-C), in
seconds, and loses nothing already written: bad sizes and numbers, workdir entries
of the wrong kind, a workdir another run holds, interrupts."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import ENV, ROOT, make_idx_dir, run_script, sigint_handled, write_idx


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("idx")
    make_idx_dir(directory, n=300)
    return directory


def base_args(data_dir, workdir, *more):
    return ["--model", "basic_cnn", "--dataset", "mnist", "--data-dir", str(data_dir),
            "--workdir", str(workdir), "--no-progress", *more]  # fmt: skip


def assert_one_line(out, message, status=2):
    """Exit ``status``, no traceback, and one line on stderr holding ``message``."""
    assert out.returncode == status, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert message in lines[0], lines[0]


@pytest.mark.parametrize(
    ("more", "message"),
    [
        (["--batch-size", "100000"], "--batch-size 100000 is larger than the 300 training images"),
        (["--train-limit", "50", "--batch-size", "64"], "larger than the 50 training images"),
        (["--seed", "99999999999999999999999"], "--seed must be between 0 and 2**63 - 1"),
        (["--seed", "-1"], "--seed must be between 0 and 2**63 - 1"),
        (["--momentum", "nan"], "--momentum must be a number >= 0, got nan"),
        (["--momentum", "inf"], "--momentum must be a number >= 0, got inf"),
        (["--resume"], "--resume: '"),
    ],
)
def test_bad_numbers_are_one_sentence(idx_dir, tmp_path, more, message):
    out = run_script("train.py", *base_args(idx_dir, tmp_path / "w", *more), timeout=120)
    assert_one_line(out, message)
    if "--resume" in more:
        assert "holds no run" in out.stderr and not (tmp_path / "w" / "config.json").exists()


def test_divergence_in_the_first_epoch_says_there_is_no_checkpoint(idx_dir, tmp_path):
    out = run_script("train.py", *base_args(idx_dir, tmp_path / "w", "--lr", "1e30"))
    assert_one_line(out, "stopped, no checkpoint was written before it (try a smaller --lr)")
    assert "of epoch 1;" in out.stderr


def test_a_batch_too_big_for_memory_says_how_much_it_needs(tmp_path):
    """convnet at batch 60000 in one part asks for ~100 GB: refused before the first
    step, with the numbers; this was a RESOURCE_EXHAUSTED traceback. (Under the default
    ``--microbatches auto`` the batch would run in 1250 parts of 48 images.)"""
    make_idx_dir(tmp_path, n=60000)
    start = time.monotonic()
    out = run_script(
        "train.py", "--model", "convnet", "--dataset", "mnist", "--data-dir", str(tmp_path),
        "--batch-size", "60000", "--microbatches", "1", "--workdir", str(tmp_path / "w"),
        "--no-progress", timeout=300,
    )  # fmt: skip
    assert_one_line(out, "does not fit in memory: its training program needs ")
    assert "at batch size 60000" in out.stderr and "lower --batch-size" in out.stderr
    assert time.monotonic() - start < 120
    assert not (tmp_path / "w" / "config.json").exists(), "nothing ran, so no run is recorded"


def test_memory_check_compares_the_largest_program_with_what_is_free():
    from jaxcnn import memory
    from jaxcnn.errors import UserError

    class Stats:
        def __init__(self, temp):
            self.temp_size_in_bytes, self.output_size_in_bytes = temp, 100
            self.alias_size_in_bytes = 100

    class Compiled:
        def __init__(self, temp):
            self.temp = temp

        def memory_analysis(self):
            return Stats(self.temp)

    programs = {"training": Compiled(3 * 2**30), "evaluation": Compiled(2**30)}
    memory.check_fits(programs, 64, free=4 * 2**30)  # fits
    with pytest.raises(UserError, match=r"training program needs 3.0 GiB .* 2.0 GiB is free"):
        memory.check_fits(programs, 64, free=2 * 2**30)


def test_an_idx_file_of_zero_images_is_named(tmp_path):
    make_idx_dir(tmp_path, n=10)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros((0,), np.uint8))
    out = run_script("train.py", *base_args(tmp_path, tmp_path / "w"), timeout=120)
    assert_one_line(out, f"'{tmp_path / 'train-images-idx3-ubyte'}' holds 0 images")


@pytest.mark.parametrize(
    ("entry", "kind"),
    [("metrics.jsonl", "folder"), ("config.json", "folder"), ("checkpoints", "file")],
)
def test_workdir_entries_of_the_wrong_kind_are_named(idx_dir, tmp_path, entry, kind):
    """A ``checkpoints`` file used to hang 314 s in orbax; a metrics.jsonl folder ended
    in IsADirectoryError after the first epoch."""
    workdir = tmp_path / "w"
    workdir.mkdir()
    if kind == "folder":
        (workdir / entry).mkdir()
    else:
        (workdir / entry).write_text("mine")
    start = time.monotonic()
    out = run_script("train.py", *base_args(idx_dir, workdir), timeout=120)
    assert_one_line(out, f"'{workdir / entry}' is a {kind} where the run keeps its {entry}")
    assert time.monotonic() - start < 60
    if kind == "file":
        assert (workdir / entry).read_text() == "mine", "nothing of the user's is touched"


def start_run(idx_dir, workdir, *more):
    """A training process, its output lines readable as they come, with Ctrl-C's
    default (:func:`~tests.helpers.sigint_handled`; a ``preexec_fn`` would fork a
    threaded process)."""
    with sigint_handled():
        return subprocess.Popen(
            [sys.executable, str(ROOT / "scripts/train.py"), *base_args(idx_dir, workdir, *more)],
            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip


def wait_for_line(proc, text, timeout=240):
    """Read ``proc``'s stdout until a line holds ``text``; returns the lines read."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"no line with {text!r}: {lines}, {proc.stderr.read()[-2000:]}")


def test_a_second_run_on_a_workdir_in_use_is_refused_naming_the_first(idx_dir, tmp_path):
    workdir = tmp_path / "w"
    first = start_run(idx_dir, workdir, "--epochs", "1000", "--batch-size", "8")  # outlasts both
    try:
        wait_for_line(first, "epoch 1/1000")
        for more in ([], ["--resume"]):
            second = run_script("train.py", *base_args(idx_dir, workdir, *more), timeout=120)
            assert_one_line(second, f"workdir '{workdir}' is in use by another run (host ")
            assert f"pid {first.pid}," in second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=60) == 130, "the first run was still running"
    rows = [json.loads(r) for r in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1)), "the first run's rows"


def test_ctrl_c_stops_within_seconds_and_says_what_was_kept(idx_dir, tmp_path):
    """An epoch of several compiled chunks: SIGINT lands between two of them."""
    workdir = tmp_path / "w"
    run = start_run(
        idx_dir, workdir, "--epochs", "40", "--batch-size", "4", "--progress-seconds", "0.05"
    )
    wait_for_line(run, "epoch 2/40")
    sent = time.monotonic()
    run.send_signal(signal.SIGINT)
    status = run.wait(timeout=60)
    waited = time.monotonic() - sent
    stderr = run.stderr.read().strip().splitlines()
    assert status == 130, stderr
    assert waited < 10, f"Ctrl-C took {waited:.1f}s"
    assert len(stderr) == 1 and "Traceback" not in stderr[0], stderr
    match = re.fullmatch(r"interrupted in epoch (\d+); epochs 1-(\d+) are kept \(checkpoint "
                         r"'(.*)'\); continue with --resume", stderr[0])  # fmt: skip
    assert match, stderr[0]
    epoch, kept = int(match.group(1)), int(match.group(2))
    assert kept in (epoch - 1, epoch) and match.group(3) == str(workdir / "checkpoints" / str(kept))
    from jaxcnn.checkpoint import Checkpoints

    assert Checkpoints(workdir).newest_intact()[0] == kept


def test_a_killed_runs_lock_is_taken_over_with_a_message(idx_dir, tmp_path):
    workdir = tmp_path / "w"
    first = start_run(idx_dir, workdir, "--epochs", "30", "--batch-size", "8")
    wait_for_line(first, "epoch 1/30")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert str(first.pid) in (workdir / ".lock").read_text()
    more = ("--epochs", "2", "--batch-size", "8", "--resume")
    out = run_script("train.py", *base_args(idx_dir, workdir, *more))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "took over the lock of a run that stopped without releasing it (host " in out.stdout
    assert f"pid {first.pid}," in out.stdout
    assert (workdir / ".lock").read_text() == "", "a finished run leaves no holder behind"


def test_the_lock_is_free_again_after_an_error(idx_dir, tmp_path):
    """A run that fails to start releases the lock and leaves no holder note."""
    from jaxcnn import experiment, train
    from jaxcnn.errors import UserError

    workdir = tmp_path / "w"
    config = train.get_config("basic_cnn", "mnist", epochs=1, data_dir=str(idx_dir))
    with pytest.raises(UserError, match="holds no run"):
        experiment.train_and_evaluate(config, workdir, resume=True, progress=False)
    assert (workdir / ".lock").read_text() == ""
    assert os.path.exists(workdir / ".lock")
