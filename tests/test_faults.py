"""Fault injection: SIGKILL a 3-epoch run at 20 random moments, ``--resume`` after each.

The moments are drawn over the training phase of a measured uninterrupted run (its
compiled line to its last epoch's line), so they land inside epochs, during
checkpoint and manifest writes, and between the metrics row and the checkpoint.
Whatever was killed, the final parameters are bit-identical to the uninterrupted
run's and ``metrics.jsonl`` has each epoch once.
"""

import json
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from jaxcnn import train
from jaxcnn.checkpoint import Checkpoints
from tests.helpers import ENV, ROOT, make_idx_dir

KILLS = 20
EPOCHS = 3


def command(idx_dir, workdir, resume):
    args = ["--model", "basic_cnn", "--dataset", "mnist", "--data-dir", str(idx_dir),
            "--epochs", str(EPOCHS), "--batch-size", "50", "--progress-seconds", "0.05",
            "--seed", "7", "--workdir", str(workdir), "--no-progress"]  # fmt: skip
    return [sys.executable, str(ROOT / "scripts/train.py"), *args, *(["--resume"] * resume)]


def launch(idx_dir, workdir, env):
    """Start a run (a resume once the workdir holds one); returns it once it has compiled,
    with the time of that line, or None if it ended before."""
    resume = (workdir / "config.json").exists()
    proc = subprocess.Popen(
        command(idx_dir, workdir, resume), env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    for line in proc.stdout:
        if "compiled in" in line:
            return proc, time.monotonic()
    proc.wait()
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    return None, None


def final_params(workdir, idx_dir):
    config = train.get_config("basic_cnn", "mnist", batch_size=50, seed=7, data_dir=str(idx_dir))
    _, state = train.create_program(config)
    return jax.tree.leaves(Checkpoints(workdir).restore(state))


def test_sigkill_at_twenty_random_moments_then_resume(tmp_path):
    idx_dir = tmp_path / "idx"
    idx_dir.mkdir()
    make_idx_dir(idx_dir, n=1000)
    env = {**ENV, "JAXCNN_CACHE_DIR": str(tmp_path / "xla")}  # later starts compile less

    reference = tmp_path / "reference"
    proc, started = launch(idx_dir, reference, env)
    for line in proc.stdout:
        if f"epoch {EPOCHS}/{EPOCHS}" in line:
            training = time.monotonic() - started  # where the kills land
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
    expected = final_params(reference, idx_dir)

    rng = random.Random(0)
    kills, runs, finished = 0, 0, 0
    while kills < KILLS:
        workdir = tmp_path / f"run{runs}"
        runs += 1
        while True:  # kill and resume this run until it finishes
            proc, started = launch(idx_dir, workdir, env)
            if proc is None:
                break
            delay = rng.uniform(0, 1.1 * training) if kills < KILLS else 1e9
            try:
                proc.wait(timeout=max(0.0, started + delay - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
            assert proc.returncode == 0, proc.stderr.read()[-3000:]
            break
        if not (workdir / "summary.json").exists():
            continue  # ended at the compiled line (resume found every epoch done)
        finished += 1
        for x, y in zip(final_params(workdir, idx_dir), expected, strict=True):
            np.testing.assert_array_equal(x, y)
        rows = [json.loads(r) for r in (workdir / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert kills == KILLS and finished >= 1
