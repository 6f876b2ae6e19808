"""Profiler traces and optimized HLO of a run (``train.py --profile`` / ``--dump-hlo``).

:func:`profile_steps` runs a short scan of real training steps (the same
``train_step`` as an epoch) under ``jax.profiler.trace``, after a warm-up call,
so the trace shows steady-state kernels only. View it with Perfetto
(ui.perfetto.dev, open the ``*.trace.json.gz``), TensorBoard's profile plugin or
XProf (``tensorboard --logdir DIR``); ``jaxcnn.lab.profiling`` counts its kernels.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from jaxcnn import train


def make_steps_fn(program: train.Program, steps: int):
    """``fn(state, images, labels) -> (state, losses)``: ``steps`` batches in one scan."""
    batch = program.config.batch_size

    def fn(state, images, labels):
        idx = np.arange(steps * batch).reshape(steps, batch) % images.shape[0]
        keys = jax.random.split(jax.random.key(0), steps)

        def body(state, xs):
            i, key = xs
            return train.train_step(program, state, (images[i], labels[i]), key)

        unroll = max(1, min(program.config.compute.unroll, steps))  # as the epoch loop does
        return jax.lax.scan(body, state, (idx, keys), unroll=unroll)

    return program.jit(fn)


TRACED_STEPS = 10  # steps per call that profile_steps traces
TRACED_CALLS = 3  # calls of that steps function in the trace


def profile_steps(
    program, state, images, labels, logdir: str | Path, steps: int = TRACED_STEPS
) -> Path:
    """Write a ``jax.profiler`` trace of ``steps`` steady-state training steps to ``logdir``."""
    fn = make_steps_fn(program, steps)
    jax.block_until_ready(fn(state, images, labels))  # compile and warm up outside the trace
    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    with jax.profiler.trace(str(logdir), create_perfetto_trace=True):
        for _ in range(TRACED_CALLS):
            jax.block_until_ready(fn(state, images, labels))
    return logdir


def dump_hlo(compiled, path: str | Path) -> Path:
    """The optimized (post-fusion) HLO of a compiled function, as text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(compiled.as_text())
    return path
