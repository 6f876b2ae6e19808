"""Two or more ways to compute one model's training step, timed in turns (``scripts/ab.py``).

On a shared machine the load drifts by ±15% within minutes, so two separate
runs cannot tell a 5% change from noise. Here every variant is compiled in one
process first; then each round calls every variant once (the order rotating
from round to round), and a variant's speed against the first one is the
median over rounds of the ratio of their times *within* a round. Drift slower
than a round cancels out of that ratio.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax


def alternate(fns: Mapping[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each ``fn`` over ``rounds`` rounds, after one warm-up call each.

    Round r calls the functions in the order of ``fns`` rotated by r, so no
    variant always runs right after the same other one.
    """
    names = list(fns)
    for name in names:
        jax.block_until_ready(fns[name]())
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in rotation(names, r):
            start = time.perf_counter()
            jax.block_until_ready(fns[name]())
            times[name].append(time.perf_counter() - start)
    return times


def rotation(items: list, r: int) -> list:
    """Round ``r``'s order of ``items``: rotated left by ``r``, so that over the rounds
    every item runs in every position (``alternate``, the bench's ``--rounds``, the
    start-up comparison)."""
    return items[r % len(items) :] + items[: r % len(items)]


def speedups(times: Mapping[str, list[float]]) -> dict[str, float]:
    """Each variant's speed against the first: the median over rounds of first / variant."""
    base = next(iter(times.values()))
    return {
        name: statistics.median(b / t for b, t in zip(base, ts, strict=True))
        for name, ts in times.items()
    }


def step_calls(config, steps: int) -> Callable[[], Any]:
    """A call of ``steps`` training steps of ``config`` on fixed random uint8 images
    of its dataset's raw size.

    The model's state is not carried from call to call: every call starts from
    the initial parameters, so each one computes the same steps.
    """
    from jaxcnn import train
    from jaxcnn.lab.inputs import random_split
    from jaxcnn.trace import make_steps_fn

    program, state = train.create_program(config)
    images, labels = random_split(config.dataset, config.batch_size * steps)
    fn = make_steps_fn(program, steps)
    return lambda: fn(state, images, labels)


def run(model_names: list[str], variants: Mapping[str, dict], steps: int, rounds: int) -> str:
    """Every model under every variant (``compute.parse_variant`` options), in turns;
    returns a markdown table of ms per step and the speed against the first variant."""
    from jaxcnn import train
    from jaxcnn.errors import UserError
    from jaxcnn.lab.inputs import dataset_for

    if len(variants) < 2 or steps < 1 or rounds < 1:
        raise UserError("give two --variant or more, and --steps and --rounds of at least 1")
    configs = {  # every name and option checked before anything is compiled
        (model, name): train.get_config(model, dataset_for(model), **options)
        for model in model_names
        for name, options in variants.items()
    }
    lines = ["| model | variant | ms/step (median) | speed vs first, paired |", "|---|---|---|---|"]
    for model in model_names:
        fns = {name: step_calls(configs[model, name], steps) for name in variants}
        times = alternate(fns, rounds)
        for name, ratio in speedups(times).items():
            ms = 1000 * statistics.median(times[name]) / steps
            lines.append(f"| {model} | {name} | {ms:.2f} | {ratio:.3f} |")
        print("\n".join(lines[-len(variants) :]), flush=True)
    return "\n".join(lines)
