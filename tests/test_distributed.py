"""Multi-process training with ``jax.distributed``: two local CPU processes act as two hosts.

Each process runs ``scripts/train.py --distributed`` with 2 forced host devices,
so the mesh spans 4 devices in 2 processes and gradients cross processes over
gloo. The loss trajectory must match a 1-device run of the same config, and
only process 0 writes the run's files.
"""

import json
import socket
import subprocess
import sys

from jaxcnn import experiment, train
from tests.helpers import ENV, ROOT, make_idx_dir, run_script

ARGS = ("--model", "convnet", "--dataset", "mnist", "--epochs", "3", "--batch-size", "32")
# SGD, not convnet's Adam, so that rounding is not amplified (see tests/test_parallel.py)
SGD = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.5}
ARGS += ("--optimizer", "sgd", "--lr", "0.01", "--momentum", "0.5", "--no-progress")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(data_dirs, workdir):
    """One ``train.py --distributed`` per data dir, as processes 0, 1, ...; their outputs."""
    env = {**ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, str(ROOT / "scripts" / "train.py"), *ARGS]
    command += ["--workdir", str(workdir), "--distributed", "--coordinator"]
    command += [f"localhost:{_free_port()}", "--num-processes", str(len(data_dirs))]
    procs = [
        subprocess.Popen(
            [*command, "--process-id", str(i), "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i, data_dir in enumerate(data_dirs)
    ]
    try:
        outputs = [p.communicate(timeout=400) for p in procs]
        return [(p.returncode, *output) for p, output in zip(procs, outputs, strict=True)]
    finally:
        for p in procs:
            p.kill()


def test_two_processes_match_one_device(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    make_idx_dir(data, n=256, learnable=True)
    workdir = tmp_path / "two"
    outputs = _launch([data, data], workdir)
    for code, _, err in outputs:
        assert code == 0, err[-2000:]
    assert "4 device(s) in 2 processes" in outputs[0][1]
    assert "test accuracy" in outputs[0][1]
    assert "epoch" not in outputs[1][1], "only process 0 reports"
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["config"]["devices"] == 4
    two = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]

    # the same workdir again without --resume: every process refuses, nothing is lost
    again = _launch([data, data], workdir)
    for code, _, err in again:
        assert code == 2 and "already holds a run" in err and "Traceback" not in err, err
    assert (workdir / "metrics.jsonl").read_text().splitlines() == [json.dumps(r) for r in two]

    config = train.get_config(
        "convnet", "mnist", epochs=3, batch_size=32, data_dir=str(data), **SGD
    )
    experiment.train_and_evaluate(config, tmp_path / "one", progress=False)
    one = [
        json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(one) == len(two) == 3
    for a, b in zip(one, two, strict=True):
        for key in ("train_loss", "test_loss"):
            assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(a[key])), (key, one, two)
        assert a["test_accuracy"] == b["test_accuracy"]


def test_distributed_flags_are_checked():
    proc = run_script("train.py", *ARGS, "--process-id", "1")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: --coordinator, --num-processes and --process-id need --distributed"
    )
    proc = run_script("train.py", *ARGS, "--distributed", env={**ENV, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: --distributed: ") and "--coordinator" in proc.stderr


def test_one_process_failing_to_start_stops_all(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    make_idx_dir(data, n=64)
    outputs = _launch([data, tmp_path / "missing"], tmp_path / "run")
    (code0, _, err0), (code1, _, err1) = outputs
    assert (code0, code1) == (2, 2), (err0[-2000:], err1[-2000:])
    assert f"error: --data-dir '{tmp_path / 'missing'}' is not a directory" in err1
    assert "error: process 1 of the run failed to start (see its output); stopped" in err0
    assert "Traceback" not in err0 + err1
    assert not (tmp_path / "run").exists()
