"""Data parallelism: 4 (forced host) devices follow the 1-device loss trajectory.

Runs in a subprocess because the device count is fixed when JAX starts.
"""

import json
import subprocess
import sys

import pytest

from jaxcnn import UserError, parallel, train
from tests.helpers import ENV

SCRIPT = """
import json, sys
from pathlib import Path
import jax
import numpy as np
from jaxcnn import experiment, train
from tests.helpers import make_idx_dir
root = Path(sys.argv[1]); make_idx_dir(root, n=256, learnable=True)
SGD = dict(optimizer="sgd", lr=0.01, momentum=0.5)  # why: see test_four_devices_match_one
SGD["interpret"] = True  # a CPU: the Pallas kernel in its interpreter, under shard_map
out = {"devices": jax.device_count()}
for conv in ("xla", "im2col", "pallas_wgrad"):
    for n in (1, 4):
        cfg = train.get_config(
            "convnet", "mnist", epochs=2, batch_size=32, data_dir=str(root), devices=n,
            conv=conv, **SGD,
        )
        program, state = train.create_program(cfg)
        split, _ = experiment.load_data(cfg, program.input_shape)
        epoch_fn = train.make_epoch_fn(program)
        hlo = epoch_fn.lower(state, split.images, split.labels, 1).compile().as_text()
        out[f"allreduce{n}{conv}"] = "all-reduce" in hlo
        losses = []
        for epoch in (1, 2):
            state, step_losses = epoch_fn(state, split.images, split.labels, epoch)
            losses += np.asarray(step_losses).tolist()
        out[f"{conv}{n}"] = losses
# 250 images: the final batch of 26 does not split over 4 devices (computed whole on each)
for n in (1, 4):
    cfg = train.get_config(
        "convnet", "mnist", epochs=1, batch_size=32, data_dir=str(root), devices=n,
        conv="pallas_wgrad", train_limit=250, **SGD,
    )
    program, state = train.create_program(cfg)
    split, _ = experiment.load_data(cfg, program.input_shape)
    _, step_losses = train.make_epoch_fn(program)(state, split.images, split.labels, 1)
    out[f"partial{n}"] = np.asarray(step_losses).tolist()
# The whole run (placement, evaluation, checkpoints) on 4 devices, once.
cfg = train.get_config(
    "convnet", "mnist", epochs=2, batch_size=32, data_dir=str(root), devices=4, **SGD
)
experiment.train_and_evaluate(cfg, root / "run4", progress=False)
lines = (root / "run4" / "metrics.jsonl").read_text().splitlines()
out["run4"] = [json.loads(line)["train_loss"] for line in lines]
out["run4_conv"] = cfg.compute.conv
print(json.dumps(out))
"""


def _close(a, b, tol=1e-5):
    return abs(a - b) <= tol * max(1.0, abs(a))


def test_four_devices_match_one(tmp_path):
    env = {
        **ENV,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4
    # Per-step losses over 2 epochs (16 steps) on data a model can learn; on pure
    # noise with random labels the trajectories drift apart by chance after ~10
    # steps (see tests/helpers.make_idx_dir), whichever way they are computed.
    # SGD (seed 003's lr 0.01, momentum 0.5), not convnet's Adam: on an AMD EPYC
    # CPU the 4-device sums' other rounding grew under Adam to 1.7e-5 by step 16
    # (Adam's per-parameter scaling amplifies it where gradients are tiny), while
    # under this SGD it stays at 1 ULP (2.4e-7) and a 25% gradient error shows
    # as 3e-4 or more from step 2 on.
    # pallas_wgrad: its kernel runs per device on a quarter of the batch (shard_map)
    for conv in ("xla", "im2col", "pallas_wgrad"):
        assert out[f"allreduce4{conv}"], "4 devices must all-reduce gradients"
        assert not out[f"allreduce1{conv}"]
        one, four = out[f"{conv}1"], out[f"{conv}4"]
        assert len(one) == len(four) == 16
        assert all(_close(a, b) for a, b in zip(one, four, strict=True)), (conv, one, four)
    assert len(out["partial1"]) == len(out["partial4"]) == 8  # 7 full batches and 26 images
    assert all(_close(a, b) for a, b in zip(out["partial1"], out["partial4"], strict=True))
    assert out["run4_conv"] == "im2col"  # the CPU default
    one = out["im2col1"]
    epoch_means = [sum(one[:8]) / 8, sum(one[8:]) / 8]
    assert all(_close(a, b) for a, b in zip(epoch_means, out["run4"], strict=True))


def test_batch_not_divisible_by_devices_is_an_error():
    with pytest.raises(UserError, match="batch size 30 is not divisible by 4 devices"):
        train.get_config("basic_cnn", "mnist", batch_size=30, devices=4)


def test_devices_flag_parsing():
    assert parallel.parse_devices("all") >= 1
    assert parallel.parse_devices(None) == 1
    with pytest.raises(UserError, match="--devices takes 'all' or a number"):
        parallel.parse_devices("many")
    with pytest.raises(UserError, match="--devices 999: JAX sees"):
        parallel.parse_devices("999")
