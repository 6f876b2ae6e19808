"""Busy processes beside a benchmark: a laptop that is also running something else.

A tutorial's CPU is rarely idle: a browser, an editor, a video call. On the 2-core
development machine, with one busy process beside the benchmark, jaxcnn's epochs
took 1.2-2.0x as long as on the quiet machine and PyTorch's best (OpenMP, 2
threads) 2.9-4.4x (docs/speed.md): the quiet table alone understates what a user
sees. ``scripts/bench.py --busy N`` runs N of these for the whole benchmark; they
stop with it, however it ends.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

SPIN = "while True: pass"  # one core's worth of pure-Python work, no memory traffic


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[list[subprocess.Popen]]:
    """``count`` processes that each keep one core busy until the block ends.

    They are killed on the way out, on an error or Ctrl-C too, and waited for, so
    none outlives the benchmark.
    """
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(count):
            procs.append(subprocess.Popen([sys.executable, "-c", SPIN]))
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
