"""Profiling hooks: a trace of steady-state steps, optimized HLO, cost analysis, top ops."""

from jaxcnn import experiment, profiling, train
from tests.helpers import make_idx_dir


def test_profile_and_hlo_dump(tmp_path):
    (tmp_path / "idx").mkdir()
    make_idx_dir(tmp_path / "idx", n=128)
    config = train.get_config(
        "basic_cnn", "mnist", epochs=1, batch_size=32, data_dir=str(tmp_path / "idx")
    )
    experiment.train_and_evaluate(
        config,
        tmp_path / "run",
        progress=False,
        profile_dir=tmp_path / "trace",
        hlo_dir=tmp_path / "hlo",
    )
    assert list((tmp_path / "trace").rglob("*.trace.json.gz")), "no Perfetto trace written"
    ops = profiling.top_ops(tmp_path / "trace")
    assert ops and all(ms >= 0 and count > 0 for _, ms, count in ops)
    hlo = (tmp_path / "hlo" / "basic_cnn_epoch.hlo.txt").read_text()
    # the epoch's loop, and the model's convolutions as the chosen algorithm compiles them
    conv_op = "convolution(" if config.conv == "xla" else " dot("
    assert hlo.startswith("HloModule") and conv_op in hlo and "while" in hlo


def test_cost_analysis_counts_the_step():
    import jax
    import numpy as np

    program, state = train.create_program(train.get_config("basic_cnn", "mnist", batch_size=16))
    images = jax.device_put(np.zeros((64, 28, 28, 1), np.uint8))
    labels = jax.device_put(np.zeros(64, np.int32))
    one = profiling.cost(profiling.make_steps_fn(program, 1), state, images, labels)
    # conv1 alone: 16 images x 24x24 outputs x 10 channels x 25 MACs x 2 = 2.3 MFLOP forward
    assert one["flops"] > 2 * 16 * 24 * 24 * 10 * 25 and one["bytes"] > 0
