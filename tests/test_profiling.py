"""Profiling hooks: a trace of steady-state steps, optimized HLO, cost analysis, top ops."""

from jaxcnn import experiment, train
from jaxcnn.lab import profiling
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
    events = profiling.op_events(tmp_path / "trace")
    ops = profiling.top_ops(events)
    assert ops and all(ms >= 0 and count > 0 for _, ms, count in ops)
    stats = profiling.kernel_stats(events, steps=10)
    assert stats["kernels_per_step"] >= 5 and stats["busy_ms_per_step"] > 0
    hlo = (tmp_path / "hlo" / "basic_cnn_epoch.hlo.txt").read_text()
    # the epoch's loop, and the model's convolutions as the chosen algorithm compiles them
    conv_op = "convolution(" if config.compute.conv == "xla" else " dot("
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
    # count_fn (what profile_models counts for a Pallas GPU kernel) is counted instead,
    # while the bytes stay the program's own: here, a sum's FLOPs for one step's bytes
    just_a_sum = jax.jit(lambda state, images, labels: images.astype(np.float32).sum())
    counted = profiling.cost(
        profiling.make_steps_fn(program, 1), state, images, labels, count_fn=just_a_sum
    )
    assert 0 < counted["flops"] < one["flops"] / 100 and counted["bytes"] == one["bytes"]


def test_direct_kernel_steps_are_counted_as_their_math():
    """XLA's cost analysis does not count a custom call: a step with the direct kernel
    (resnet's, on a CPU where it builds) is counted with XLA's convolutions."""
    import jax
    import numpy as np

    from jaxcnn.kernels import direct

    images = jax.device_put(np.zeros((64, 28, 28, 1), np.uint8))
    labels = jax.device_put(np.zeros(64, np.int32))
    for name, counted_plain in [("resnet", direct.available()), ("basic_cnn", False)]:
        config = train.get_config(name, "mnist", batch_size=16)
        program, state = train.create_program(config)
        one_step = profiling.make_steps_fn(program, 1)
        count_fn = profiling.plain_count(config, one_step, (state, images, labels))
        assert (count_fn is not None) == counted_plain, name


def write_trace(directory, events):
    import gzip
    import json

    directory.mkdir(parents=True)
    with gzip.open(directory / "host.trace.json.gz", "wt") as fh:
        json.dump({"traceEvents": events}, fh)


def test_kernel_stats_count_device_kernels_only(tmp_path):
    """Per step: the device's kernels and their busy time; host events, runtime
    bookkeeping and Python frames do not count."""
    meta = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
        {"ph": "M", "name": "process_name", "pid": 7, "args": {"name": "/device:GPU:0"}},
    ]
    steps = 2
    calls = profiling.TRACED_CALLS
    kernels = [
        {"ph": "X", "pid": 7, "name": name, "dur": dur}
        for _ in range(steps * calls)
        for name, dur in (("gemm", 30.0), ("loop_fusion", 10.0), ("Memset", 2.0))
    ]
    noise = [
        {"ph": "X", "pid": 1, "name": "wrapped_fusion", "dur": 500.0},  # a host event
        {"ph": "X", "pid": 7, "name": "$core.py:12 train_step", "dur": 900.0},
        {"ph": "i", "pid": 7, "name": "gemm"},  # not a complete event
    ]
    write_trace(tmp_path / "gpu", meta + kernels + noise)
    events = profiling.op_events(tmp_path / "gpu")
    stats = profiling.kernel_stats(events, steps)
    assert stats["kernels_per_step"] == 3
    assert abs(stats["busy_ms_per_step"] - 0.042) < 1e-12
    assert profiling.top_ops(events, limit=1) == [("gemm", 30.0 * steps * calls / 1000, 6)]
    # on a CPU (no device process) XLA's ops are host events; its thread-pool
    # records and op-end markers are not ops
    cpu_events = [
        {"ph": "X", "pid": 1, "name": name, "dur": 5.0}
        for name in ["dot.3", "end: dot.3", "ThreadpoolListener::Record", "Wait for usage holds"]
    ]
    write_trace(tmp_path / "cpu", meta[:1] + cpu_events)
    cpu = profiling.kernel_stats(profiling.op_events(tmp_path / "cpu"), steps=1)
    assert cpu["kernels_per_step"] == 1 / calls


def test_a_trace_without_op_events_counts_nothing_rather_than_zero(tmp_path):
    """jax 0.6's XLA:CPU records only whole-program executions: that is "no count"
    (None, shown as n/a), not 0 kernels per step."""
    meta = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}}]
    runtime_only = [
        {"ph": "X", "pid": 1, "name": name, "dur": 5.0}
        for name in ["ThunkExecutor::Execute", "ThreadpoolListener::Record", "$core.py:1 f"]
    ]
    write_trace(tmp_path / "old", meta + runtime_only)
    events = profiling.op_events(tmp_path / "old")
    assert events == []
    assert profiling.kernel_stats(events, steps=10) == {
        "kernels_per_step": None,
        "busy_ms_per_step": None,
    }
