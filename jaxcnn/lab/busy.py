"""Busy processes beside a benchmark: a laptop that is also running something else.

A tutorial's CPU is rarely idle: a browser, an editor, a video call. On the 2-core
development machine, with one busy process beside the benchmark, jaxcnn's epochs
took 1.2-2.0x as long as on the quiet machine and PyTorch's best (OpenMP, 2
threads) 2.9-4.4x (docs/speed.md): the quiet table alone understates what a user
sees. ``scripts/bench.py --busy N`` runs N of these for the whole benchmark; they
stop with it, however it ends (a ``kill -9`` too).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

# One core's worth of pure-Python work, no memory traffic, until the benchmark's process
# is gone: a bench killed by a signal runs no ``finally`` (SIGTERM, SIGKILL), and its
# children would spin on for good. They look up their parent every ~10^6 iterations;
# its pid is an argument, since a parent killed before the child starts would leave
# the child reading init's as its own.
SPIN = """
import os, sys
parent = int(sys.argv[1])
while os.getppid() == parent:
    for _ in range(1_000_000):
        pass
"""


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[list[subprocess.Popen]]:
    """``count`` processes that each keep one core busy until the block ends.

    They are killed on the way out, on an error or Ctrl-C too, and waited for; if
    this process is killed outright, each stops by itself (:data:`SPIN`).
    """
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(count):
            procs.append(subprocess.Popen([sys.executable, "-c", SPIN, str(os.getpid())]))
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
